"""Prompt processors: text embeddings for a prompt, its view-dependent variants and the
negative prompt, computed once by a real tokenizer and text encoder and cached on disk.

Conventions as in threestudio 0.2.3: azimuth and elevation in degrees; azimuth 0 is the
front of the object; elevation above ``overhead_threshold`` is the overhead view.
Embeddings are cached as ``.threestudio_cache/text_embeddings/<md5(model-prompt)>.pt``
relative to the working directory, one ``[77, D]`` tensor per prompt.

Differences from threestudio kept on purpose: embeddings are always computed in the
calling process (``spawn`` is accepted and ignored; threestudio starts a subprocess so the
encoder's memory is returned), on ``get_device()``; prompt debiasing (which downloads BERT)
is not available and is rejected when enabled.
"""
import hashlib
import json
import os
from dataclasses import dataclass

import torch

import threestudio
from threestudio.utils.base import BaseObject
from threestudio.utils.misc import barrier, cleanup
from threestudio.utils.ops import shifted_expotional_decay
from threestudio.utils.typing import *

CACHE_DIR = ".threestudio_cache/text_embeddings"
PROMPT_LIBRARY = "load/prompt_library.json"


def hash_prompt(model: str, prompt: str) -> str:
    """Cache key of ``prompt``'s embedding under the text encoder of ``model``."""
    return hashlib.md5(f"{model}-{prompt}".encode()).hexdigest()


def shift_azimuth_deg(azimuth: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """Azimuth in degrees wrapped to [-180, 180)."""
    return (azimuth + 180) % 360 - 180


@dataclass
class DirectionConfig:
    """A view direction: how it rewrites the prompt and the negative prompt, and which
    cameras (elevation, azimuth, distance; degrees) it applies to."""

    name: str
    prompt: Callable[[str], str]
    negative_prompt: Callable[[str], str]
    condition: Callable[
        [Float[Tensor, "B"], Float[Tensor, "B"], Float[Tensor, "B"]],
        Bool[Tensor, "B"],
    ]


@dataclass
class PromptProcessorOutput:
    """Cached embeddings; ``*_vd`` are stacked in the order of ``directions``."""

    text_embeddings: Float[Tensor, "1 N Nf"]
    uncond_text_embeddings: Float[Tensor, "1 N Nf"]
    text_embeddings_vd: Float[Tensor, "Nv N Nf"]
    uncond_text_embeddings_vd: Float[Tensor, "Nv N Nf"]
    directions: List[DirectionConfig]
    direction2idx: Dict[str, int]
    use_perp_neg: bool
    perp_neg_f_sb: Tuple[float, float, float]
    perp_neg_f_fsb: Tuple[float, float, float]
    perp_neg_f_fs: Tuple[float, float, float]
    perp_neg_f_sf: Tuple[float, float, float]
    prompt: str
    prompts_vd: List[str]

    def direction_indices(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
    ) -> Int[Tensor, "B"]:
        """Index into ``directions`` per camera; a later direction whose condition holds
        overrides an earlier one (so side < front/back < overhead)."""
        indices = torch.zeros_like(elevation, dtype=torch.long)
        for direction in self.directions:
            selected = direction.condition(elevation, azimuth, camera_distances)
            indices[selected] = self.direction2idx[direction.name]
        return indices

    def get_text_embeddings(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        view_dependent_prompting: bool = True,
    ) -> Float[Tensor, "BB N Nf"]:
        """``cat([cond, uncond])``: conditional embeddings of the B cameras first, then the
        unconditional (negative prompt) ones."""
        batch_size = elevation.shape[0]
        if view_dependent_prompting:
            indices = self.direction_indices(elevation, azimuth, camera_distances)
            cond = self.text_embeddings_vd[indices]
            uncond = self.uncond_text_embeddings_vd[indices]
        else:
            cond = self.text_embeddings.expand(batch_size, -1, -1)
            uncond = self.uncond_text_embeddings.expand(batch_size, -1, -1)
        return torch.cat([cond, uncond], dim=0)

    def get_text_embeddings_perp_neg(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        view_dependent_prompting: bool = True,
    ) -> Tuple[Float[Tensor, "BBBB N Nf"], Float[Tensor, "B 2"]]:
        """Perp-Neg inputs: ``cat([pos, uncond, neg])`` [4B, N, Nf] and weights [B, 2].

        ``pos`` interpolates the view prompts by azimuth a (shifted to [-180, 180)): for
        |a| < 90, r = 1 - |a| / 90 and pos = r front + (1 - r) side, negatives (front,
        side) with weights (-f_fs(r), -f_sf(1 - r)); otherwise r = 2 - |a| / 90 and pos =
        r side + (1 - r) back, negatives (side, front) with weights (-f_sb(r),
        -f_fsb(r)); f(r) = a exp(-b r) + c with the processor's (a, b, c). Overhead views
        use the overhead prompt and two unconditional negatives of weight 0. The two
        negatives of sample b are rows 2B + 2b and 2B + 2b + 1.
        """
        if not view_dependent_prompting:
            raise ValueError("Perp-Neg only works with view-dependent prompting")
        indices = self.direction_indices(elevation, azimuth, camera_distances)
        side, front, back, overhead = (self.text_embeddings_vd[i] for i in range(4))
        positives, uncond, negatives, weights = [], [], [], []
        for index, azi in zip(indices, azimuth):
            azi = shift_azimuth_deg(azi)
            empty = self.uncond_text_embeddings_vd[index]
            uncond.append(empty)
            if index.item() == self.direction2idx["overhead"]:
                positives.append(overhead)
                negatives += [empty, empty]
                weights += [0.0, 0.0]
            elif torch.abs(azi) < 90:
                r = 1 - torch.abs(azi) / 90
                positives.append(r * front + (1 - r) * side)
                negatives += [front, side]
                weights += [
                    -shifted_expotional_decay(*self.perp_neg_f_fs, r),
                    -shifted_expotional_decay(*self.perp_neg_f_sf, 1 - r),
                ]
            else:
                r = 2.0 - torch.abs(azi) / 90
                positives.append(r * side + (1 - r) * back)
                negatives += [side, front]
                weights += [
                    -shifted_expotional_decay(*self.perp_neg_f_sb, r),
                    -shifted_expotional_decay(*self.perp_neg_f_fsb, r),
                ]
        embeddings = torch.cat(
            [torch.stack(positives), torch.stack(uncond), torch.stack(negatives)], dim=0
        )
        return embeddings, torch.as_tensor(weights, device=elevation.device).reshape(-1, 2)


def _azimuth_within(threshold: float, centre: float):
    """Condition: shifted azimuth strictly within ``threshold`` degrees of ``centre``
    (0 = front, 180 = back)."""
    if centre == 0:
        return lambda ele, azi, dis: (shift_azimuth_deg(azi) > -threshold) & (
            shift_azimuth_deg(azi) < threshold
        )
    return lambda ele, azi, dis: (shift_azimuth_deg(azi) > 180 - threshold) | (
        shift_azimuth_deg(azi) < -180 + threshold
    )


class PromptProcessor(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "a hamburger"

        # view-dependent prompts given explicitly (otherwise derived from ``prompt``)
        prompt_front: Optional[str] = None
        prompt_side: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None

        negative_prompt: str = ""
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
        overhead_threshold: float = 60.0  # degrees of elevation
        front_threshold: float = 45.0  # degrees of azimuth either side of 0
        back_threshold: float = 45.0  # degrees of azimuth either side of 180
        view_dependent_prompt_front: bool = False
        use_cache: bool = True
        spawn: bool = True

        # Perp-Neg: f(r) = a exp(-b r) + c as (a, b, c), see get_text_embeddings_perp_neg
        use_perp_neg: bool = False
        perp_neg_f_sb: Tuple[float, float, float] = (1, 0.5, -0.606)
        perp_neg_f_fsb: Tuple[float, float, float] = (1, 0.5, +0.967)
        perp_neg_f_fs: Tuple[float, float, float] = (4, 0.5, -2.426)
        perp_neg_f_sf: Tuple[float, float, float] = (4, 0.5, -2.426)

        use_prompt_debiasing: bool = False
        pretrained_model_name_or_path_prompt_debiasing: str = "bert-base-uncased"
        prompt_debiasing_mask_ids: Optional[List[int]] = None

    cfg: Config

    def configure(self) -> None:
        if self.cfg.use_prompt_debiasing:
            raise ValueError(
                "use_prompt_debiasing=True: prompt debiasing is not available in the "
                "threestudio test stand-in; expected False"
            )
        self._cache_dir = CACHE_DIR
        self.directions = self._make_directions()
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}

        self.prompt_library = {}
        if os.path.exists(PROMPT_LIBRARY):
            with open(PROMPT_LIBRARY, "r", encoding="utf-8") as f:
                self.prompt_library = json.load(f)
        self.prompt = self.preprocess_prompt(self.cfg.prompt)
        self.negative_prompt = self.cfg.negative_prompt
        threestudio.info(
            f"Using prompt [{self.prompt}] and negative prompt [{self.negative_prompt}]"
        )
        self.prompts_vd = [
            getattr(self.cfg, f"prompt_{d.name}") or d.prompt(self.prompt)
            for d in self.directions
        ]
        self.negative_prompts_vd = [
            d.negative_prompt(self.negative_prompt) for d in self.directions
        ]
        shown = " ".join(f"[{d.name}]:[{p}]" for d, p in zip(self.directions, self.prompts_vd))
        threestudio.info(f"Using view-dependent prompts {shown}")

        self.prepare_text_embeddings()
        self.load_text_embeddings()

    def _make_directions(self) -> List[DirectionConfig]:
        """side (default), front, back, overhead, in this order (later ones win)."""
        if self.cfg.view_dependent_prompt_front:
            phrase = {
                "side": lambda s: f"side view of {s}",
                "front": lambda s: f"front view of {s}",
                "back": lambda s: f"backside view of {s}",
                "overhead": lambda s: f"overhead view of {s}",
            }
        else:
            phrase = {
                name: (lambda s, name=name: f"{s}, {name} view")
                for name in ("side", "front", "back", "overhead")
            }
        conditions = {
            "side": lambda ele, azi, dis: torch.ones_like(ele, dtype=torch.bool),
            "front": _azimuth_within(self.cfg.front_threshold, centre=0),
            "back": _azimuth_within(self.cfg.back_threshold, centre=180),
            "overhead": lambda ele, azi, dis: ele > self.cfg.overhead_threshold,
        }
        return [
            DirectionConfig(name, phrase[name], lambda s: s, conditions[name])
            for name in ("side", "front", "back", "overhead")
        ]

    def preprocess_prompt(self, prompt: str) -> str:
        """``lib:kw1_kw2`` picks the one DreamFusion library prompt containing every
        keyword (case-insensitive); any other prompt is returned unchanged."""
        if not prompt.startswith("lib:"):
            return prompt
        keywords = prompt[4:].lower().split("_")
        matches = [
            p
            for p in self.prompt_library.get("dreamfusion", [])
            if all(k in p.lower() for k in keywords)
        ]
        if len(matches) != 1:
            raise ValueError(
                f"prompt={prompt!r}: expected exactly one prompt in {PROMPT_LIBRARY} "
                f"matching keywords {keywords}, found {len(matches)}"
            )
        threestudio.info("Find matched prompt in library: " + matches[0])
        return matches[0]

    def cache_path(self, prompt: str) -> str:
        name = hash_prompt(self.cfg.pretrained_model_name_or_path, prompt)
        return os.path.join(self._cache_dir, f"{name}.pt")

    def prepare_text_embeddings(self) -> None:
        """Encode every prompt not yet cached (all of them when ``use_cache`` is off)."""
        os.makedirs(self._cache_dir, exist_ok=True)
        all_prompts = [
            self.prompt,
            self.negative_prompt,
            *self.prompts_vd,
            *self.negative_prompts_vd,
        ]
        to_process = []
        for prompt in dict.fromkeys(all_prompts):
            if self.cfg.use_cache and os.path.exists(self.cache_path(prompt)):
                threestudio.debug(
                    f"Text embeddings for model {self.cfg.pretrained_model_name_or_path} "
                    f"and prompt [{prompt}] are already in cache, skip processing."
                )
                continue
            to_process.append(prompt)
        if to_process:
            self.spawn_func(
                self.cfg.pretrained_model_name_or_path, to_process, self._cache_dir
            )
            cleanup()

    def load_text_embeddings(self) -> None:
        barrier()
        self.text_embeddings = self.load_from_cache(self.prompt)[None, ...]
        self.uncond_text_embeddings = self.load_from_cache(self.negative_prompt)[None, ...]
        self.text_embeddings_vd = torch.stack(
            [self.load_from_cache(p) for p in self.prompts_vd], dim=0
        )
        self.uncond_text_embeddings_vd = torch.stack(
            [self.load_from_cache(p) for p in self.negative_prompts_vd], dim=0
        )
        threestudio.debug("Loaded text embeddings.")

    def load_from_cache(self, prompt: str) -> Float[Tensor, "N Nf"]:
        path = self.cache_path(prompt)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Text embedding file {path} for model "
                f"{self.cfg.pretrained_model_name_or_path} and prompt [{prompt}] not found."
            )
        return torch.load(path, map_location=self.device)

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str):
        """Encode ``prompts`` and save one ``[77, D]`` tensor per prompt to ``cache_dir``."""
        raise NotImplementedError

    @staticmethod
    def save_embeddings(
        pretrained_model_name_or_path: str,
        prompts: List[str],
        embeddings: Float[Tensor, "B N Nf"],
        cache_dir: str,
    ) -> None:
        for prompt, embedding in zip(prompts, embeddings):
            name = hash_prompt(pretrained_model_name_or_path, prompt)
            torch.save(embedding.clone(), os.path.join(cache_dir, f"{name}.pt"))

    def __call__(self) -> PromptProcessorOutput:
        return PromptProcessorOutput(
            text_embeddings=self.text_embeddings,
            uncond_text_embeddings=self.uncond_text_embeddings,
            text_embeddings_vd=self.text_embeddings_vd,
            uncond_text_embeddings_vd=self.uncond_text_embeddings_vd,
            directions=self.directions,
            direction2idx=self.direction2idx,
            use_perp_neg=self.cfg.use_perp_neg,
            perp_neg_f_sb=self.cfg.perp_neg_f_sb,
            perp_neg_f_fsb=self.cfg.perp_neg_f_fsb,
            perp_neg_f_fs=self.cfg.perp_neg_f_fs,
            perp_neg_f_sf=self.cfg.perp_neg_f_sf,
            prompt=self.prompt,
            prompts_vd=self.prompts_vd,
        )

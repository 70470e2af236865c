"""threestudio-facing score-distillation guidance shared by DeepFloyd IF and Stable Diffusion.

The maths (noising, classifier-free guidance, x0_hat, the reconstruction loss, the noise
schedule) lives in ``core.score_distillation``; this class loads the frozen diffusion
model, turns renders into the model's space and back, and follows threestudio's guidance
contract. Subclasses say what the model space is (``_encode``, ``_to_rgb``) and which
model parts they load (``_load_models``).

Precision: weights are float16 on CUDA when ``half_precision_weights`` (float32 on CPU,
where half precision is slow and poorly supported); the loss maths runs in the render's
dtype promoted to at least float32, outside any autocast region.
"""

import gc
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

import threestudio
from threestudio.utils.base import BaseObject
from threestudio.utils.misc import C

from ..core import score_distillation as sds


class DiffusionModelUnavailableError(OSError):
    """The diffusion model's weights could not be loaded (missing, offline or gated)."""


class ScoreDistillationGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = ""
        # Weight file variant ("fp16" reads diffusion_pytorch_model.fp16.*), None for the
        # default files.
        variant: Optional[str] = None
        half_precision_weights: bool = True
        enable_memory_efficient_attention: bool = False
        enable_attention_slicing: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_channels_last_format: bool = True

        guidance_scale: float = 100.0
        weighting_strategy: str = "sds"
        grad_clip: Optional[Any] = None

        # Fractions of the training timesteps; numbers or threestudio C() schedules.
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        # none: t ~ U[t_min, t_max] (threestudio); linear | sqrt (HiFA) | cosine: t decays
        # deterministically from t_max to t_min over anneal_steps steps counted from
        # anneal_start_step, drawn within +-anneal_jitter_percent * T of it
        # (core.score_distillation.timestep_range).
        anneal: str = "none"
        anneal_steps: int = 0
        anneal_start_step: int = 0
        anneal_jitter_percent: float = 0.0

        # Side of the square image the render is resized to before the model sees it.
        render_resolution: int = 512
        view_dependent_prompting: bool = True

    cfg: Config

    MODEL_LABEL = "diffusion model"
    HOW_TO_GET = ""
    MODEL_ATTRIBUTES: Tuple[str, ...] = ("unet",)

    def configure(self) -> None:
        self._validate_config()
        cuda = self.device.type == "cuda"
        self.weights_dtype = (
            torch.float16 if self.cfg.half_precision_weights and cuda else torch.float32
        )
        if self.cfg.enable_sequential_cpu_offload and not cuda:
            raise ValueError(
                f"enable_sequential_cpu_offload needs a CUDA device, got device {self.device}"
            )
        threestudio.info(
            f"Loading {self.MODEL_LABEL} from {self.cfg.pretrained_model_name_or_path} ..."
        )
        self._load_models()
        for name in self.MODEL_ATTRIBUTES:
            self._prepare_model(getattr(self, name), is_unet=name == "unet")
        self._load_schedule()
        self.grad_clip_val: Optional[float] = None
        self.num_nonfinite_total = 0
        self.update_step(0, 0)
        threestudio.info(f"Loaded {self.MODEL_LABEL}.")

    def _validate_config(self) -> None:
        cfg = self.cfg
        if cfg.weighting_strategy not in sds.WEIGHTINGS:
            raise ValueError(
                f"weighting_strategy must be one of {sds.WEIGHTINGS}, got {cfg.weighting_strategy!r}"
            )
        if cfg.anneal not in sds.ANNEAL_MODES:
            raise ValueError(f"anneal must be one of {sds.ANNEAL_MODES}, got {cfg.anneal!r}")
        if cfg.anneal != "none" and cfg.anneal_steps <= 0:
            raise ValueError(
                f"anneal_steps must be positive with anneal={cfg.anneal!r}, got {cfg.anneal_steps}"
            )
        if cfg.render_resolution <= 0:
            raise ValueError(
                f"render_resolution must be a positive number of pixels, got {cfg.render_resolution}"
            )
        if not cfg.pretrained_model_name_or_path:
            raise ValueError(
                "pretrained_model_name_or_path must name a hub model or a local directory"
            )

    # ------------------------------------------------------------------ loading

    def _load_models(self) -> None:
        """Set every attribute in ``MODEL_ATTRIBUTES`` from ``pretrained_model_name_or_path``."""
        raise NotImplementedError

    def _load_pretrained(self, component_class, subfolder: str, **kwargs):
        """``component_class.from_pretrained(source, subfolder=...)`` with a clear error."""
        source = self.cfg.pretrained_model_name_or_path
        looks_local = (
            os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)
        )
        if looks_local and not os.path.isdir(os.path.expanduser(source)):
            raise DiffusionModelUnavailableError(
                self._unavailable_message(f"the directory {source!r} does not exist")
            )
        try:
            return component_class.from_pretrained(
                os.path.expanduser(source), subfolder=subfolder, **kwargs
            )
        except (OSError, ValueError) as error:
            raise DiffusionModelUnavailableError(
                self._unavailable_message(
                    f"loading its {subfolder!r} failed ({type(error).__name__}: {error})"
                )
            ) from error

    def _unavailable_message(self, reason: str) -> str:
        return (
            f"Cannot load the {self.MODEL_LABEL} "
            f"(pretrained_model_name_or_path={self.cfg.pretrained_model_name_or_path!r}, "
            f"variant={self.cfg.variant!r}): {reason}. {self.HOW_TO_GET}"
        )

    def _prepare_model(self, model: torch.nn.Module, is_unet: bool) -> None:
        model.eval()
        model.requires_grad_(False)
        if is_unet and self.cfg.enable_channels_last_format:
            model.to(memory_format=torch.channels_last)
        if self.cfg.enable_memory_efficient_attention and is_unet:
            if importlib.util.find_spec("xformers") is None:
                threestudio.warn(
                    "enable_memory_efficient_attention: xformers is not installed; keeping "
                    "PyTorch's scaled-dot-product attention (also memory-efficient)."
                )
            else:
                model.enable_xformers_memory_efficient_attention()
        if self.cfg.enable_attention_slicing and is_unet:
            model.set_attention_slice("max")
        if self.cfg.enable_sequential_cpu_offload:
            from accelerate import cpu_offload

            cpu_offload(model, execution_device=self.device)
        else:
            model.to(self.device)

    def _scheduler(self):
        """The diffusion model's training noise schedule (a diffusers ``DDPMScheduler``)."""
        from diffusers import DDPMScheduler

        return self._load_pretrained(DDPMScheduler, "scheduler")

    def _load_schedule(self) -> None:
        scheduler = self._scheduler()
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in sds.PREDICTION_TYPES:
            raise ValueError(
                f"{self.MODEL_LABEL}: scheduler prediction_type must be one of "
                f"{sds.PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)

    def release(self) -> None:
        """Drop the diffusion model(s) and return their memory (to switch training stages)."""
        for name in self.MODEL_ATTRIBUTES:
            setattr(self, name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ schedule

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Evaluate the C() schedules at this step and set the timestep range."""
        if self.cfg.grad_clip is not None:
            self.grad_clip_val = float(C(self.cfg.grad_clip, epoch, global_step))
        self.min_step, self.max_step = sds.timestep_range(
            global_step,
            self.num_train_timesteps,
            float(C(self.cfg.min_step_percent, epoch, global_step)),
            float(C(self.cfg.max_step_percent, epoch, global_step)),
            anneal=self.cfg.anneal,
            anneal_steps=self.cfg.anneal_steps,
            anneal_start_step=self.cfg.anneal_start_step,
            jitter_percent=self.cfg.anneal_jitter_percent,
        )

    # ------------------------------------------------------------------ model space

    def _encode(
        self, rgb_BCHW: torch.Tensor, rgb_as_latents: bool
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(x in the model's space, the resized RGB image in [0, 1] or None)."""
        raise NotImplementedError

    def _to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space x [B,C,h,w] -> RGB [B,3,H,W] in [0, 1], without gradient."""
        raise NotImplementedError

    def _auxiliary_losses(
        self, image: Optional[torch.Tensor], x0_hat: torch.Tensor, weight: torch.Tensor
    ) -> Dict[str, sds.ReconstructionTerm]:
        """Further ``loss_*`` reconstruction terms (none by default)."""
        return {}

    def _noise_channels(self, model_output: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The prediction channels of the UNet output (models with a learned variance
        output twice the input channels; the first half is the prediction)."""
        channels = x_t.shape[1]
        if model_output.shape[1] == 2 * channels:
            return model_output[:, :channels]
        if model_output.shape[1] != channels:
            raise ValueError(
                f"{self.MODEL_LABEL}: UNet output has {model_output.shape[1]} channels, "
                f"expected {channels} or {2 * channels}"
            )
        return model_output

    @torch.no_grad()
    def guided_noise(
        self, x_t: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """Classifier-free-guided noise prediction eps_hat [B,...] in x_t's dtype.

        ``text_embeddings`` [2B, L, D] is [cond; uncond]; v-predictions are converted to
        noise before guidance.
        """
        model_input = torch.cat([x_t, x_t]).to(self.weights_dtype)
        output = self.unet(
            model_input,
            torch.cat([t, t]),
            encoder_hidden_states=text_embeddings.to(self.weights_dtype),
        ).sample
        prediction = self._noise_channels(output.to(x_t.dtype), x_t)
        if self.prediction_type == "v_prediction":
            alphas = self.alphas_cumprod[torch.cat([t, t])]
            prediction = sds.epsilon_from_v_prediction(prediction, torch.cat([x_t, x_t]), alphas)
        eps_text, eps_uncond = prediction.chunk(2)
        return sds.classifier_free_guidance(eps_text, eps_uncond, self.cfg.guidance_scale)

    def _text_embeddings(
        self, prompt_utils, elevation, azimuth, camera_distances, batch_size: int
    ) -> torch.Tensor:
        if getattr(prompt_utils, "use_perp_neg", False):
            raise ValueError(
                f"{type(self).__name__} does not implement Perp-Neg; set the prompt processor's use_perp_neg to false"
            )
        embeddings = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
        )
        if embeddings.dim() != 3 or embeddings.shape[0] != 2 * batch_size:
            raise ValueError(
                "prompt_utils.get_text_embeddings must return [2B, L, D] ([cond; uncond]) "
                f"for B={batch_size}, got shape {tuple(embeddings.shape)}"
            )
        return embeddings.to(self.device)

    # ------------------------------------------------------------------ contract

    def __call__(
        self,
        rgb: torch.Tensor,
        prompt_utils,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        timesteps: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Dict[str, Any]:
        """Score distillation losses for renders ``rgb`` [B,H,W,C] (RGB in [0, 1]).

        Returns ``loss_sds`` (plus subclass terms), ``grad_norm`` (of the per-element SDS
        gradient), ``min_step``/``max_step`` (current inclusive timestep range) and
        ``timesteps`` [B]. ``guidance_eval`` adds ``eval``: RGB images [B,H,W,3] in [0, 1]
        ``input``, ``noisy`` and ``x0`` (the pseudo ground truth x0_hat) with their ``t``
        [B]. ``timesteps`` [B] and ``noise`` (shaped like the model-space input) replace
        the random draws, for reproducible evaluation.
        """
        self._require_models()
        if rgb.dim() != 4:
            raise ValueError(f"rgb must be [B, H, W, C], got shape {tuple(rgb.shape)}")
        batch_size = rgb.shape[0]
        with torch.autocast(device_type=self.device.type, enabled=False):
            rgb_BCHW = rgb.permute(0, 3, 1, 2).to(torch.promote_types(rgb.dtype, torch.float32))
            x, image = self._encode(rgb_BCHW, rgb_as_latents)
            t = self._timesteps(timesteps, batch_size)
            if noise is None:
                noise = torch.randn_like(x)
            elif noise.shape != x.shape:
                raise ValueError(
                    f"noise must have the model-space shape {tuple(x.shape)}, got {tuple(noise.shape)}"
                )
            text_embeddings = self._text_embeddings(
                prompt_utils, elevation, azimuth, camera_distances, batch_size
            )

            alphas = self.alphas_cumprod[t].to(x.dtype)
            x_t = sds.add_noise(x.detach(), noise.to(x), alphas)
            eps_hat = self.guided_noise(x_t, t, text_embeddings)
            x0_hat = sds.predicted_x0(x_t, eps_hat, alphas)
            weight = sds.reconstruction_weight(alphas, self.cfg.weighting_strategy)
            terms = {"loss_sds": sds.reconstruction_loss(x, x0_hat, weight, self.grad_clip_val)}
            terms.update(self._auxiliary_losses(image, x0_hat, weight))

            out: Dict[str, Any] = {name: term.loss for name, term in terms.items()}
            out.update(
                grad_norm=terms["loss_sds"].grad.norm(),
                min_step=self.min_step,
                max_step=self.max_step,
                timesteps=t,
            )
            self._count_nonfinite(sum(term.num_nonfinite for term in terms.values()))
            if guidance_eval:
                out["eval"] = self._evaluation_images(x, x_t, x0_hat, t)
        return out

    def _require_models(self) -> None:
        missing = [name for name in self.MODEL_ATTRIBUTES if getattr(self, name, None) is None]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__} was released (no {', '.join(missing)}); build a new guidance"
            )

    def _timesteps(self, timesteps: Optional[torch.Tensor], batch_size: int) -> torch.Tensor:
        if timesteps is None:
            return sds.sample_timesteps(self.min_step, self.max_step, batch_size, self.device)
        timesteps = torch.as_tensor(timesteps, device=self.device).long().reshape(-1)
        if timesteps.numel() != batch_size:
            raise ValueError(f"timesteps must hold B={batch_size} values, got {timesteps.numel()}")
        if timesteps.min() < 0 or timesteps.max() >= self.num_train_timesteps:
            raise ValueError(
                f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {timesteps.tolist()}"
            )
        return timesteps

    def _count_nonfinite(self, count: int) -> None:
        if count > 0:
            self.num_nonfinite_total += count
            threestudio.warn(
                f"{type(self).__name__}: {count} non-finite gradient entries set to zero "
                f"({self.num_nonfinite_total} so far)"
            )

    @torch.no_grad()
    def _evaluation_images(self, x, x_t, x0_hat, t) -> Dict[str, torch.Tensor]:
        images = {"input": x, "noisy": x_t, "x0": x0_hat}
        return {
            **{
                name: self._to_rgb(value.detach()).permute(0, 2, 3, 1)
                for name, value in images.items()
            },
            "t": t,
        }

"""threestudio-facing score-distillation guidance shared by DeepFloyd IF and Stable Diffusion.

The maths (noising, classifier-free guidance, x0_hat, the reconstruction loss, the noise
schedule) lives in ``core.score_distillation``; this class loads the frozen diffusion
model, turns renders into the model's space and back, and follows threestudio's guidance
contract. Subclasses say what the model space is (``_encode``, ``_to_rgb``) and which
model parts they load (``_load_models``).

Precision: ``weights_dtype`` (float32, float16 or bfloat16) gives the frozen models'
dtype; ``auto`` keeps threestudio's rule: float16 on CUDA when ``half_precision_weights``,
float32 on CPU (where half precision is slow). The VAE encodes in that dtype too. The loss
maths runs in the render's dtype promoted to at least float32, outside any autocast region.

Attention runs through PyTorch's fused ``scaled_dot_product_attention`` (diffusers' SDPA
processors are set explicitly on every attention layer), unless xformers or attention
slicing is asked for.
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


WEIGHTS_DTYPES = ("auto", "float32", "float16", "bfloat16")


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
        # auto | float32 | float16 | bfloat16 (auto: see the module docstring).
        weights_dtype: str = "auto"
        enable_memory_efficient_attention: bool = False
        enable_attention_slicing: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_channels_last_format: bool = True
        # torch.compile the UNet(s) in place (nn.Module.compile): the first steps at each
        # new input shape compile (minutes for a full-size UNet), later steps run the
        # compiled graph. Off by default; benchmarks/bench_switches.py measures it on and off.
        compile_unet: bool = False

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
    LOSS_NAME = "loss_sds"

    def configure(self) -> None:
        self._validate_config()
        cuda = self.device.type == "cuda"
        if self.cfg.weights_dtype == "auto":
            self.weights_dtype = (
                torch.float16 if self.cfg.half_precision_weights and cuda else torch.float32
            )
        else:
            self.weights_dtype = getattr(torch, self.cfg.weights_dtype)
        if self.cfg.enable_sequential_cpu_offload and not cuda:
            raise ValueError(
                f"enable_sequential_cpu_offload needs a CUDA device, got device {self.device}"
            )
        threestudio.info(
            f"Loading {self.MODEL_LABEL} from {self.cfg.pretrained_model_name_or_path} ..."
        )
        self._load_models()
        prepared = []
        for name in self.MODEL_ATTRIBUTES:
            model = getattr(self, name)
            if not any(model is other for other in prepared):  # a model held under two names
                self._prepare_model(model, is_unet=name.startswith("unet"))
                prepared.append(model)
        self._load_schedule()
        self.grad_clip_val: Optional[float] = None
        # Non-finite gradient entries zeroed so far: a device tensor, read only when asked.
        self.num_nonfinite_total = torch.zeros((), dtype=torch.long, device=self.device)
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
        if cfg.weights_dtype not in WEIGHTS_DTYPES:
            raise ValueError(
                f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {cfg.weights_dtype!r}"
            )
        if cfg.render_resolution <= 0:
            raise ValueError(
                f"render_resolution must be a positive number of pixels, got {cfg.render_resolution}"
            )
        if cfg.compile_unet and cfg.enable_sequential_cpu_offload:
            raise ValueError(
                "compile_unet=True cannot be combined with enable_sequential_cpu_offload=True "
                "(offloading moves weights during the forward pass); turn one of them off"
            )
        if not cfg.pretrained_model_name_or_path:
            raise ValueError(
                "pretrained_model_name_or_path must name a hub model or a local directory"
            )

    # ------------------------------------------------------------------ loading

    def _load_models(self) -> None:
        """Set every attribute in ``MODEL_ATTRIBUTES`` from ``pretrained_model_name_or_path``."""
        raise NotImplementedError

    def _load_pretrained(self, component_class, subfolder: str, source: Optional[str] = None, **kwargs):
        """``component_class.from_pretrained(source, subfolder=...)`` with a clear error;
        ``source`` defaults to ``pretrained_model_name_or_path``."""
        source = source or self.cfg.pretrained_model_name_or_path
        looks_local = (
            os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)
        )
        if looks_local and not os.path.isdir(os.path.expanduser(source)):
            raise DiffusionModelUnavailableError(
                self._unavailable_message(f"the directory {source!r} does not exist", source)
            )
        try:
            return component_class.from_pretrained(
                os.path.expanduser(source), subfolder=subfolder, **kwargs
            )
        except (OSError, ValueError) as error:
            raise DiffusionModelUnavailableError(
                self._unavailable_message(
                    f"loading its {subfolder!r} failed ({type(error).__name__}: {error})", source
                )
            ) from error

    def _unavailable_message(self, reason: str, source: str) -> str:
        return (
            f"Cannot load the {self.MODEL_LABEL} "
            f"(pretrained_model_name_or_path={source!r}, "
            f"variant={self.cfg.variant!r}): {reason}. {self.HOW_TO_GET}"
        )

    def _prepare_model(self, model: torch.nn.Module, is_unet: bool) -> None:
        model.eval()
        model.requires_grad_(False)
        if is_unet and self.cfg.enable_channels_last_format:
            model.to(memory_format=torch.channels_last)
        use_sdpa_attention(model)
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
        if is_unet and self.cfg.compile_unet:
            model.compile()

    def _load_schedule(self) -> None:
        (
            self.num_train_timesteps,
            self.prediction_type,
            self.alphas_cumprod,
        ) = self._read_schedule()

    def _scheduler(self, source: Optional[str] = None):
        """The training noise schedule (a diffusers ``DDPMScheduler``) of ``source``, by
        default the guidance's model."""
        from diffusers import DDPMScheduler

        return self._load_pretrained(DDPMScheduler, "scheduler", source)

    def _read_schedule(self, source: Optional[str] = None) -> Tuple[int, str, torch.Tensor]:
        """(T, prediction type, alphabar [T] in float32) of ``source``'s scheduler."""
        scheduler = self._scheduler(source)
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in sds.PREDICTION_TYPES:
            raise ValueError(
                f"{self.MODEL_LABEL} {source or self.cfg.pretrained_model_name_or_path}: scheduler "
                f"prediction_type must be one of {sds.PREDICTION_TYPES}, got {prediction_type!r}"
            )
        alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        return int(scheduler.config.num_train_timesteps), prediction_type, alphas_cumprod

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
        self,
        image: Optional[torch.Tensor],
        estimates: Dict[str, torch.Tensor],
        weight: torch.Tensor,
    ) -> Dict[str, sds.ReconstructionTerm]:
        """Further ``loss_*`` reconstruction terms from the resized render ``image`` and
        the ``_denoised_estimates`` (none by default)."""
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

    def _predict_noise(
        self, unet, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
        alphas_cumprod: torch.Tensor, prediction_type: str, **unet_kwargs,
    ) -> torch.Tensor:
        """``unet``'s noise prediction [N,...] in x_t's dtype for x_t [N,...] at t [N].

        v-predictions are converted to noise with ``alphas_cumprod`` (the alphabar of the
        UNet's own scheduler); ``unet_kwargs`` go to the UNet (class labels, ...).
        """
        output = unet(
            x_t.to(self.weights_dtype),
            t,
            encoder_hidden_states=encoder_hidden_states.to(self.weights_dtype),
            **unet_kwargs,
        ).sample
        prediction = self._noise_channels(output.to(x_t.dtype), x_t)
        if prediction_type == "v_prediction":
            prediction = sds.epsilon_from_v_prediction(prediction, x_t, alphas_cumprod[t])
        return prediction

    @torch.no_grad()
    def guided_noise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_embeddings: torch.Tensor,
        negative_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Classifier-free-guided noise prediction eps_hat [B,...] in x_t's dtype.

        Without ``negative_weights``: ``text_embeddings`` [2B, L, D] is [cond; uncond] and
        the guidance is ``sds.classifier_free_guidance``. With Perp-Neg
        (``negative_weights`` [B, K]): ``text_embeddings`` [(2 + K)B, L, D] is [cond;
        uncond; negatives], the K negative prompts of sample b in rows 2B + bK .. 2B + bK +
        K - 1 (threestudio's ``get_text_embeddings_perp_neg``), and the guidance is
        ``sds.perp_neg_guidance``. Every row is evaluated on its own sample's x_t and t.
        (threestudio 0.2.3 feeds the negative rows ``cat([x_t] * 4)``, which pairs them
        with other samples' x_t when B > 1; for B = 1 the two agree.)
        """
        batch_size = x_t.shape[0]
        num_negatives = 0 if negative_weights is None else negative_weights.shape[1]
        sample_index = torch.cat(
            [
                torch.arange(batch_size, device=x_t.device).repeat(2),
                torch.arange(batch_size, device=x_t.device).repeat_interleave(num_negatives),
            ]
        )
        prediction = self._predict_noise(
            self.unet,
            x_t[sample_index],
            t[sample_index],
            text_embeddings,
            self.alphas_cumprod,
            self.prediction_type,
        )
        eps_text, eps_uncond = prediction[:batch_size], prediction[batch_size : 2 * batch_size]
        if negative_weights is None:
            return self._classifier_free_guidance(eps_text, eps_uncond)
        eps_negative = prediction[2 * batch_size :].reshape(
            batch_size, num_negatives, *x_t.shape[1:]
        )
        return sds.perp_neg_guidance(
            eps_text, eps_uncond, eps_negative, negative_weights.to(x_t), self.cfg.guidance_scale
        )

    def _classifier_free_guidance(self, eps_text: torch.Tensor, eps_uncond: torch.Tensor) -> torch.Tensor:
        """threestudio's SDS form ``sds.classifier_free_guidance`` with ``guidance_scale``."""
        return sds.classifier_free_guidance(eps_text, eps_uncond, self.cfg.guidance_scale)

    def _text_embeddings(
        self, prompt_utils, elevation, azimuth, camera_distances, batch_size: int
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(embeddings, Perp-Neg negative weights [B, K] or None) from the prompt processor.

        The prompt processor's ``use_perp_neg`` selects Perp-Neg, as in threestudio.
        """
        if getattr(prompt_utils, "use_perp_neg", False):
            if not self.cfg.view_dependent_prompting:
                raise ValueError(
                    "the prompt processor's use_perp_neg=True needs view_dependent_prompting=True "
                    f"in {type(self).__name__} (Perp-Neg mixes the view prompts), got False"
                )
            embeddings, weights = prompt_utils.get_text_embeddings_perp_neg(
                elevation, azimuth, camera_distances, True
            )
            rows = (2 + weights.shape[-1]) * batch_size
            if weights.shape[0] != batch_size or embeddings.dim() != 3 or embeddings.shape[0] != rows:
                raise ValueError(
                    "prompt_utils.get_text_embeddings_perp_neg must return ([(2 + K)B, L, D], [B, K]) "
                    f"for B={batch_size}, got shapes {tuple(embeddings.shape)} and {tuple(weights.shape)}"
                )
            return embeddings.to(self.device), weights.to(self.device)
        embeddings = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
        )
        if embeddings.dim() != 3 or embeddings.shape[0] != 2 * batch_size:
            raise ValueError(
                "prompt_utils.get_text_embeddings must return [2B, L, D] ([cond; uncond]) "
                f"for B={batch_size}, got shape {tuple(embeddings.shape)}"
            )
        return embeddings.to(self.device), None

    def _denoised_estimates(
        self, x_t, t, alphas, prompt_utils, elevation, azimuth, camera_distances, **kwargs
    ) -> Dict[str, torch.Tensor]:
        """Denoised estimates of x_t [B,...]: ``x0``, the guided x0_hat (pseudo ground truth)."""
        text_embeddings, negative_weights = self._text_embeddings(
            prompt_utils, elevation, azimuth, camera_distances, x_t.shape[0]
        )
        eps_hat = self.guided_noise(x_t, t, text_embeddings, negative_weights)
        return {"x0": sds.predicted_x0(x_t, eps_hat, alphas)}

    def _reconstruction_target(self, x: torch.Tensor, estimates: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The target the main loss pulls x towards (SDS: x0_hat itself)."""
        return estimates["x0"]

    def _further_losses(self, x: torch.Tensor, **kwargs) -> Dict[str, torch.Tensor]:
        """Losses other than reconstruction terms (none by default)."""
        return {}

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

        Returns ``LOSS_NAME`` (``loss_sds``; plus subclass terms), ``grad_norm`` (of the
        per-element gradient of that loss), ``min_step``/``max_step`` (current inclusive
        timestep range), ``timesteps`` [B] and ``num_nonfinite`` (gradient entries that
        were not finite and were set to zero, a device tensor: the system logs it; no
        value is read on the host, so the step never waits for the device).
        ``guidance_eval`` adds ``eval``: RGB images [B,H,W,3] in [0, 1] ``input``,
        ``noisy`` and ``x0`` (the pseudo ground truth x0_hat; subclasses may add further
        estimates) with their ``t`` [B]. ``timesteps``
        [B] and ``noise`` (shaped like the model-space input) replace the random draws, for
        reproducible evaluation. Further keyword arguments (threestudio passes the whole
        camera batch) go to the subclass hooks.
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
            alphas = self.alphas_cumprod[t].to(x.dtype)
            x_t = sds.add_noise(x.detach(), noise.to(x), alphas)
            estimates = self._denoised_estimates(
                x_t, t, alphas, prompt_utils, elevation, azimuth, camera_distances, **kwargs
            )
            target = self._reconstruction_target(x, estimates)
            weight = sds.reconstruction_weight(alphas, self.cfg.weighting_strategy)
            terms = {self.LOSS_NAME: sds.reconstruction_loss(x, target, weight, self.grad_clip_val)}
            terms.update(self._auxiliary_losses(image, estimates, weight))

            out: Dict[str, Any] = {name: term.loss for name, term in terms.items()}
            out.update(self._further_losses(x, prompt_utils=prompt_utils, elevation=elevation,
                                            azimuth=azimuth, camera_distances=camera_distances, **kwargs))
            out.update(
                grad_norm=terms[self.LOSS_NAME].grad.norm(),
                min_step=self.min_step,
                max_step=self.max_step,
                timesteps=t,
            )
            num_nonfinite = sum(term.num_nonfinite for term in terms.values())
            self.num_nonfinite_total = self.num_nonfinite_total + num_nonfinite
            out["num_nonfinite"] = num_nonfinite
            if guidance_eval:
                out["eval"] = self._evaluation_images(x, x_t, estimates, t)
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

    @torch.no_grad()
    def _evaluation_images(self, x, x_t, estimates, t) -> Dict[str, torch.Tensor]:
        images = {"input": x, "noisy": x_t, **estimates}
        return {
            **{
                name: self._to_rgb(value.detach()).permute(0, 2, 3, 1)
                for name, value in images.items()
            },
            "t": t,
        }


def use_sdpa_attention(model: torch.nn.Module) -> None:
    """Give every attention layer of a diffusers ``model`` the processor that calls
    PyTorch's fused ``scaled_dot_product_attention``: ``AttnAddedKVProcessor2_0`` for
    layers with added key/value projections (IF's), ``AttnProcessor2_0`` otherwise.
    Models without attention processors are left as they are."""
    from diffusers.models.attention_processor import (
        AttnAddedKVProcessor2_0,
        AttnProcessor2_0,
    )

    processors = getattr(model, "attn_processors", None)
    if not processors:
        return
    layers = {name: module for name, module in model.named_modules()}
    chosen = {}
    for name in processors:
        layer = layers[name[: -len(".processor")]]
        added_kv = getattr(layer, "added_kv_proj_dim", None) is not None
        chosen[name] = AttnAddedKVProcessor2_0() if added_kv else AttnProcessor2_0()
    model.set_attn_processor(chosen)

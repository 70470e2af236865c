"""ProlificDreamer's variational score distillation (VSD) on Stable Diffusion, as reconstruction.

VSD (Wang et al., arXiv 2305.16213) replaces SDS's noise residual eps_hat - eps by
eps_pretrained - eps_lora: the frozen model's guided noise against that of a LoRA of the
same UNet, fitted to the current renders with the ordinary diffusion loss and conditioned
on the camera (the flattened 4x4 c2w, or the MVP matrix, through a learned embedding
added to the UNet's time embedding, as ProlificDreamer and threestudio's
``stable-diffusion-vsd-guidance`` do). Read as reconstruction, both predictions are
denoised estimates of one x_t (``eval`` holds ``x0``, the pretrained model's, and
``x0_lora``), and ``loss_vsd`` = 0.5 c(t) ||x - stopgrad(x - (x0_lora - x0))||^2 / B has
exactly VSD's gradient w(t)(eps_pretrained - eps_lora) (``core.score_distillation.vsd_target``).

``loss_lora`` is the LoRA's diffusion loss on the detached latents (t uniform over all
timesteps, the camera condition dropped for the whole batch with probability 0.1 when
``lora_cfg_training``). Its parameters (LoRA matrices and camera embedding) train through
the system's optimizer: give this guidance a group in ``system.optimizer.params`` (lr 1e-4
in ProlificDreamer); they are saved in checkpoints, the frozen models are not.

Guidance scales follow threestudio's VSD (and diffusers): eps_uncond + s (eps_text -
eps_uncond) with s = ``guidance_scale`` (7.5 in ProlificDreamer) for the pretrained model,
``guidance_scale_lora`` (1: no guidance) between camera and no camera for the LoRA model.
With the prompt processor's ``use_perp_neg`` the pretrained model's guidance is Perp-Neg.

LoRA is applied with peft to the attention projections (to_q, to_k, to_v, to_out.0) of the
UNet, rank ``lora_rank`` and scale 1, the layers diffusers' ``LoRAAttnProcessor`` adapts
in threestudio. With one model for both (``pretrained_model_name_or_path_lora`` empty or
equal), one UNet is held and the LoRA and camera embedding are switched on only for the
LoRA model's passes. peft 0.13 is the newest release importable with threestudio's pinned
transformers 4.28.1.
"""

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.utils.base import BaseModule

from ..core import score_distillation as sds
from .base import ScoreDistillationGuidance
from .stable_diffusion import StableDiffusionGuidance

CAMERA_CONDITIONS = {"extrinsics": "c2w", "mvp": "mvp_mtx"}
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
CAMERA_DROPOUT_PROBABILITY = 0.1  # ProlificDreamer: the LoRA also learns the unconditional model


def _import_peft():
    try:
        import peft
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as error:
        import transformers

        raise ImportError(
            "stabledreamer-vsd-guidance needs peft for its LoRA "
            f"({type(error).__name__}: {error}). Install it with `pip install peft`; with "
            f"transformers {transformers.__version__} < 4.36 (threestudio's pin is 4.28.1) "
            'use `pip install "peft<0.14"`.'
        ) from error
    return peft, BaseTunerLayer


@threestudio.register("stabledreamer-vsd-guidance")
class VSDGuidance(BaseModule, StableDiffusionGuidance):
    @dataclass
    class Config(StableDiffusionGuidance.Config):
        weights: Optional[str] = None  # threestudio BaseModule: "checkpoint:module" to load
        # Base model of the LoRA; empty = pretrained_model_name_or_path (one UNet held).
        pretrained_model_name_or_path_lora: str = ""
        guidance_scale: float = 7.5
        guidance_scale_lora: float = 1.0
        lora_rank: int = 4
        lora_cfg_training: bool = True
        lora_n_timestamp_samples: int = 1
        camera_condition_type: str = "extrinsics"

    cfg: Config

    MODEL_LABEL = "Stable Diffusion UNet and VAE"
    MODEL_ATTRIBUTES = ("unet", "vae", "unet_lora")
    LOSS_NAME = "loss_vsd"

    def __setattr__(self, name: str, value: Any) -> None:
        # The frozen diffusion models stay outside the module tree: not in checkpoints and
        # not moved by the system; only the LoRA and the camera embedding are this module's.
        if name in self.MODEL_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, *args, **kwargs) -> Dict[str, Any]:
        return ScoreDistillationGuidance.__call__(self, *args, **kwargs)

    # ------------------------------------------------------------------ set-up

    def configure(self) -> None:
        ScoreDistillationGuidance.configure(self)
        _, self._tuner_layer_class = _import_peft()
        if self.single_model:
            self.num_train_timesteps_lora = self.num_train_timesteps
            self.prediction_type_lora = self.prediction_type
            self.alphas_cumprod_lora = self.alphas_cumprod
        else:
            (
                self.num_train_timesteps_lora,
                self.prediction_type_lora,
                self.alphas_cumprod_lora,
            ) = self._read_schedule(self.cfg.pretrained_model_name_or_path_lora)
        self._add_lora()

    def _validate_config(self) -> None:
        super()._validate_config()
        cfg = self.cfg
        if cfg.camera_condition_type not in CAMERA_CONDITIONS:
            raise ValueError(
                f"camera_condition_type must be one of {tuple(CAMERA_CONDITIONS)}, "
                f"got {cfg.camera_condition_type!r}"
            )
        for name in ("lora_rank", "lora_n_timestamp_samples"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)!r}")

    @property
    def single_model(self) -> bool:
        lora_source = self.cfg.pretrained_model_name_or_path_lora
        return lora_source in ("", self.cfg.pretrained_model_name_or_path)

    def _load_models(self) -> None:
        super()._load_models()
        if self.single_model:
            self.unet_lora = self.unet
        else:
            from diffusers import UNet2DConditionModel

            self.unet_lora = self._load_pretrained(
                UNet2DConditionModel,
                "unet",
                self.cfg.pretrained_model_name_or_path_lora,
                variant=self.cfg.variant,
                torch_dtype=self.weights_dtype,
            )

    def _add_lora(self) -> None:
        """peft LoRA on the LoRA UNet's attention projections (float32, trainable, off
        outside LoRA passes) and the camera embedding (float32)."""
        peft, _ = _import_peft()
        from diffusers.models.embeddings import TimestepEmbedding

        config = peft.LoraConfig(
            r=self.cfg.lora_rank,
            lora_alpha=self.cfg.lora_rank,
            target_modules=list(LORA_TARGET_MODULES),
        )
        peft.inject_adapter_in_model(config, self.unet_lora)
        layers = {}
        for name, module in self.unet_lora.named_modules():
            if isinstance(module, self._tuner_layer_class):
                layers[name.replace(".", "_")] = nn.ModuleDict(
                    {"lora_A": module.lora_A, "lora_B": module.lora_B}
                )
        self.lora_layers = nn.ModuleDict(layers).to(self.device, torch.float32)
        time_embedding_width = self.unet_lora.time_embedding.linear_2.out_features
        self.camera_embedding = TimestepEmbedding(16, time_embedding_width).to(self.device)
        self._set_lora_enabled(False)

    def _set_lora_enabled(self, enabled: bool) -> None:
        for module in self.unet_lora.modules():
            if isinstance(module, self._tuner_layer_class):
                module.enable_adapters(enabled)
        # peft also freezes disabled adapters; they stay trainable for the system's optimizer
        self.lora_layers.requires_grad_(True)
        self.unet_lora.class_embedding = self.camera_embedding if enabled else None

    @contextlib.contextmanager
    def _lora_model(self) -> Iterator[nn.Module]:
        """The LoRA UNet with its LoRA and camera embedding on (off again afterwards)."""
        self._set_lora_enabled(True)
        try:
            yield self.unet_lora
        finally:
            self._set_lora_enabled(False)

    # ------------------------------------------------------------------ VSD

    def _classifier_free_guidance(self, eps_text: torch.Tensor, eps_uncond: torch.Tensor) -> torch.Tensor:
        """diffusers' form eps_uncond + s (eps_text - eps_uncond), as threestudio's VSD."""
        return sds.classifier_free_guidance(eps_text, eps_uncond, self.cfg.guidance_scale - 1.0)

    def _camera_condition(self, camera_batch: Dict[str, Any], batch_size: int) -> torch.Tensor:
        """The flattened camera matrices [B, 16] (``c2w`` or ``mvp_mtx`` of the batch)."""
        key = CAMERA_CONDITIONS[self.cfg.camera_condition_type]
        matrices = camera_batch.get(key)
        if matrices is None:
            raise ValueError(
                f"{type(self).__name__} with camera_condition_type="
                f"{self.cfg.camera_condition_type!r} needs the camera batch's {key!r} [B, 4, 4] "
                "(threestudio's camera datamodules provide it); it was not passed"
            )
        if tuple(matrices.shape) != (batch_size, 4, 4):
            raise ValueError(
                f"{key} must have shape ({batch_size}, 4, 4), got {tuple(matrices.shape)}"
            )
        return matrices.reshape(batch_size, 16).to(self.device, self.camera_embedding.linear_1.weight.dtype)

    def _view_independent_condition(self, prompt_utils, elevation, azimuth, camera_distances):
        """The LoRA's text condition: the prompt's embeddings without view suffix [B, L, D]."""
        embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, False)
        return embeddings[: elevation.shape[0]].to(self.device)

    def _denoised_estimates(
        self, x_t, t, alphas, prompt_utils, elevation, azimuth, camera_distances, **kwargs
    ) -> Dict[str, torch.Tensor]:
        """``x0`` from the pretrained model's guided noise, ``x0_lora`` from the LoRA's."""
        batch_size = x_t.shape[0]
        camera = self._camera_condition(kwargs, batch_size)
        estimates = super()._denoised_estimates(
            x_t, t, alphas, prompt_utils, elevation, azimuth, camera_distances
        )
        text = self._view_independent_condition(prompt_utils, elevation, azimuth, camera_distances)
        with torch.no_grad(), self._lora_model() as unet:
            prediction = self._predict_noise(
                unet,
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                torch.cat([text, text]),
                self.alphas_cumprod_lora,
                self.prediction_type_lora,
                class_labels=torch.cat([camera, torch.zeros_like(camera)]),
            )
        eps_camera, eps_no_camera = prediction.chunk(2)
        eps_lora = sds.classifier_free_guidance(
            eps_camera, eps_no_camera, self.cfg.guidance_scale_lora - 1.0
        )
        estimates["x0_lora"] = sds.predicted_x0(x_t, eps_lora, alphas)
        return estimates

    def _reconstruction_target(self, x: torch.Tensor, estimates: Dict[str, torch.Tensor]) -> torch.Tensor:
        return sds.vsd_target(x, estimates["x0"], estimates["x0_lora"])

    def _image_target(self, image: torch.Tensor, estimates: Dict[str, torch.Tensor]) -> torch.Tensor:
        """HiFA's image-space VSD (threestudio's): image - (decode(x0_lora) - decode(x0))."""
        decoded = self.decode_latents(estimates["x0_lora"]) - self.decode_latents(estimates["x0"])
        return image.detach() - decoded

    def _further_losses(
        self,
        x: torch.Tensor,
        prompt_utils=None,
        elevation=None,
        azimuth=None,
        camera_distances=None,
        lora_timesteps: Optional[torch.Tensor] = None,
        lora_noise: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        """``loss_lora``: the LoRA model's diffusion loss (MSE to the noise, or to v for a
        v-prediction LoRA base) on the detached latents, repeated
        ``lora_n_timestamp_samples`` times. ``lora_timesteps`` [nB] and ``lora_noise``
        replace the random draws."""
        batch_size = x.shape[0]
        repeats = self.cfg.lora_n_timestamp_samples
        camera = self._camera_condition(kwargs, batch_size)
        if self.cfg.lora_cfg_training and torch.rand(()).item() < CAMERA_DROPOUT_PROBABILITY:
            camera = torch.zeros_like(camera)
        text = self._view_independent_condition(prompt_utils, elevation, azimuth, camera_distances)
        latents = x.detach().repeat(repeats, 1, 1, 1)
        if lora_timesteps is None:
            t = sds.sample_timesteps(
                0, self.num_train_timesteps_lora - 1, batch_size * repeats, self.device
            )
        else:
            t = torch.as_tensor(lora_timesteps, device=self.device).long().reshape(-1)
            if t.numel() != batch_size * repeats:
                raise ValueError(
                    f"lora_timesteps must hold {batch_size * repeats} values, got {t.numel()}"
                )
        noise = torch.randn_like(latents) if lora_noise is None else lora_noise.to(latents)
        if noise.shape != latents.shape:
            raise ValueError(
                f"lora_noise must have shape {tuple(latents.shape)}, got {tuple(noise.shape)}"
            )
        alphas = self.alphas_cumprod_lora[t].to(latents.dtype)
        noisy = sds.add_noise(latents, noise, alphas)
        if self.prediction_type_lora == "v_prediction":
            a_t, s_t = sds.signal_and_noise_scales(alphas)
            target = a_t.view(-1, 1, 1, 1) * noise - s_t.view(-1, 1, 1, 1) * latents
        else:
            target = noise
        with self._lora_model() as unet:
            output = unet(
                noisy.to(self.weights_dtype),
                t,
                encoder_hidden_states=text.repeat(repeats, 1, 1).to(self.weights_dtype),
                class_labels=camera.repeat(repeats, 1),
            ).sample
        prediction = self._noise_channels(output, noisy)
        return {"loss_lora": F.mse_loss(prediction.float(), target.float())}

"""Stable Diffusion as score-distillation guidance, in VAE latent space.

StableDreamer's second stage uses this latent-space model for colour. The render is resized
(bilinear) to ``render_resolution`` (512 for SD 2.1-base), mapped to [-1, 1] and encoded by
the VAE (a posterior sample times the VAE's scaling factor); ``rgb_as_latents=True`` takes
4-channel latents instead, resized to the latent resolution. Epsilon- and v-predicting
models are both handled (v is converted to noise). Text embeddings are the CLIP states from
threestudio's ``stable-diffusion-prompt-processor``; no text encoder is loaded here.

HiFA's image-space term (``use_img_loss``): ``loss_sds_img = 0.5 c(t) ||img -
stopgrad(decode(x0_hat))||^2 / B`` with ``img`` the resized render and ``decode(x0_hat)``
the decoded pseudo ground truth, both RGB in [0, 1] at ``render_resolution`` (threestudio's
convention), and the same c(t) = w(t) a_t / s_t as the latent term. Its weight is the
system's ``lambda_sds_img``.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

import threestudio

from ..core import score_distillation as sds
from .base import ScoreDistillationGuidance


@threestudio.register("stabledreamer-stable-diffusion-guidance")
class StableDiffusionGuidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        guidance_scale: float = 100.0
        render_resolution: int = 512
        use_img_loss: bool = False

    cfg: Config

    MODEL_LABEL = "Stable Diffusion UNet and VAE"
    HOW_TO_GET = (
        "Let it download once with network access (HF_HUB_OFFLINE unset), e.g. "
        "`huggingface-cli download stabilityai/stable-diffusion-2-1-base`, or set "
        "pretrained_model_name_or_path to a local folder with unet/, vae/ and scheduler/."
    )
    MODEL_ATTRIBUTES = ("unet", "vae")

    def _load_models(self) -> None:
        from diffusers import UNet2DConditionModel

        self.unet = self._load_pretrained(
            UNet2DConditionModel, "unet", variant=self.cfg.variant, torch_dtype=self.weights_dtype
        )
        self._load_vae()

    def _load_vae(self) -> None:
        """The VAE of ``pretrained_model_name_or_path`` and the latent geometry it implies."""
        from diffusers import AutoencoderKL

        self.vae = self._load_pretrained(
            AutoencoderKL, "vae", variant=self.cfg.variant, torch_dtype=self.weights_dtype
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        if self.cfg.render_resolution % self.vae_scale_factor != 0:
            raise ValueError(
                f"render_resolution must be a multiple of the VAE's downsampling factor "
                f"{self.vae_scale_factor}, got {self.cfg.render_resolution}"
            )

    @property
    def latent_resolution(self) -> int:
        return self.cfg.render_resolution // self.vae_scale_factor

    def _encode(
        self, rgb_BCHW: torch.Tensor, rgb_as_latents: bool
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if rgb_as_latents:
            if self.cfg.use_img_loss:
                raise ValueError("use_img_loss needs RGB renders: rgb_as_latents must be False")
            if rgb_BCHW.shape[1] != self.latent_channels:
                raise ValueError(
                    f"with rgb_as_latents, rgb must have {self.latent_channels} channels, got {rgb_BCHW.shape[1]}"
                )
            size = (self.latent_resolution, self.latent_resolution)
            return F.interpolate(rgb_BCHW, size, mode="bilinear", align_corners=False), None
        if rgb_BCHW.shape[1] != 3:
            raise ValueError(f"rgb must have 3 channels (RGB in [0, 1]), got {rgb_BCHW.shape[1]}")
        size = (self.cfg.render_resolution, self.cfg.render_resolution)
        image = F.interpolate(rgb_BCHW, size, mode="bilinear", align_corners=False)
        posterior = self.vae.encode((image * 2.0 - 1.0).to(self.weights_dtype)).latent_dist
        return (posterior.sample() * self.scaling_factor).to(image.dtype), image

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B,4,h,w] -> RGB [B,3,8h,8w] in [0, 1] (no gradient)."""
        with torch.no_grad():
            decoded = self.vae.decode((latents / self.scaling_factor).to(self.weights_dtype)).sample
        return (decoded.to(latents.dtype) * 0.5 + 0.5).clamp(0.0, 1.0)

    def _to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decode_latents(x[i : i + 1]) for i in range(x.shape[0])])

    def _auxiliary_losses(
        self,
        image: Optional[torch.Tensor],
        estimates: Dict[str, torch.Tensor],
        weight: torch.Tensor,
    ) -> Dict[str, sds.ReconstructionTerm]:
        if not self.cfg.use_img_loss:
            return {}
        target = self._image_target(image, estimates)
        return {
            f"{self.LOSS_NAME}_img": sds.reconstruction_loss(image, target, weight, self.grad_clip_val)
        }

    def _image_target(self, image: torch.Tensor, estimates: Dict[str, torch.Tensor]) -> torch.Tensor:
        """HiFA's image-space target: the decoded pseudo ground truth decode(x0_hat)."""
        return self.decode_latents(estimates["x0"])

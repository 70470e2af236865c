"""DeepFloyd IF stage I as score-distillation guidance, in 64x64 pixel space.

StableDreamer's first stage uses this image-space model for geometry. The render is
resized (bilinear) to ``render_resolution`` (IF stage I works at 64x64) and mapped from
[0, 1] to IF's [-1, 1]; the UNet's 6 output channels are the noise (first 3) and the
learned variance interpolation (last 3, unused). Text embeddings are the T5 states from
threestudio's ``deep-floyd-prompt-processor``; no text encoder is loaded here.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

import threestudio

from .base import ScoreDistillationGuidance


@threestudio.register("stabledreamer-deep-floyd-guidance")
class DeepFloydGuidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"
        variant: Optional[str] = "fp16"
        guidance_scale: float = 20.0
        render_resolution: int = 64

    cfg: Config

    MODEL_LABEL = "DeepFloyd IF stage I UNet"
    HOW_TO_GET = (
        "DeepFloyd IF is gated: accept its licence on its Hugging Face model page "
        "(DeepFloyd/IF-I-XL-v1.0), run `huggingface-cli login` with a read token, and let "
        "it download once with network access (HF_HUB_OFFLINE unset), e.g. "
        "`huggingface-cli download DeepFloyd/IF-I-XL-v1.0`; or set "
        "pretrained_model_name_or_path to a local folder with unet/ and scheduler/ "
        "(and set variant to null if it has no .fp16 weight files)."
    )
    MODEL_ATTRIBUTES = ("unet",)

    def _load_models(self) -> None:
        from diffusers import UNet2DConditionModel

        self.unet = self._load_pretrained(
            UNet2DConditionModel, "unet", variant=self.cfg.variant, torch_dtype=self.weights_dtype
        )

    def _encode(
        self, rgb_BCHW: torch.Tensor, rgb_as_latents: bool
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if rgb_as_latents:
            raise ValueError(
                f"{type(self).__name__} works in pixel space: rgb_as_latents must be False"
            )
        if rgb_BCHW.shape[1] != 3:
            raise ValueError(f"rgb must have 3 channels (RGB in [0, 1]), got {rgb_BCHW.shape[1]}")
        size = (self.cfg.render_resolution, self.cfg.render_resolution)
        pixels = F.interpolate(rgb_BCHW * 2.0 - 1.0, size, mode="bilinear", align_corners=False)
        return pixels, None

    def _to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1.0) * 0.5).clamp(0.0, 1.0)

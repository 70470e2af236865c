"""Test doubles loaded by the launcher as a second ``custom/`` extension in end-to-end tests.

- ``test-trainable-guidance``: a guidance with a trainable parameter, as threestudio's
  ``stable-diffusion-vsd-guidance`` has LoRA weights: it must reach the system's optimizer
  through ``optimizer.params.guidance``. Its ``loss_sds`` pulls the render towards grey and
  its ``loss_lora`` pulls ``offset`` from 0 towards 1. It needs the camera matrices that
  VSD needs (``mvp_mtx``, ``c2w``) and answers ``guidance_eval`` in threestudio's format.
  Its config accepts the keys of the CPU config's guidance sections, so that swapping it in
  is one ``system.guidance_type=...`` override.
- ``test-recording-rasterizer``: delegates to ``stabledreamer-gaussian-rasterizer`` and
  counts its calls in the buffer ``calls`` (saved in checkpoints).
"""
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

import threestudio
from threestudio.models.renderers.base import Rasterizer
from threestudio.utils.base import BaseModule


@threestudio.register("test-trainable-guidance")
class TrainableGuidance(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pretrained_model_name_or_path: str = ""
        guidance_scale: float = 0.0
        weighting_strategy: str = ""
        render_resolution: int = 0
        anneal: str = ""
        max_step_percent: Any = 0.0
        min_step_percent: Any = 0.0
        anneal_start_step: Any = 0
        anneal_steps: Any = 0
        anneal_jitter_percent: float = 0.0
        use_img_loss: bool = False

    cfg: Config

    def configure(self) -> None:
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, rgb, prompt_utils, elevation, azimuth, camera_distances, mvp_mtx=None, c2w=None,
                rgb_as_latents=False, guidance_eval=False, **kwargs):
        if mvp_mtx is None or c2w is None:
            raise ValueError("test-trainable-guidance needs mvp_mtx and c2w from the batch")
        batch_size = rgb.shape[0]
        out = {
            "loss_sds": ((rgb - 0.5) ** 2).sum() / batch_size,
            "loss_lora": (self.offset.to(rgb.device) - 1.0) ** 2,
        }
        if guidance_eval:
            grey = torch.full_like(rgb, 0.5)
            out["eval"] = {"imgs_noisy": rgb.detach(), "imgs_1orig": grey, "noise_levels": [0.5] * batch_size}
        return out

    def release(self) -> None:
        pass


@threestudio.register("test-recording-rasterizer")
class RecordingRasterizer(Rasterizer):
    @dataclass
    class Config(Rasterizer.Config):
        backend: str = "torch"
        invert_background_probability: float = 0.0

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        inner_cfg = {"backend": self.cfg.backend,
                     "invert_background_probability": self.cfg.invert_background_probability}
        self.inner = threestudio.find("stabledreamer-gaussian-rasterizer")(
            inner_cfg, geometry=geometry, material=material, background=background
        )
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, **batch):
        self.calls += 1
        return self.inner(**batch)

"""The lab's guidances: score distillation against an exact denoiser over renders of a known object.

``stabledreamer-lab-guidance`` is stage 1's (DeepFloyd IF, pixel space),
``stabledreamer-lab-latent-guidance`` stage 2's (Stable Diffusion, latent space).

In the first, everything but the network is the DeepFloyd IF guidance under test (pixel space at
``render_resolution``, IF stage I's noise schedule, classifier-free guidance, x0_hat, the
reconstruction loss, annealing); the UNet is replaced by ``lab.denoiser.AnalyticDenoiser``,
the exact posterior mean over reference images of the ground-truth object
``lab.objects.make_object(object)``.

References of a training view (camera ``c2w``, ``fovy`` from the batch): the object
rendered by the project's rasterizer from that camera turned about the world z axis by
``delta_k = k 360 / num_azimuths`` degrees (k = 0..K-1), i.e. the object seen from
azimuth ``azimuth + delta_k`` with this view's elevation, distance, field of view and
perturbations, each composited over every colour in ``backgrounds`` (the renderer
draws a white or, inverted, a black background). Each reference is labelled with the
view bin of its azimuth by the prompt processor's own direction rules (threestudio's
front / side / back / overhead thresholds), and the prompt's view bin conditions the
prior as ``lab.denoiser`` describes (``front_bias``, ``view_leak``).

``oracle: true`` keeps only delta = 0: the posterior mean of the exact render (per
background) is that render, so score distillation becomes multi-view reconstruction of
the object, the upper bound of the lab.

``stabledreamer-lab-latent-guidance`` is the Stable Diffusion guidance under test (the
VAE encode of the render and its backward, the latent reconstruction loss, HiFA's image
loss through the decoder, its annealing) with the same prior in latent space: the
references are the latents (the encoder's posterior mean, times the scaling factor) of
the same reference renders, resized to ``render_resolution``, and the schedule is SD
2.1-base's. ``pretrained_model_name_or_path`` is a folder with the lab's fitted VAE and
that scheduler (``lab.latent_vae.fit_lab_vae``), loaded as SD's ``vae/`` and
``scheduler/``; no UNet is read.

Both need ``stabledreamer-lab-prompt-processor`` (the denoiser reads view bins from its
embeddings) and a batch with ``c2w`` and ``fovy`` (threestudio's random-camera
datamodule). The stage-1 guidance reads no ``pretrained_model_name_or_path``.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

import threestudio

from ..lab.denoiser import AnalyticDenoiser
from ..lab.objects import OBJECTS, make_object
from ..lab.render import render_object, turn_about_z
from ..tiny_models import if_stage1_scheduler
from .deep_floyd import DeepFloydGuidance
from .stable_diffusion import StableDiffusionGuidance


@dataclass
class LabPriorConfig:
    """The lab prior's settings, shared by both lab guidances."""

    object: str = "head"
    """The ground-truth object, one of ``lab.objects.OBJECTS``."""
    oracle: bool = False
    num_azimuths: int = 8
    """References per view and background: azimuth offsets every 360 / num_azimuths degrees."""
    front_bias: float = 1.0
    """Prior weight of front-bin references relative to the others (> 1: front-biased prior)."""
    view_leak: float = 0.0
    """In [0, 1]: the share of the prior that ignores the view prompt (0 = obeys it fully)."""
    backgrounds: List[List[float]] = field(default_factory=lambda: [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])


class LabPrior:
    """Swaps the lab's ``AnalyticDenoiser`` in for a guidance's UNet: ``_load_lab_prior``
    builds it, ``__call__`` gives it each batch's references before the guidance runs."""

    MODEL_LABEL = "analytic lab denoiser"

    def _validate_config(self) -> None:
        super()._validate_config()
        cfg = self.cfg
        if cfg.object not in OBJECTS:
            raise ValueError(f"guidance.object must be one of {sorted(OBJECTS)}, got {cfg.object!r}")
        if cfg.num_azimuths < 1:
            raise ValueError(f"guidance.num_azimuths must be >= 1, got {cfg.num_azimuths}")
        if not cfg.front_bias > 0:
            raise ValueError(f"guidance.front_bias must be > 0, got {cfg.front_bias}")
        if not 0.0 <= cfg.view_leak <= 1.0:
            raise ValueError(f"guidance.view_leak must be in [0, 1], got {cfg.view_leak}")
        if not cfg.backgrounds or any(len(colour) != 3 for colour in cfg.backgrounds):
            raise ValueError(f"guidance.backgrounds must be a non-empty list of RGB triples, got {cfg.backgrounds}")

    def _load_lab_prior(self, alphas_cumprod: torch.Tensor) -> None:
        self.object = make_object(self.cfg.object)
        for name in ("means", "quats", "scales", "opacities", "colors"):
            setattr(self.object, name, getattr(self.object, name).to(self.device))
        self.unet = AnalyticDenoiser(alphas_cumprod, front_bias=self.cfg.front_bias, leak=self.cfg.view_leak)
        count = 1 if self.cfg.oracle else self.cfg.num_azimuths
        self.azimuth_offsets = torch.arange(count, dtype=torch.float32) * (360.0 / count)
        self.background_colours = torch.tensor(self.cfg.backgrounds, dtype=torch.float32, device=self.device)

    def __call__(self, rgb: torch.Tensor, prompt_utils, elevation: torch.Tensor, azimuth: torch.Tensor,
                 camera_distances: torch.Tensor, c2w: torch.Tensor = None, fovy: torch.Tensor = None,
                 **kwargs) -> Dict[str, Any]:
        if c2w is None or fovy is None:
            raise ValueError(
                f"{type(self).__name__} needs the batch's c2w and fovy (threestudio's random-camera-datamodule)"
            )
        self._require_models()
        references, bins = self._references(prompt_utils, elevation, azimuth, camera_distances, c2w, fovy,
                                            rgb.shape[1], rgb.shape[2])
        self.unet.set_references(references, bins, prompt_utils.direction2idx["front"])
        try:
            return super().__call__(rgb, prompt_utils, elevation, azimuth, camera_distances, **kwargs)
        finally:
            self.unet.clear_references()

    def _encode_references(self, images: torch.Tensor) -> torch.Tensor:
        """Reference renders [N,3,H,W] in [0, 1] -> model space [N,C,h,w]."""
        return self._encode(images, rgb_as_latents=False)[0]

    @torch.no_grad()
    def _references(self, prompt_utils, elevation, azimuth, camera_distances, c2w, fovy, height: int, width: int):
        """Model-space references [B, K * backgrounds, C, h, w] and their view bins [B, K * backgrounds]."""
        offsets = self.azimuth_offsets.to(self.device)
        cameras = turn_about_z(c2w.to(self.device, torch.float32), offsets)
        batch, count = cameras.shape[:2]
        fovs = fovy.to(self.device, torch.float32).repeat_interleave(count)
        foreground = render_object(self.object, cameras.reshape(-1, 4, 4), fovs, height, width, (0.0, 0.0, 0.0))
        # colours are alpha-premultiplied over black: composite each background
        images = foreground.rgb[:, None] + (1.0 - foreground.alpha[:, None]) * self.background_colours[None, :, None, None]
        encoded = self._encode_references(images.reshape(-1, height, width, 3).permute(0, 3, 1, 2))
        references = encoded.reshape(batch, count * len(self.background_colours), *encoded.shape[1:])

        shown = (azimuth.to(self.device)[:, None] + offsets[None]).reshape(-1)
        bins = view_bins(prompt_utils, elevation.to(self.device).repeat_interleave(count), shown,
                         camera_distances.to(self.device).repeat_interleave(count))
        bins = bins.reshape(batch, count, 1).expand(-1, -1, len(self.background_colours))
        return references, bins.reshape(batch, -1)


@threestudio.register("stabledreamer-lab-guidance")
class LabGuidance(LabPrior, DeepFloydGuidance):
    @dataclass
    class Config(LabPriorConfig, DeepFloydGuidance.Config):
        pretrained_model_name_or_path: str = "analytic"

    cfg: Config

    def _scheduler(self, source=None):
        return if_stage1_scheduler()

    def _load_models(self) -> None:
        self._load_lab_prior(self._scheduler().alphas_cumprod)


@threestudio.register("stabledreamer-lab-latent-guidance")
class LabLatentGuidance(LabPrior, StableDiffusionGuidance):
    @dataclass
    class Config(LabPriorConfig, StableDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = ""
        """A folder with the lab's fitted ``vae/`` and SD's ``scheduler/`` (``lab.latent_vae``)."""
        variant: Optional[str] = None
        render_resolution: int = 64

    cfg: Config

    MODEL_LABEL = "analytic lab denoiser in the lab VAE's latent space"
    HOW_TO_GET = (
        "Fit the lab VAE once with `python -m threestudio_stabledreamer.lab.latent_vae --out DIR` "
        "and set pretrained_model_name_or_path to DIR."
    )

    def _load_models(self) -> None:
        self._load_vae()
        self._load_lab_prior(self._scheduler().alphas_cumprod.to(self.device))

    def _encode_references(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's posterior mean (not a sample: the prior's atoms are fixed points)."""
        size = (self.cfg.render_resolution, self.cfg.render_resolution)
        image = F.interpolate(images, size, mode="bilinear", align_corners=False)
        posterior = self.vae.encode((image * 2.0 - 1.0).to(self.weights_dtype)).latent_dist
        return (posterior.mode() * self.scaling_factor).to(images.dtype)


def view_bins(prompt_utils, elevation: torch.Tensor, azimuth: torch.Tensor, camera_distances: torch.Tensor) -> torch.Tensor:
    """Index of the view-dependent prompt per camera [B] (degrees), by threestudio's rule:
    the last of ``prompt_utils.directions`` whose condition holds."""
    indices = torch.zeros_like(elevation, dtype=torch.long)
    for direction in prompt_utils.directions:
        indices[direction.condition(elevation, azimuth, camera_distances)] = prompt_utils.direction2idx[direction.name]
    return indices

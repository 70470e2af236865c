"""Score-distillation guidance: DeepFloyd IF (pixel space) and Stable Diffusion (latent
space), as SDS, and ProlificDreamer's VSD on Stable Diffusion.

Importing this package registers ``stabledreamer-deep-floyd-guidance``,
``stabledreamer-stable-diffusion-guidance``, ``stabledreamer-vsd-guidance`` and the
lab's ``stabledreamer-lab-guidance`` and ``stabledreamer-lab-latent-guidance`` (an exact
denoiser over renders of a known object, in pixel and in latent space, see ``lab``) with
threestudio.
"""

from .base import DiffusionModelUnavailableError, ScoreDistillationGuidance
from .deep_floyd import DeepFloydGuidance
from .lab import LabGuidance, LabLatentGuidance
from .stable_diffusion import StableDiffusionGuidance
from .vsd import VSDGuidance

__all__ = [
    "DiffusionModelUnavailableError",
    "ScoreDistillationGuidance",
    "DeepFloydGuidance",
    "LabGuidance",
    "LabLatentGuidance",
    "StableDiffusionGuidance",
    "VSDGuidance",
]

"""Score-distillation guidance: DeepFloyd IF (pixel space) and Stable Diffusion (latent space).

Importing this package registers ``stabledreamer-deep-floyd-guidance`` and
``stabledreamer-stable-diffusion-guidance`` with threestudio.
"""

from .base import DiffusionModelUnavailableError, ScoreDistillationGuidance
from .deep_floyd import DeepFloydGuidance
from .stable_diffusion import StableDiffusionGuidance

__all__ = [
    "DiffusionModelUnavailableError",
    "ScoreDistillationGuidance",
    "DeepFloydGuidance",
    "StableDiffusionGuidance",
]

"""A multi-face (Janus) indicator: does CLIP see the side of the object the camera is on?

For each test view of a run, CLIP classifies the view zero-shot among the run's prompt
with threestudio's view-dependent suffixes, ``"<prompt>, front view"``, ``"<prompt>, side
view"`` and ``"<prompt>, back view"`` (the highest cosine similarity wins; a tie goes to
the earlier of front, side, back). The expected class is the camera's azimuth bin, with
threestudio's view-dependent prompting thresholds (``PromptProcessor``'s defaults,
``front_threshold = back_threshold = 45``):

- azimuth shifted to [-180, 180): ``a = (azimuth + 180) mod 360 - 180`` (degrees);
- front when -45 < a < 45, back when a > 135 or a < -135, side otherwise (a = +-45 and
  +-135 exactly are side, as in threestudio, whose conditions are strict).

Test cameras follow threestudio's test split of ``RandomCameraDataset``: ``n`` views at
azimuths ``linspace(0, 360, n)`` degrees (view 0 and view n-1 both at the front), at the
evaluation elevation (15 degrees by default, below the 60-degree overhead threshold, so no
view is overhead).

Reported per run:
- view agreement: the fraction of views whose CLIP class equals their azimuth bin;
- back-as-front share: the fraction of back-bin views that CLIP classifies as front (None
  when the run has no back view). A Janus object shows a front face from behind, so this
  share rises; a consistent object keeps it near the rate at which CLIP confuses an honest
  back view with a front one.

What it can detect: a second face (or front-looking geometry) visible from the back or
the sides, as a drop in agreement and a rise in the back-as-front share. What it cannot:
objects without a recognisable front (a vase, a hamburger), where CLIP's view classes are
near chance; a Janus face the renders hide; duplicated parts other than the front; and it
inherits CLIP's weakness at view classification, so absolute values vary with the prompt
and the CLIP model. Compare methods on the same prompts and CLIP model, not runs across
prompts, and confirm a low score in the turntable video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .metrics import normalise

VIEW_CLASSES = ("front", "side", "back")
FRONT_THRESHOLD_DEG = 45.0
BACK_THRESHOLD_DEG = 45.0


def view_prompts(prompt: str) -> list[str]:
    """threestudio's view-dependent prompts (``view_dependent_prompt_front: false``), in
    ``VIEW_CLASSES`` order."""
    return [f"{prompt}, {name} view" for name in VIEW_CLASSES]


def shift_azimuth_deg(azimuth_deg: np.ndarray) -> np.ndarray:
    """Degrees to [-180, 180)."""
    return (np.asarray(azimuth_deg, dtype=np.float64) + 180.0) % 360.0 - 180.0


def azimuth_bins(
    azimuth_deg: Sequence[float],
    front_threshold: float = FRONT_THRESHOLD_DEG,
    back_threshold: float = BACK_THRESHOLD_DEG,
) -> list[str]:
    """The view class ("front", "side", "back") of each azimuth (degrees)."""
    shifted = shift_azimuth_deg(azimuth_deg)
    bins = []
    for a in np.atleast_1d(shifted):
        if -front_threshold < a < front_threshold:
            bins.append("front")
        elif a > 180.0 - back_threshold or a < -180.0 + back_threshold:
            bins.append("back")
        else:
            bins.append("side")
    return bins


def turntable_azimuths(num_views: int) -> np.ndarray:
    """Azimuths (degrees) of threestudio's ``num_views`` test cameras: linspace(0, 360, n)."""
    if num_views < 1:
        raise ValueError(f"num_views: expected at least 1 test view, got {num_views}")
    return np.linspace(0.0, 360.0, num_views)


def classify_views(image_embeds: torch.Tensor, view_text_embeds: torch.Tensor) -> list[str]:
    """CLIP's class of each view: image_embeds [V, D], view_text_embeds [3, D] in
    ``VIEW_CLASSES`` order -> V class names (argmax of cosine similarity)."""
    if view_text_embeds.shape[0] != len(VIEW_CLASSES):
        raise ValueError(
            f"view_text_embeds: expected {len(VIEW_CLASSES)} rows ({', '.join(VIEW_CLASSES)}), "
            f"got {view_text_embeds.shape[0]}"
        )
    similarity = normalise(image_embeds) @ normalise(view_text_embeds).T
    return [VIEW_CLASSES[int(i)] for i in similarity.argmax(dim=1)]


@dataclass
class ViewAgreement:
    azimuth_deg: list[float]
    expected: list[str]
    predicted: list[str]

    @property
    def agreement(self) -> float:
        return sum(e == p for e, p in zip(self.expected, self.predicted)) / len(self.expected)

    @property
    def back_as_front(self) -> float | None:
        back = [p for e, p in zip(self.expected, self.predicted) if e == "back"]
        return None if not back else sum(p == "front" for p in back) / len(back)


def view_agreement(
    image_embeds: torch.Tensor, view_text_embeds: torch.Tensor, azimuth_deg: Sequence[float]
) -> ViewAgreement:
    """Compare CLIP's class of each view with the class of its camera's azimuth."""
    if image_embeds.shape[0] != len(azimuth_deg):
        raise ValueError(
            f"azimuth_deg: {len(azimuth_deg)} azimuths for {image_embeds.shape[0]} views"
        )
    return ViewAgreement(
        azimuth_deg=[float(a) for a in azimuth_deg],
        expected=azimuth_bins(azimuth_deg),
        predicted=classify_views(image_embeds, view_text_embeds),
    )

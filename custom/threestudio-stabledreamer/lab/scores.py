"""Scores of a result (Gaussians from an exported PLY or a checkpoint) against the ground truth.

All scores use held-out cameras (``EvalCameras``): an orbit of ``num_azimuths`` azimuths
at each of ``elevations`` (degrees), at ``distance`` with vertical field of view
``fovy_deg``, rendered at ``resolution`` over a white background, RGB in [0, 1].

- ``psnr``: 10 log10(1 / MSE) in dB, with the MSE pooled over all views (a per-view
  average of PSNRs would let a few perfect views hide wrong ones); ``per_view_psnr`` lists
  each view's;
- ``ssim``: torchmetrics' SSIM (11x11 Gaussian window, sigma 1.5), averaged over views;
- ``iou``: silhouette IoU of the alpha masks thresholded at 0.5, pooled over views;
- ``multi_face``: how much of the object's front shows up in its back views. For each
  held-out camera in the back bin (azimuth within ``back_threshold`` of 180 degrees), let
  G be the ground truth seen from it, F the ground truth seen from the camera turned by
  180 degrees about z (the front, framed like this back view) and R the result. On the
  pixels where F and G differ (||F - G|| > ``difference_threshold``, RGB), the fraction is
  the least-squares coefficient r = <R - G, F - G> / ||F - G||^2: 0 when R shows the true
  back, 1 when it shows the front; it is clipped to [0, 1] per view and averaged.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from .objects import GaussianObject
from .render import Render, orbit, render_object, render_ply_params, turn_about_z


@dataclass(frozen=True)
class EvalCameras:
    elevations: Sequence[float] = (0.0, 15.0, 30.0)
    num_azimuths: int = 24
    distance: float = 1.75
    fovy_deg: float = 45.0
    resolution: int = 64
    back_threshold: float = 45.0
    difference_threshold: float = 0.25

    def cameras(self):
        """(c2w [V,4,4], fovy [V] radians, elevation [V], azimuth [V] degrees)."""
        c2w, elevation, azimuth = orbit(self.elevations, self.num_azimuths, self.distance)
        fovy = torch.full_like(azimuth, math.radians(self.fovy_deg))
        return c2w, fovy, elevation, azimuth


def psnr_per_view(result: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per view [V] of RGB images [V,H,W,3] in [0, 1]."""
    mse = ((result - truth) ** 2).flatten(1).mean(-1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


def ssim_per_view(result: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """SSIM per view [V] of RGB images [V,H,W,3] in [0, 1]."""
    return structural_similarity_index_measure(
        result.permute(0, 3, 1, 2).clamp(0, 1), truth.permute(0, 3, 1, 2), data_range=1.0, reduction="none"
    )


def silhouette_iou(result_alpha: torch.Tensor, truth_alpha: torch.Tensor, threshold: float = 0.5) -> float:
    """IoU of the masks alpha > threshold, pooled over all views."""
    a, b = result_alpha > threshold, truth_alpha > threshold
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else 1.0


def front_on_back_fraction(result: torch.Tensor, back: torch.Tensor, front: torch.Tensor,
                           difference_threshold: float) -> torch.Tensor:
    """Per view [V]: the clipped coefficient r of ``front - back`` in ``result - back``
    on the pixels where front and back differ (NaN for a view without such pixels)."""
    difference = front - back
    mask = (difference.norm(dim=-1, keepdim=True) > difference_threshold).float()
    numerator = ((result - back) * difference * mask).flatten(1).sum(-1)
    denominator = ((difference**2) * mask).flatten(1).sum(-1)
    fraction = numerator / denominator.clamp_min(1e-12)
    return torch.where(denominator > 0, fraction.clamp(0.0, 1.0), torch.full_like(fraction, float("nan")))


@dataclass
class GroundTruthViews:
    """The ground truth at the held-out cameras, and its front turned to face the back cameras."""

    truth: Render
    turned: Render
    elevation: torch.Tensor
    azimuth: torch.Tensor
    back: torch.Tensor

    @classmethod
    def of(cls, obj: GaussianObject, cameras: EvalCameras) -> "GroundTruthViews":
        c2w, fovy, elevation, azimuth = cameras.cameras()
        size = cameras.resolution
        turned_c2w = turn_about_z(c2w, torch.tensor([180.0]))[:, 0]
        shifted = (azimuth + 180.0) % 360.0 - 180.0
        back = shifted.abs() > 180.0 - cameras.back_threshold
        return cls(render_object(obj, c2w, fovy, size, size), render_object(obj, turned_c2w, fovy, size, size),
                   elevation, azimuth, back)


def score_render(result: Render, gt: GroundTruthViews, cameras: EvalCameras) -> Dict[str, object]:
    """Scores of a result rendered at ``cameras`` (see the module docstring); ``per_view_psnr``
    is a list over views in the order of ``gt.azimuth``."""
    psnr = psnr_per_view(result.rgb, gt.truth.rgb)
    pooled_mse = float(((result.rgb - gt.truth.rgb) ** 2).mean().clamp_min(1e-12))
    fractions = front_on_back_fraction(result.rgb[gt.back], gt.truth.rgb[gt.back], gt.turned.rgb[gt.back],
                                       cameras.difference_threshold)
    return {
        "psnr": -10.0 * math.log10(pooled_mse),
        "ssim": float(ssim_per_view(result.rgb, gt.truth.rgb).mean()),
        "iou": silhouette_iou(result.alpha, gt.truth.alpha),
        "multi_face": float(fractions.nanmean()),
        "per_view_psnr": psnr.tolist(),
    }


def score_object(obj: GaussianObject, gt: GroundTruthViews, cameras: EvalCameras) -> Dict[str, object]:
    """Scores of Gaussians given as a ``GaussianObject`` (e.g. a constructed case)."""
    c2w, fovy, _, _ = cameras.cameras()
    return score_render(render_object(obj, c2w, fovy, cameras.resolution, cameras.resolution), gt, cameras)


def score_params(params: Dict[str, torch.Tensor], gt: GroundTruthViews, cameras: EvalCameras) -> Dict[str, object]:
    """Scores of Gaussians given pre-activation, as read from a 3DGS PLY or a checkpoint."""
    c2w, fovy, _, _ = cameras.cameras()
    return score_render(render_ply_params(params, c2w, fovy, cameras.resolution, cameras.resolution), gt, cameras)


SCORE_NAMES: List[str] = ["psnr", "ssim", "iou", "multi_face"]

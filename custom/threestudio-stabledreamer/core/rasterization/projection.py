"""Projection of 3D Gaussians to 2D screen-space Gaussians (EWA splatting).

Follows the reference 3DGS rasterizer: Gaussians whose view-space depth is at most the
near plane are culled; the projection is linearised at the Gaussian's mean (clamped to
1.3 tan(fov/2) * z so that Gaussians far outside the view do not blow up); a low-pass
filter adds ``LOW_PASS_VARIANCE`` pixels^2 to the diagonal of the 2D covariance; the
screen radius is ceil(3 sqrt(largest eigenvalue)) pixels. Pixel centres are at integer
coordinates (see ``cameras``).
"""
from typing import NamedTuple

import torch

from ..sh import eval_sh
from .cameras import camera_centers, tan_half_fov

NEAR_PLANE = 0.2
LOW_PASS_VARIANCE = 0.3
JACOBIAN_CLAMP = 1.3
MIN_EIGENVALUE_GAP = 0.1


class ProjectedGaussians(NamedTuple):
    """Screen-space Gaussians per view; Gaussians with ``radii == 0`` are not rendered.

    means2d [B,N,2] pixels (x right, y down, integer pixel centres); conics [B,N,3] the
    upper triangle (a, b, c) of the inverse 2D covariance; depths [B,N] view-space z;
    radii [B,N] int64 pixels.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor


def project_gaussians(means: torch.Tensor, covariances: torch.Tensor, viewmats: torch.Tensor,
                      Ks: torch.Tensor, width: int, height: int,
                      near_plane: float = NEAR_PLANE) -> ProjectedGaussians:
    """Project Gaussians (means [N,3], world covariances [N,3,3]) into B views.

    ``viewmats`` [B,4,4] are OpenCV world-to-camera matrices, ``Ks`` [B,3,3] centred
    intrinsics (principal point at (W/2, H/2) in the continuous convention).
    """
    rotation = viewmats[:, None, :3, :3]
    cam = (rotation @ means[None, :, :, None]).squeeze(-1) + viewmats[:, None, :3, 3]
    x, y, z = cam.unbind(-1)
    in_front = z > near_plane
    z_safe = torch.where(in_front, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = tan_half_fov(Ks, height, width)
    lim_x = (JACOBIAN_CLAMP * tan_x)[:, None]
    lim_y = (JACOBIAN_CLAMP * tan_y)[:, None]
    tx = torch.clamp(x / z_safe, -lim_x, lim_x) * z_safe
    ty = torch.clamp(y / z_safe, -lim_y, lim_y) * z_safe
    zeros = torch.zeros_like(z_safe)
    jacobian = torch.stack([
        fx / z_safe, zeros, -fx * tx / z_safe ** 2,
        zeros, fy / z_safe, -fy * ty / z_safe ** 2,
    ], dim=-1).reshape(*z.shape, 2, 3)
    cov_cam = rotation @ covariances[None] @ rotation.transpose(-1, -2)
    cov2d = jacobian @ cov_cam @ jacobian.transpose(-1, -2)
    a = cov2d[..., 0, 0] + LOW_PASS_VARIANCE
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + LOW_PASS_VARIANCE
    det = a * c - b * b
    valid = in_front & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    mid = 0.5 * (a + c)
    largest = mid + torch.sqrt(torch.clamp(mid * mid - det, min=MIN_EIGENVALUE_GAP))
    radii = torch.ceil(3.0 * torch.sqrt(largest.detach().clamp(min=0.0))).long()
    radii = torch.where(valid, radii, torch.zeros_like(radii))

    means2d = torch.stack([fx * x / z_safe + cx - 0.5, fy * y / z_safe + cy - 0.5], dim=-1)
    return ProjectedGaussians(means2d, conics, z, radii)


def sh_colors(sh_coefficients: torch.Tensor, sh_degree: int, means: torch.Tensor,
              viewmats: torch.Tensor) -> torch.Tensor:
    """View-dependent RGB [B,N,3] of SH coefficients [N,K,3] for each of B cameras.

    The SH direction is the unit vector from the camera centre to the Gaussian's mean;
    colour = SH + 0.5, clamped at 0 (the reference rasterizer's rule).
    """
    directions = means[None] - camera_centers(viewmats)[:, None]
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    coefficients = sh_coefficients[None].expand(viewmats.shape[0], *sh_coefficients.shape)
    return torch.clamp(eval_sh(coefficients, directions, sh_degree) + 0.5, min=0.0)


def normals_facing_camera(normals: torch.Tensor, means: torch.Tensor,
                          viewmats: torch.Tensor) -> torch.Tensor:
    """World normals [B,N,3]: ``normals`` [N,3] flipped where they point away from a camera."""
    to_camera = camera_centers(viewmats)[:, None] - means[None]
    facing = (normals[None] * to_camera).sum(-1, keepdim=True)
    return torch.where(facing < 0, -normals[None], normals[None].expand_as(to_camera))

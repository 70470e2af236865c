"""Cameras and renders of the lab's Gaussians with the project's rasterizer (``core.rasterization``).

Cameras follow threestudio's random-camera datamodule: world z-up; a camera at elevation
e, azimuth a (degrees, azimuth 0 on +x, growing towards +y) and distance d sits at
``d (cos e cos a, cos e sin a, sin e)`` and looks at the origin; ``c2w`` [B,4,4] is the
OpenGL camera-to-world matrix (columns right, up, backward, position) and ``fovy`` [B]
the vertical field of view in radians. Turning a camera by ``delta`` degrees about the
world z axis (``turn_about_z``) shows the object turned by ``-delta``: that is how the
lab's references of "the object from another azimuth, framed like this view" are made.
"""
import math
from typing import NamedTuple, Sequence

import torch

from ..core.rasterization import intrinsics_from_fovy, opengl_c2w_to_viewmats, rasterize_gaussians
from ..core.sh import num_sh_coefficients
from .objects import GaussianObject

NEAR_PLANE = 0.2  # as stabledreamer-gaussian-rasterizer's default


class Render(NamedTuple):
    """rgb [B,H,W,3] composited over the background, alpha [B,H,W,1]."""

    rgb: torch.Tensor
    alpha: torch.Tensor


def look_at_origin(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """OpenGL c2w [B,4,4] of cameras at the given spherical positions, looking at the origin, z up."""
    elevation, azimuth = torch.deg2rad(elevation_deg.float()), torch.deg2rad(azimuth_deg.float())
    position = torch.stack(
        [elevation.cos() * azimuth.cos(), elevation.cos() * azimuth.sin(), elevation.sin()], dim=-1
    ) * distance.float()[:, None]
    lookat = torch.nn.functional.normalize(-position, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0]).expand_as(position)
    right = torch.nn.functional.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    true_up = torch.cross(right, lookat, dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4)
    c2w[:, :3, :3] = torch.stack([right, true_up, -lookat], dim=-1)
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def turn_about_z(c2w: torch.Tensor, delta_deg: torch.Tensor) -> torch.Tensor:
    """Cameras [B,K,4,4]: each c2w [B,4,4] turned by each angle of ``delta_deg`` [K] about world z."""
    angle = torch.deg2rad(delta_deg.to(c2w))
    rotation = torch.zeros(angle.shape[0], 4, 4, dtype=c2w.dtype, device=c2w.device)
    rotation[:, 0, 0], rotation[:, 0, 1] = angle.cos(), -angle.sin()
    rotation[:, 1, 0], rotation[:, 1, 1] = angle.sin(), angle.cos()
    rotation[:, 2, 2] = rotation[:, 3, 3] = 1.0
    return rotation[None] @ c2w[:, None]


def orbit(elevations_deg: Sequence[float], num_azimuths: int, distance: float) -> tuple:
    """Held-out cameras: ``num_azimuths`` azimuths in [0, 360) at each elevation.

    Returns (c2w [V,4,4], elevation [V], azimuth [V]) in degrees.
    """
    azimuth = torch.arange(num_azimuths, dtype=torch.float32) * (360.0 / num_azimuths)
    elevation = torch.tensor([float(e) for e in elevations_deg]).repeat_interleave(num_azimuths)
    azimuth = azimuth.repeat(len(elevations_deg))
    return look_at_origin(elevation, azimuth, torch.full_like(azimuth, distance)), elevation, azimuth


def render_object(obj: GaussianObject, c2w: torch.Tensor, fovy: torch.Tensor, height: int, width: int,
                  background: Sequence[float] = (1.0, 1.0, 1.0)) -> Render:
    """Render the ground truth at cameras c2w [B,4,4] with vertical fields of view fovy [B] (radians)."""
    return _render(obj.means, obj.quats, obj.scales, obj.opacities, c2w, fovy, height, width, background,
                   colors=obj.colors)


def render_ply_params(params: dict, c2w: torch.Tensor, fovy: torch.Tensor, height: int, width: int,
                      background: Sequence[float] = (1.0, 1.0, 1.0)) -> Render:
    """Render Gaussians given pre-activation as in a 3DGS PLY (``core.ply`` keys), as the
    training renderer does: exp scales, normalised quaternions, sigmoid opacities, SH colour."""
    coefficients = torch.cat([params["sh_dc"], params["sh_rest"]], dim=1)
    degree = round(math.sqrt(coefficients.shape[1])) - 1
    if num_sh_coefficients(degree) != coefficients.shape[1]:
        raise ValueError(f"SH coefficients: {coefficients.shape[1]} per channel is not (degree + 1)^2")
    scales = params["log_scales"].exp().expand(-1, 3)
    quats = torch.nn.functional.normalize(params["rotations"], dim=-1)
    opacities = torch.sigmoid(params["opacity_logits"]).reshape(-1)
    return _render(params["means"], quats, scales, opacities, c2w, fovy, height, width, background,
                   sh_coefficients=coefficients, sh_degree=degree)


@torch.no_grad()
def _render(means, quats, scales, opacities, c2w, fovy, height, width, background, **colour) -> Render:
    viewmats = opengl_c2w_to_viewmats(c2w.to(means))
    Ks = intrinsics_from_fovy(fovy.to(means), height, width)
    out = rasterize_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height,
                              near_plane=NEAR_PLANE, **colour)
    background = torch.as_tensor(background, dtype=means.dtype, device=means.device)
    return Render(out.colors + (1.0 - out.alphas) * background, out.alphas)

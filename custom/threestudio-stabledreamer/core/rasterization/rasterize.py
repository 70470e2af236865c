"""``rasterize_gaussians``: 3D Gaussians and cameras in, images and screen-space data out.

Pure PyTorch (CPU or GPU), differentiable by autograd: project -> bin into tiles ->
composite front to back. Conventions: see ``cameras`` (OpenCV world-to-camera matrices,
centred intrinsics, integer pixel centres) and ``compositing`` (the reference
rasterizer's alpha and termination rules).
"""
from typing import NamedTuple, Optional

import torch

from ..gaussians import covariance_from_scale_rotation
from .compositing import DEFAULT_CHUNK_ELEMENTS, composite_dense, composite_tiles
from .projection import NEAR_PLANE, normals_facing_camera, project_gaussians, sh_colors
from .tiles import TILE_SIZE, bin_gaussians, tile_rectangles, touched_tile_counts

BLOCK_SIZE = 8


class RasterizationOutput(NamedTuple):
    """Rendered views and per-Gaussian screen-space data.

    colors [B,H,W,3] alpha-premultiplied (no background); alphas [B,H,W,1] opacity;
    depths [B,H,W,1] alpha-weighted view-space z, ``sum(w_i z_i)`` (not normalised by the
    opacity); normals [B,H,W,3] alpha-weighted world normals facing the camera (None if
    no normals were given); means2d [B,N,2] projected means in pixels (integer pixel
    centres; None from the diff-gaussian-rasterization backend, which does not expose
    them); radii [B,N] int64 (0 = not
    rendered); viewspace_points [B,N,2] a zero leaf tensor added to the projected means
    scaled by (W/2, H/2), so after backward its ``.grad`` is dL/d(NDC) = dL/d(pixel) *
    (W/2, H/2), the reference rasterizer's ``means2D`` gradient.
    """

    colors: torch.Tensor
    alphas: torch.Tensor
    depths: torch.Tensor
    normals: Optional[torch.Tensor]
    means2d: torch.Tensor
    radii: torch.Tensor
    viewspace_points: torch.Tensor


def rasterize_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                        opacities: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                        width: int, height: int, *,
                        sh_coefficients: Optional[torch.Tensor] = None, sh_degree: int = 0,
                        colors: Optional[torch.Tensor] = None,
                        normals: Optional[torch.Tensor] = None,
                        scale_modifier: float = 1.0, near_plane: float = NEAR_PLANE,
                        tile_size: int = TILE_SIZE, block_size: int = BLOCK_SIZE,
                        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                        dense: bool = False) -> RasterizationOutput:
    """Render N Gaussians into B views.

    means [N,3] world; quats [N,4] wxyz; scales [N,3] standard deviations (world units,
    multiplied by ``scale_modifier``); opacities [N] or [N,1] in [0,1]; viewmats [B,4,4]
    OpenCV world-to-camera; Ks [B,3,3] centred intrinsics. Colour comes from exactly one
    of ``sh_coefficients`` [N,K,3] (evaluated up to ``sh_degree``) or ``colors`` [N,3] /
    [B,N,3]. ``tile_size`` sets the reference binning (which pixels a Gaussian can
    touch); ``block_size`` (a divisor of it) the granularity of the work, see ``tiles``.
    ``dense=True`` uses the untiled N x H x W evaluation (same result; slow).
    """
    num_gaussians = _check_inputs(means, quats, scales, opacities, viewmats, Ks, width, height,
                                  sh_coefficients, sh_degree, colors, normals, tile_size)
    num_views = viewmats.shape[0]
    opacities = opacities.reshape(num_gaussians)
    covariances = covariance_from_scale_rotation(scales * scale_modifier, quats)
    projected = project_gaussians(means, covariances, viewmats, Ks, width, height, near_plane)

    rect = tile_rectangles(projected.means2d, projected.radii, width, height, tile_size)
    radii = torch.where(touched_tile_counts(rect) > 0, projected.radii,
                        torch.zeros_like(projected.radii))

    if colors is None:
        colors = sh_colors(sh_coefficients, sh_degree, means, viewmats)
    elif colors.ndim == 2:
        colors = colors[None].expand(num_views, num_gaussians, 3)
    features = [colors, projected.depths[..., None]]
    if normals is not None:
        features.append(normals_facing_camera(normals, means, viewmats))
    features = torch.cat(features, dim=-1)

    viewspace_points = torch.zeros(num_views, num_gaussians, 2, dtype=means.dtype,
                                   device=means.device, requires_grad=True)
    ndc_to_pixel = means.new_tensor([width / 2.0, height / 2.0])
    means2d = projected.means2d + viewspace_points * ndc_to_pixel
    view_opacities = opacities[None].expand(num_views, num_gaussians)

    if dense:
        image, alpha = composite_dense(means2d, projected.conics, view_opacities, features,
                                       radii, projected.depths, width, height, tile_size)
    else:
        extents = visible_extents(projected.conics, view_opacities)
        bins = bin_gaussians(means2d, radii, projected.depths, width, height, tile_size,
                             extents, block_size)
        image, alpha = composite_tiles(means2d, projected.conics, view_opacities, features,
                                       bins, width, height, chunk_elements)
    return RasterizationOutput(
        colors=image[..., :3],
        alphas=alpha,
        depths=image[..., 3:4],
        normals=image[..., 4:7] if normals is not None else None,
        means2d=projected.means2d,
        radii=radii,
        viewspace_points=viewspace_points,
    )


def visible_extents(conics: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """Half-widths [B,N,2] (pixels) of the box outside which alpha < 1/255.

    ``opacity exp(-0.5 d^T C d) >= 1/255`` is the ellipse ``d^T C d <= 2 ln(255 opacity)``
    whose bounding box has half-widths ``sqrt(level * (C^-1)_xx)``, ``sqrt(level *
    (C^-1)_yy)``. -1 where the Gaussian can never reach the threshold.
    """
    a, b, c = conics.detach().unbind(-1)
    level = 2.0 * torch.log(255.0 * opacities.detach().clamp(min=1e-30))
    det = (a * c - b * b).clamp(min=1e-30)
    half = torch.sqrt(level.clamp(min=0.0)[..., None] * torch.stack([c / det, a / det], dim=-1))
    return torch.where(level[..., None] > 0, half, -torch.ones_like(half))


def _check_inputs(means, quats, scales, opacities, viewmats, Ks, width, height,
                  sh_coefficients, sh_degree, colors, normals, tile_size) -> int:
    """Validate shapes; returns N. Raises ValueError naming the offending argument."""
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must have shape [N,3], got {tuple(means.shape)}")
    n = means.shape[0]
    expected = {"quats": (quats, (n, 4)), "scales": (scales, (n, 3))}
    if normals is not None:
        expected["normals"] = (normals, (n, 3))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(tensor.shape)}")
    if tuple(opacities.shape) not in ((n,), (n, 1)):
        raise ValueError(f"opacities must have shape [N] or [N,1] with N={n}, got {tuple(opacities.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must have shape [B,4,4], got {tuple(viewmats.shape)}")
    if tuple(Ks.shape) != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must have shape [{viewmats.shape[0]},3,3], got {tuple(Ks.shape)}")
    for name, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if int(value) != value or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if (sh_coefficients is None) == (colors is None):
        raise ValueError("exactly one of sh_coefficients and colors must be given")
    if sh_coefficients is not None and (sh_coefficients.ndim != 3 or sh_coefficients.shape[0] != n
                                        or sh_coefficients.shape[2] != 3):
        raise ValueError(f"sh_coefficients must have shape [N,K,3] with N={n}, got "
                         f"{tuple(sh_coefficients.shape)}")
    if sh_coefficients is not None and sh_coefficients.shape[1] < (sh_degree + 1) ** 2:
        raise ValueError(f"sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} sh_coefficients per "
                         f"Gaussian, got {sh_coefficients.shape[1]}")
    if colors is not None and tuple(colors.shape) not in ((n, 3), (viewmats.shape[0], n, 3)):
        raise ValueError(f"colors must have shape [N,3] or [B,N,3] with N={n}, got {tuple(colors.shape)}")
    return n

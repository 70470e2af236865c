"""A coloured triangle mesh from 3D Gaussians: marching cubes on their opacity field.

The opacity field of Gaussians with centres ``mu_i``, covariances ``Sigma_i`` and opacities
``o_i`` (after the sigmoid) is

    F(x) = sum_i o_i exp(-0.5 (x - mu_i)^T Sigma_i^-1 (x - mu_i)),

each term cut off beyond ``cutoff_sigma`` Mahalanobis radii, as a rasterizer ignores a
Gaussian beyond its 3-sigma extent. The mesh is the iso-surface ``F = level``. For one
isotropic Gaussian of standard deviation ``s`` and opacity ``o > level`` that surface is
the sphere of radius ``s * sqrt(2 ln(o / level))``.

Units and frames: everything is in the Gaussians' world frame and units (threestudio's
z-up world); no axis conversion is applied for any file format. Grid samples sit on the
vertices of a regular lattice that includes both ends of the bounding box.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import mcubes
import numpy as np
import torch
from scipy.spatial import cKDTree

from .sh import sh_dc_to_rgb


@dataclass
class ExtractedMesh:
    """Triangle mesh: vertices [V,3] float32 (world units), faces [F,3] int64 (counter-
    clockwise seen from outside), vertex colours [V,3] float32 in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray


def gaussian_bounds(
    means: torch.Tensor, covariances: torch.Tensor, cutoff_sigma: float = 3.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned box [2 x (3,)] holding every Gaussian up to ``cutoff_sigma`` radii.

    The half-extent of a Gaussian along world axis k is ``cutoff_sigma * sqrt(Sigma_kk)``.
    """
    extent = cutoff_sigma * torch.diagonal(covariances, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    return (means - extent).amin(dim=0), (means + extent).amax(dim=0)


def opacity_field(
    means: torch.Tensor,
    covariances: torch.Tensor,
    opacities: torch.Tensor,
    bbox_min: torch.Tensor,
    bbox_max: torch.Tensor,
    resolution: int,
    cutoff_sigma: float = 3.0,
    max_samples_per_chunk: int = 1 << 22,
) -> torch.Tensor:
    """Sample the Gaussians' opacity field on a ``resolution^3`` lattice.

    Each Gaussian is evaluated only on the lattice samples inside its cutoff box, so the
    cost grows with the Gaussians' footprint, not with ``N * resolution^3``. Gaussians are
    sorted by box size and processed in chunks sharing one window shape, which bounds the
    memory to about ``max_samples_per_chunk`` floats per temporary.

    Args:
        means: [N,3] centres (world units).
        covariances: [N,3,3] world-space covariances (symmetric positive definite).
        opacities: [N] or [N,1] opacities in [0, 1] (after the sigmoid).
        bbox_min, bbox_max: [3] corners of the sampled box; sample ``(i, j, k)`` sits at
            ``bbox_min + (i, j, k) * (bbox_max - bbox_min) / (resolution - 1)``.
        resolution: samples per axis (>= 2).
        cutoff_sigma: a Gaussian contributes only where its Mahalanobis distance is at
            most this value.

    Returns:
        [resolution, resolution, resolution] float32 field indexed [x, y, z].
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    device = means.device
    means = means.detach().float()
    covariances = covariances.detach().float()
    opacities = opacities.detach().float().reshape(-1)
    bbox_min = torch.as_tensor(bbox_min, dtype=torch.float32, device=device)
    bbox_max = torch.as_tensor(bbox_max, dtype=torch.float32, device=device)
    if not bool((bbox_max > bbox_min).all()):
        raise ValueError(f"bbox_max {bbox_max.tolist()} must exceed bbox_min {bbox_min.tolist()}")

    field = torch.zeros(resolution**3, dtype=torch.float32, device=device)
    spacing = (bbox_max - bbox_min) / (resolution - 1)
    extent = cutoff_sigma * torch.diagonal(covariances, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    first = torch.ceil((means - extent - bbox_min) / spacing).long().clamp_min(0)
    last = torch.floor((means + extent - bbox_min) / spacing).long().clamp_max(resolution - 1)
    keep = (last >= first).all(dim=-1)
    if not bool(keep.any()):
        return field.reshape(resolution, resolution, resolution)
    window = last - first + 1
    # Chunks of Gaussians share one window shape; sorting by the largest window side and
    # sizing each chunk by its last (largest) member keeps chunk * window <= the budget.
    side = window.amax(dim=-1)
    order = torch.nonzero(keep).squeeze(1)
    order = order[torch.argsort(side[order])]
    sides = side[order].tolist()

    precision = torch.linalg.inv(covariances)
    # The six distinct entries of each symmetric precision matrix, off-diagonals doubled.
    quadratic = torch.stack(
        [precision[:, 0, 0], precision[:, 1, 1], precision[:, 2, 2],
         2 * precision[:, 0, 1], 2 * precision[:, 0, 2], 2 * precision[:, 1, 2]], dim=-1
    )

    start = 0
    while start < len(order):
        count = max(1, max_samples_per_chunk // sides[start] ** 3)
        while count > 1 and sides[min(start + count, len(order)) - 1] ** 3 * count > max_samples_per_chunk:
            count //= 2
        ids = order[start : start + count]
        start += len(ids)
        shape = window[ids].amax(dim=0)
        axes = [torch.arange(int(n), device=device) for n in shape]
        local = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        samples = first[ids, None, :] + local
        valid = (samples <= last[ids, None, :]).all(-1)
        d = bbox_min + samples * spacing - means[ids, None, :]
        q = quadratic[ids, None, :]
        mahalanobis = (
            q[..., 0] * d[..., 0] ** 2 + q[..., 1] * d[..., 1] ** 2 + q[..., 2] * d[..., 2] ** 2
            + q[..., 3] * d[..., 0] * d[..., 1] + q[..., 4] * d[..., 0] * d[..., 2]
            + q[..., 5] * d[..., 1] * d[..., 2]
        )
        valid &= mahalanobis <= cutoff_sigma**2
        values = opacities[ids, None] * torch.exp(-0.5 * mahalanobis)
        flat = (samples[..., 0] * resolution + samples[..., 1]) * resolution + samples[..., 2]
        field.index_add_(0, flat[valid], values[valid])
    return field.reshape(resolution, resolution, resolution)


def vertex_colors_from_gaussians(
    vertices: np.ndarray,
    means: torch.Tensor,
    covariances: torch.Tensor,
    opacities: torch.Tensor,
    sh_dc: torch.Tensor,
    k_nearest: int = 8,
) -> np.ndarray:
    """Colour [V,3] in [0,1] of each vertex from its ``k_nearest`` Gaussians (by centre).

    The view-independent (DC) colours of those Gaussians are averaged with weights equal to
    each one's opacity-field contribution at the vertex; a vertex where all of them
    contribute nothing (below float32 range) takes the colour of the nearest centre.
    """
    means_np = means.detach().float().cpu().numpy()
    rgb = sh_dc_to_rgb(sh_dc.detach().float().reshape(-1, 3)).clamp(0, 1).cpu().numpy()
    if len(vertices) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    k = min(k_nearest, len(means_np))
    _, neighbours = cKDTree(means_np).query(vertices, k=k)
    neighbours = neighbours.reshape(len(vertices), k)
    precisions = torch.linalg.inv(covariances.detach().float()).cpu().numpy()
    opacity = opacities.detach().float().reshape(-1).cpu().numpy()
    offsets = vertices[:, None, :] - means_np[neighbours]
    mahalanobis = np.einsum("vki,vkij,vkj->vk", offsets, precisions[neighbours], offsets)
    weights = opacity[neighbours] * np.exp(-0.5 * mahalanobis)
    total = weights.sum(axis=1, keepdims=True)
    nearest_only = np.zeros_like(weights)
    nearest_only[:, 0] = 1.0
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), nearest_only)
    return np.einsum("vk,vkc->vc", weights, rgb[neighbours]).astype(np.float32)


def extract_mesh(
    means: torch.Tensor,
    covariances: torch.Tensor,
    opacities: torch.Tensor,
    sh_dc: torch.Tensor,
    resolution: int = 128,
    level: float = 0.5,
    bbox: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    cutoff_sigma: float = 3.0,
    padding: float = 0.05,
    k_nearest: int = 8,
) -> ExtractedMesh:
    """Marching cubes on the opacity field at ``level``, with vertex colours.

    Args:
        means, covariances, opacities: as in :func:`opacity_field`.
        sh_dc: [N,1,3] or [N,3] DC spherical-harmonic coefficients (colour convention of
            ``core.sh``).
        resolution: lattice samples per axis.
        level: iso-value of the surface (the field is a sum of opacities, so 0.5 is
            "half-opaque").
        bbox: (min [3], max [3]) of the sampled box; default: the Gaussians' cutoff box
            (:func:`gaussian_bounds`) grown by ``padding`` of its size on each side so the
            surface closes.
    Returns:
        :class:`ExtractedMesh`; empty arrays when no sample exceeds ``level``.
    """
    if means.shape[0] == 0:
        raise ValueError("cannot extract a mesh from zero Gaussians")
    if bbox is None:
        lo, hi = gaussian_bounds(means.detach().float(), covariances.detach().float(), cutoff_sigma)
        margin = padding * (hi - lo).max()
        bbox = (lo - margin, hi + margin)
    bbox_min = torch.as_tensor(bbox[0], dtype=torch.float32, device=means.device)
    bbox_max = torch.as_tensor(bbox[1], dtype=torch.float32, device=means.device)
    field = opacity_field(
        means, covariances, opacities, bbox_min, bbox_max, resolution, cutoff_sigma
    ).cpu().numpy()
    if not (field > level).any():
        empty = np.zeros((0, 3), dtype=np.float32)
        return ExtractedMesh(empty, np.zeros((0, 3), dtype=np.int64), empty)
    lattice_vertices, faces = mcubes.marching_cubes(field.astype(np.float64), float(level))
    spacing = ((bbox_max - bbox_min) / (resolution - 1)).cpu().numpy()
    vertices = (bbox_min.cpu().numpy() + lattice_vertices * spacing).astype(np.float32)
    faces = _outward_faces(vertices, faces.astype(np.int64))
    colors = vertex_colors_from_gaussians(vertices, means, covariances, opacities, sh_dc, k_nearest)
    return ExtractedMesh(vertices, faces, colors)


def _outward_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces wound so the enclosed signed volume is positive (normals point outwards)."""
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    signed_volume = np.einsum("fi,fi->f", a, np.cross(b, c)).sum() / 6.0
    return faces[:, [0, 2, 1]] if signed_volume < 0 else faces


def save_mesh(path: Union[str, Path], mesh: ExtractedMesh) -> Path:
    """Write the mesh with per-vertex colours; the format follows the suffix (.obj, .glb,
    .ply, ... as trimesh supports). Returns the path."""
    import trimesh

    path = Path(path)
    colors = np.concatenate(
        [np.round(mesh.colors * 255), np.full((len(mesh.colors), 1), 255)], axis=1
    ).astype(np.uint8)
    tri = trimesh.Trimesh(
        vertices=mesh.vertices, faces=mesh.faces, vertex_colors=colors, process=False
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tri.export(path)
    return path

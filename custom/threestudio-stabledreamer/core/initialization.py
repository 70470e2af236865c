"""Initial Gaussians: random point sets, colours and neighbour-based scales.

Every function returns plain tensors. Parameters are stored pre-activation as 3DGS stores
them: log-scales, opacity logits, raw wxyz quaternions, SH coefficients (DC and rest).
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from .sh import num_sh_coefficients, rgb_to_sh_dc

GAUSSIAN_PARAMETER_NAMES = ("means", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest")
"""Names of the per-Gaussian tensors, row i of each describing Gaussian i."""

MIN_NEIGHBOUR_DISTANCE = 1e-7
"""Floor on neighbour distances (world units) so that coincident points get a finite log-scale."""


def sample_points_in_ball(count: int, radius: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``count`` points [count, 3] uniformly distributed (by volume) in a ball of ``radius`` at the origin."""
    _check_positive("count", count)
    _check_positive("radius", radius)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    # The radius of a uniform sample in a ball has density proportional to r^2: r = R u^(1/3).
    distances = radius * torch.rand(count, 1, generator=generator).pow(1.0 / 3.0)
    return directions * distances


def sample_points_in_box(count: int, half_extent: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``count`` points [count, 3] uniformly distributed in the cube [-half_extent, half_extent]^3."""
    _check_positive("count", count)
    _check_positive("half_extent", half_extent)
    return (torch.rand(count, 3, generator=generator) * 2.0 - 1.0) * half_extent


def mean_neighbour_distance(
    points: torch.Tensor, num_neighbours: int = 3, method: str = "auto", chunk_elements: int = 1 << 24
) -> torch.Tensor:
    """Mean Euclidean distance [N] from each point [N, 3] to its ``num_neighbours`` nearest others.

    ``method``: ``"kdtree"`` (scipy cKDTree on the CPU, all cores), ``"torch"`` (exact,
    chunked ``cdist`` + ``topk`` on the points' device, for GPU tensors) or ``"auto"``
    (kdtree for CPU tensors, torch otherwise); the torch path holds at most about
    ``chunk_elements`` pairwise distances at a time. With fewer than ``num_neighbours + 1``
    points every other point is used. Distances are floored at
    ``MIN_NEIGHBOUR_DISTANCE``.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")
    if points.shape[0] < 2:
        raise ValueError(f"neighbour distances need at least 2 points, got {points.shape[0]}")
    _check_positive("num_neighbours", num_neighbours)
    if method == "auto":
        method = "kdtree" if points.device.type == "cpu" else "torch"
    k = min(num_neighbours, points.shape[0] - 1)
    if method == "kdtree":
        cloud = points.detach().double().cpu().numpy()
        tree = cKDTree(cloud)
        # Querying in the tree's own point order keeps neighbouring queries close in
        # memory (about twice as fast as a random order); rows are put back afterwards.
        order = tree.indices
        distances = np.empty((cloud.shape[0], k + 1))
        distances[order] = tree.query(cloud[order], k=k + 1, workers=-1)[0]
        # Column 0 is the point itself (or a coincident twin, at the same distance 0).
        nearest = torch.from_numpy(distances[:, 1:]).to(points.device, points.dtype)
    elif method == "torch":
        nearest = _nearest_distances_chunked(points.detach(), k, chunk_elements)
    else:
        raise ValueError(f"method must be 'auto', 'kdtree' or 'torch', got {method!r}")
    return nearest.mean(dim=-1).clamp_min(MIN_NEIGHBOUR_DISTANCE)


def _nearest_distances_chunked(points: torch.Tensor, k: int, max_elements: int) -> torch.Tensor:
    """Distances [N, k] to the k nearest other points, in row chunks of bounded memory.

    ``cdist`` may use a matrix-product formula with cancellation error, so it only picks
    the neighbours; their distances are then recomputed from coordinate differences.
    """
    n = points.shape[0]
    rows_per_chunk = max(1, max_elements // n)
    chunks = []
    for start in range(0, n, rows_per_chunk):
        block = points[start:start + rows_per_chunk]
        distances = torch.cdist(block, points)
        rows = torch.arange(block.shape[0], device=points.device)
        distances[rows, rows + start] = float("inf")
        neighbours = distances.topk(k, dim=-1, largest=False).indices
        chunks.append((points[neighbours] - block.unsqueeze(1)).norm(dim=-1))
    return torch.cat(chunks)


def neighbour_log_scales(points: torch.Tensor, isotropic: bool = False, method: str = "auto") -> torch.Tensor:
    """Log-scales [N, 3] (or [N, 1] if ``isotropic``): log of the mean distance to the 3 nearest neighbours."""
    log_distance = mean_neighbour_distance(points, 3, method).log().unsqueeze(-1)
    return log_distance if isotropic else log_distance.expand(-1, 3).contiguous()


def random_colours(count: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``count`` RGB colours [count, 3] uniform in [0, 1]."""
    return torch.rand(count, 3, generator=generator)


def constant_colours(count: int, rgb: Sequence[float]) -> torch.Tensor:
    """``count`` copies [count, 3] of one RGB colour in [0, 1]."""
    colour = torch.as_tensor(rgb, dtype=torch.float32)
    if colour.shape != (3,) or not bool(((colour >= 0) & (colour <= 1)).all()):
        raise ValueError(f"constant colour must be 3 values in [0, 1], got {list(rgb)}")
    return colour.expand(count, 3).clone()


def opacity_logit(opacity: float) -> float:
    """Pre-sigmoid value of an opacity in (0, 1)."""
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")
    return math.log(opacity / (1.0 - opacity))


def gaussians_from_points(
    points: torch.Tensor,
    colours: torch.Tensor,
    opacity: float,
    sh_degree: int,
    isotropic: bool = False,
    neighbour_method: str = "auto",
) -> Dict[str, torch.Tensor]:
    """Per-Gaussian tensors (keys ``GAUSSIAN_PARAMETER_NAMES``) for points [N, 3] with RGB colours [N, 3].

    Scales come from neighbour distances, rotations are the identity (1, 0, 0, 0), every
    opacity is ``opacity``, the SH DC term reproduces the colour and higher bands are zero.
    """
    if colours.shape != points.shape:
        raise ValueError(f"colours must have the points' shape {tuple(points.shape)}, got {tuple(colours.shape)}")
    n = points.shape[0]
    rotations = torch.zeros(n, 4, dtype=points.dtype, device=points.device)
    rotations[:, 0] = 1.0
    return {
        "means": points.clone(),
        "log_scales": neighbour_log_scales(points, isotropic, neighbour_method),
        "rotations": rotations,
        "opacity_logits": torch.full((n, 1), opacity_logit(opacity), dtype=points.dtype, device=points.device),
        "sh_dc": rgb_to_sh_dc(colours).to(points).unsqueeze(1),
        "sh_rest": torch.zeros(n, num_sh_coefficients(sh_degree) - 1, 3, dtype=points.dtype, device=points.device),
    }


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")

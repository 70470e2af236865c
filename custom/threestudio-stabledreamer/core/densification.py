"""Adaptive density control of 3D Gaussians (clone, split, prune), as plain tensor functions.

Rules (3DGS, Kerbl et al. 2023):
- statistics: for every view in which a Gaussian is visible, the norm of the gradient of
  the loss w.r.t. its projected 2D centre (in the reference rasterizer's units: NDC
  gradient times W/2, H/2) is summed and the visible views counted; the maximum 2D
  radius (pixels) is tracked;
- Gaussians whose averaged gradient reaches the threshold are cloned (an identical copy)
  when their largest scale is at most the split limit, and split into ``n_split``
  samples drawn from the Gaussian, with scales divided by ``0.8 * n_split``, otherwise;
- Gaussians with low opacity, a large world-space scale or a large screen radius are
  pruned. A pruned Gaussian is never cloned or split.

A step is described by a :class:`DensityPlan`: the new tensors are the old rows
``source_index`` (survivors in their old order, then the clones' parents) followed by
the appended rows (split samples). Optimizer state follows the same plan.
"""
import math
from typing import Dict, NamedTuple, Optional, Tuple

import torch

from .gaussians import quaternion_to_rotation_matrix


class DensityPlan(NamedTuple):
    source_index: torch.Tensor
    """[M] long: old rows copied, in order, to the first M rows of the new tensors."""
    appended: Dict[str, torch.Tensor]
    """New rows appended after them, one tensor per parameter name."""
    num_cloned: int
    num_split: int
    """Number of parents split (each replaced by ``n_split`` samples)."""
    num_pruned: int


def accumulate_screen_statistics(
    grad_norm_sum: torch.Tensor,
    visible_count: torch.Tensor,
    max_radii: torch.Tensor,
    viewspace_grad: torch.Tensor,
    radii: torch.Tensor,
    visibility: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Updated (grad_norm_sum [N], visible_count [N], max_radii [N]) after a batch of B views.

    ``viewspace_grad`` [B, N, 2] is the screen-space positional gradient, ``radii`` [B, N]
    the 2D radii in pixels (0 = not rendered), ``visibility`` [B, N] bool. Views in which
    a Gaussian is not visible leave its statistics unchanged.
    """
    n = grad_norm_sum.shape[0]
    if viewspace_grad.ndim != 3 or tuple(viewspace_grad.shape[1:]) != (n, 2):
        raise ValueError(f"viewspace_grad must have shape [B, {n}, 2] (N={n} Gaussians), got {tuple(viewspace_grad.shape)}")
    b = viewspace_grad.shape[0]
    for name, tensor in (("radii", radii), ("visibility", visibility)):
        if tuple(tensor.shape) != (b, n):
            raise ValueError(f"{name} must have shape {(b, n)} (B views, N Gaussians), got {tuple(tensor.shape)}")
    visible = visibility.bool()
    norms = viewspace_grad.detach().norm(dim=-1).to(grad_norm_sum) * visible
    radii_seen = torch.where(visible, radii.detach().to(max_radii), torch.zeros_like(max_radii))
    return (
        grad_norm_sum + norms.sum(0),
        visible_count + visible.sum(0).to(visible_count),
        torch.maximum(max_radii, radii_seen.max(0).values),
    )


def average_gradients(grad_norm_sum: torch.Tensor, visible_count: torch.Tensor) -> torch.Tensor:
    """Mean screen-space gradient norm [N] over the views a Gaussian was visible in (0 if none)."""
    return grad_norm_sum / visible_count.clamp_min(1).to(grad_norm_sum)


def select_prune(
    opacities: torch.Tensor,
    max_scales: torch.Tensor,
    max_radii: torch.Tensor,
    min_opacity: float,
    max_world_scale: Optional[float],
    max_screen_radius: Optional[float],
) -> torch.Tensor:
    """Bool [N]: opacity [N] below ``min_opacity``, or largest scale [N] above ``max_world_scale``
    (world units), or max 2D radius [N] above ``max_screen_radius`` (pixels). ``None`` disables a rule."""
    prune = opacities < min_opacity
    if max_world_scale is not None:
        prune |= max_scales > max_world_scale
    if max_screen_radius is not None:
        prune |= max_radii > max_screen_radius
    return prune


def select_clone_and_split(
    avg_grad: torch.Tensor,
    max_scales: torch.Tensor,
    grad_threshold: float,
    split_scale: float,
    eligible: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(clone, split) bool [N]: eligible Gaussians with ``avg_grad >= grad_threshold``;
    clone if the largest scale is ``<= split_scale`` (world units), split otherwise."""
    grows = eligible & (avg_grad >= grad_threshold)
    small = max_scales <= split_scale
    return grows & small, grows & ~small


def limit_growth(
    clone: torch.Tensor, split: torch.Tensor, avg_grad: torch.Tensor, n_split: int, budget: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(clone, split) reduced so that the growth (1 per clone, ``n_split - 1`` per split) is
    at most ``budget``, keeping the candidates with the largest averaged gradients."""
    candidates = torch.nonzero(clone | split).squeeze(-1)
    growth = torch.where(split[candidates], n_split - 1, 1)
    if int(growth.sum()) <= budget:
        return clone, split
    order = avg_grad[candidates].argsort(descending=True, stable=True)
    kept = candidates[order][growth[order].cumsum(0) <= max(budget, 0)]
    keep = torch.zeros_like(clone)
    keep[kept] = True
    return clone & keep, split & keep


def sample_split_children(
    params: Dict[str, torch.Tensor], split: torch.Tensor, n_split: int, generator: Optional[torch.Generator] = None
) -> Dict[str, torch.Tensor]:
    """Rows of the ``n_split`` samples replacing each Gaussian selected by ``split`` [N].

    Centres are drawn from each parent's Gaussian N(mean, R diag(s)^2 R^T); log-scales are
    the parent's minus ``log(0.8 * n_split)``; the other parameters are copied. Rows are
    ordered sample-major: all parents' first samples, then all second samples, ...
    """
    if n_split < 2:
        raise ValueError(f"n_split must be at least 2, got {n_split}")
    parents = {name: tensor[split] for name, tensor in params.items()}
    children = {name: tensor.repeat(n_split, *([1] * (tensor.ndim - 1))) for name, tensor in parents.items()}
    scales = children["log_scales"].exp().expand(-1, 3)
    offsets = torch.randn(scales.shape, generator=generator, device=scales.device, dtype=scales.dtype) * scales
    rotation = quaternion_to_rotation_matrix(children["rotations"])
    children["means"] = children["means"] + (rotation @ offsets.unsqueeze(-1)).squeeze(-1)
    children["log_scales"] = children["log_scales"] - math.log(0.8 * n_split)
    return children


def plan_density_step(
    params: Dict[str, torch.Tensor],
    clone: torch.Tensor,
    split: torch.Tensor,
    prune: torch.Tensor,
    n_split: int,
    generator: Optional[torch.Generator] = None,
) -> DensityPlan:
    """Plan that keeps the Gaussians neither pruned nor split, appends a copy of each cloned one
    (after the survivors) and the samples of each split one (at the end)."""
    if bool((prune & (clone | split)).any()) or bool((clone & split).any()):
        raise ValueError("clone, split and prune selections must be disjoint")
    survivors = torch.nonzero(~(prune | split)).squeeze(-1)
    clones = torch.nonzero(clone).squeeze(-1)
    return DensityPlan(
        source_index=torch.cat([survivors, clones]),
        appended=sample_split_children(params, split, n_split, generator),
        num_cloned=int(clones.numel()),
        num_split=int(split.sum()),
        num_pruned=int(prune.sum()),
    )


def removal_plan(params: Dict[str, torch.Tensor], remove: torch.Tensor) -> DensityPlan:
    """Plan that only drops the rows selected by ``remove`` [N]."""
    return DensityPlan(
        source_index=torch.nonzero(~remove).squeeze(-1),
        appended={name: tensor[:0] for name, tensor in params.items()},
        num_cloned=0,
        num_split=0,
        num_pruned=int(remove.sum()),
    )


def gather_rows_and_append(tensor: torch.Tensor, index: torch.Tensor, appended: torch.Tensor) -> torch.Tensor:
    """``cat([tensor[index], appended])`` written into one new tensor (a single copy per row)."""
    out = tensor.new_empty((index.numel() + appended.shape[0], *tensor.shape[1:]))
    torch.index_select(tensor, 0, index, out=out[: index.numel()])
    out[index.numel():] = appended
    return out


def apply_plan(tensor: torch.Tensor, plan: DensityPlan, appended: torch.Tensor) -> torch.Tensor:
    """New rows of ``tensor``: ``tensor[plan.source_index]`` followed by ``appended``."""
    return gather_rows_and_append(tensor, plan.source_index, appended)

"""Binning of screen-space Gaussians into square tiles, as the reference rasterizer does.

Each rendered Gaussian affects every pixel of the ``tile_size`` tiles its 3-sigma box
``[mean - radius, mean + radius]`` touches (the reference semantics); within a tile the
Gaussians are ordered front to back by view-space depth.

For speed, work is organised in smaller square blocks (``block_size`` dividing
``tile_size``): a Gaussian is paired with the blocks that lie in its tiles *and* meet the
box where its alpha can reach the 1/255 threshold (``extents``). Blocks left out hold
only pixels where its alpha would be skipped anyway, so the image is unchanged while the
work shrinks to the Gaussian's visible footprint. Views are binned together: block ids
run over ``B * blocks_y * blocks_x`` in (view, row, column) order.
"""
from typing import NamedTuple, Optional

import torch

TILE_SIZE = 16
EXTENT_MARGIN = 1e-3


class TileBins(NamedTuple):
    """Gaussian-block pairs sorted by block, then by depth within a block.

    gaussian_ids [P]: index into the flattened [B*N] Gaussians of each pair;
    tile_ids [P]: flat block index of each pair; tile_starts, tile_counts [B*blocks]:
    the slice of pairs belonging to each block; grid (blocks_y, blocks_x); block_size
    in pixels.
    """

    gaussian_ids: torch.Tensor
    tile_ids: torch.Tensor
    tile_starts: torch.Tensor
    tile_counts: torch.Tensor
    grid: tuple
    block_size: int


def tile_grid(width: int, height: int, tile_size: int = TILE_SIZE) -> tuple:
    """(tiles_y, tiles_x) covering a ``height`` x ``width`` image."""
    return (height + tile_size - 1) // tile_size, (width + tile_size - 1) // tile_size


def tile_rectangles(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int,
                    tile_size: int = TILE_SIZE) -> torch.Tensor:
    """Half-open tile ranges [..., 4] = (x_min, y_min, x_max, y_max) of each 3-sigma box."""
    tiles_y, tiles_x = tile_grid(width, height, tile_size)
    centre = means2d.detach()
    radius = radii.to(centre.dtype)[..., None]
    low = torch.floor((centre - radius) / tile_size)
    high = torch.floor((centre + radius + tile_size - 1) / tile_size)
    limit = centre.new_tensor([tiles_x, tiles_y])
    low = torch.minimum(low.clamp(min=0), limit)
    high = torch.minimum(high.clamp(min=0), limit)
    return torch.cat([low, high], dim=-1).long()


def bin_gaussians(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor,
                  width: int, height: int, tile_size: int = TILE_SIZE,
                  extents: Optional[torch.Tensor] = None,
                  block_size: Optional[int] = None) -> TileBins:
    """Bin B views of projected Gaussians (means2d [B,N,2], radii [B,N], depths [B,N]).

    ``extents`` [B,N,2] are the half-widths (pixels) of the box outside which a
    Gaussian's alpha is below 1/255 (negative: never visible); without them blocks are
    limited by the tiles only. ``block_size`` defaults to ``tile_size``. Only Gaussians
    with ``radii > 0`` are binned.
    """
    block_size = tile_size if block_size is None else block_size
    if block_size <= 0 or tile_size % block_size != 0:
        raise ValueError(f"block_size must be a positive divisor of tile_size={tile_size}, got {block_size}")
    num_views, num_gaussians = radii.shape
    blocks_y, blocks_x = tile_grid(width, height, block_size)
    rect = tile_rectangles(means2d, radii, width, height, tile_size) * (tile_size // block_size)
    rect = torch.minimum(rect, rect.new_tensor([blocks_x, blocks_y, blocks_x, blocks_y]))
    if extents is not None:
        centre = means2d.detach()
        reach = extents.detach() * (1.0 + EXTENT_MARGIN) + EXTENT_MARGIN
        low = torch.floor((centre - reach) / block_size)
        high = torch.floor((centre + reach) / block_size) + 1
        low = torch.where(reach >= 0, low, high)
        rect = torch.cat([torch.maximum(rect[..., :2], low.long()),
                          torch.minimum(rect[..., 2:], high.long())], dim=-1)
    rect = rect.reshape(-1, 4)
    counts = touched_tile_counts(rect) * (radii.reshape(-1) > 0)

    by_depth = torch.argsort(depths.detach().reshape(-1), stable=True)
    by_depth = by_depth[counts[by_depth] > 0]
    per_gaussian = counts[by_depth]
    gaussian_ids = torch.repeat_interleave(by_depth, per_gaussian)
    first = torch.cumsum(per_gaussian, 0) - per_gaussian
    local = torch.arange(gaussian_ids.shape[0], device=radii.device)
    local = local - torch.repeat_interleave(first, per_gaussian)
    box = rect[gaussian_ids]
    box_width = box[:, 2] - box[:, 0]
    bx = box[:, 0] + local % box_width
    by = box[:, 1] + torch.div(local, box_width, rounding_mode="floor")
    view = torch.div(gaussian_ids, num_gaussians, rounding_mode="floor")
    tile_ids = (view * blocks_y + by) * blocks_x + bx

    tile_ids, order = torch.sort(tile_ids, stable=True)
    gaussian_ids = gaussian_ids[order]
    num_blocks = num_views * blocks_y * blocks_x
    tile_counts = torch.bincount(tile_ids, minlength=num_blocks)
    tile_starts = torch.cumsum(tile_counts, 0) - tile_counts
    return TileBins(gaussian_ids, tile_ids, tile_starts, tile_counts, (blocks_y, blocks_x), block_size)


def touched_tile_counts(rect: torch.Tensor) -> torch.Tensor:
    """Number of tiles in half-open tile rectangles [..., 4]."""
    return (rect[..., 2] - rect[..., 0]).clamp(min=0) * (rect[..., 3] - rect[..., 1]).clamp(min=0)

"""Side-by-side comparison videos: one labelled column per method, one frame per test view.

Layout of every output frame: a white label strip of ``label_height`` pixels on top (default:
1/12 of the tile height, at least 24) with each method's name in black (PIL's default font,
sized to the strip; smaller, or shortened with an ellipsis, when the column is narrower
than the name) centred in its column; below it the methods' frames, left to right in the
given order, no gaps, scaled to a common tile height (default: the smallest input height,
at least ``MIN_TILE_HEIGHT`` so that small CPU renders stay visible and labelled). Column
widths keep each method's aspect ratio and are rounded to even pixels (H.264 with yuv420p
needs even sizes, so the written video is never rescaled by the encoder).

Frame count: the longest method's count (the test-view count when all methods rendered
the same test orbit). A method with fewer frames is looped: output frame i shows its frame
i mod n.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_TILE_HEIGHT = 128


@dataclass(frozen=True)
class Column:
    label: str
    frames: Sequence[np.ndarray]  # uint8 [H, W, 3] RGB


@dataclass(frozen=True)
class GridLayout:
    """Pixel layout: column i spans x in [column_x[i][0], column_x[i][1])."""

    column_x: list[tuple[int, int]]
    label_height: int
    tile_height: int

    @property
    def width(self) -> int:
        return self.column_x[-1][1]

    @property
    def height(self) -> int:
        return self.label_height + self.tile_height


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def plan_layout(
    columns: Sequence[Column], tile_height: int | None = None, label_height: int | None = None
) -> GridLayout:
    """Column spans for frames scaled to ``tile_height`` (default: the smallest input height,
    at least ``MIN_TILE_HEIGHT``)."""
    if not columns:
        raise ValueError("columns: need at least one method column, got none")
    for column in columns:
        if len(column.frames) == 0:
            raise ValueError(f"columns: method '{column.label}' has no frames")
        shape = column.frames[0].shape
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"columns: method '{column.label}' frames must be [H, W, 3], got {shape}")
    if tile_height is None:
        tile_height = max(MIN_TILE_HEIGHT, min(c.frames[0].shape[0] for c in columns))
    height = _even(tile_height)
    if label_height is None:
        label_height = max(24, _even(height / 12))
    if label_height < 0 or label_height % 2:
        raise ValueError(f"label_height: expected an even number >= 0, got {label_height}")
    spans, x = [], 0
    for column in columns:
        source_height, source_width = column.frames[0].shape[:2]
        width = _even(source_width * height / source_height)
        spans.append((x, x + width))
        x += width
    return GridLayout(column_x=spans, label_height=label_height, tile_height=height)


def _fitted_label(draw: ImageDraw.ImageDraw, label: str, width: int, size: int):
    """(text, font): the label at the largest font size <= ``size`` (at least 6) that fits
    ``width`` pixels, shortened with an ellipsis if even the smallest size does not fit."""
    for font_size in range(size, 5, -1):
        font = ImageFont.load_default(size=font_size)
        if draw.textlength(label, font=font) <= width:
            return label, font
    text = label
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return (text + "\u2026" if text else ""), font


def label_strip(layout: GridLayout, labels: Sequence[str]) -> np.ndarray:
    """White [label_height, width, 3] strip with each label centred over, and clipped to, its column."""
    strip = Image.new("RGB", (layout.width, layout.label_height), (255, 255, 255))
    size = max(6, round(0.6 * layout.label_height))
    for (x0, x1), label in zip(layout.column_x, labels):
        cell = Image.new("RGB", (x1 - x0, layout.label_height), (255, 255, 255))
        draw = ImageDraw.Draw(cell)
        text, font = _fitted_label(draw, label, x1 - x0 - 2, size)
        if text:
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            x = (x1 - x0 - (right - left)) // 2 - left
            y = (layout.label_height - (bottom - top)) // 2 - top
            draw.text((x, y), text, fill=(0, 0, 0), font=font)
        strip.paste(cell, (x0, 0))
    return np.asarray(strip)


def compose_frames(columns: Sequence[Column], layout: GridLayout) -> list[np.ndarray]:
    """The grid's frames, uint8 [layout.height, layout.width, 3]; shorter methods loop."""
    header = label_strip(layout, [c.label for c in columns])
    num_frames = max(len(c.frames) for c in columns)
    frames = []
    for index in range(num_frames):
        tiles = []
        for column, (x0, x1) in zip(columns, layout.column_x):
            frame = np.asarray(column.frames[index % len(column.frames)], dtype=np.uint8)
            tile = Image.fromarray(frame).resize((x1 - x0, layout.tile_height), Image.BILINEAR)
            tiles.append(np.asarray(tile))
        frames.append(np.concatenate([header, np.concatenate(tiles, axis=1)], axis=0))
    return frames


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """H.264 mp4 through imageio-ffmpeg, frames written at their exact (even) size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, macro_block_size=2) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def read_video_frames(path: Path) -> list[np.ndarray]:
    """All frames of a video file as uint8 [H, W, 3] arrays."""
    with imageio.get_reader(path) as reader:
        return [np.asarray(frame)[..., :3] for frame in reader]


def side_by_side_video(
    path: Path,
    columns: Sequence[Column],
    fps: int = 30,
    tile_height: int | None = None,
    label_height: int | None = None,
) -> GridLayout:
    """Write the labelled side-by-side mp4 of ``columns`` and return its layout."""
    layout = plan_layout(columns, tile_height=tile_height, label_height=label_height)
    write_video(path, compose_frames(columns, layout), fps=fps)
    return layout

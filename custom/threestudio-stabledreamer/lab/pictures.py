"""Pictures of lab runs: image grids with row and column labels, drawn with matplotlib.

- ``truth_vs_result``: the ground truth above a result at four azimuths (one run);
- ``objects_picture``: ground truth | oracle | the config's result, per object;
- ``multiface_picture``: the head's front and back views under two noise-level schedules;
- ``reconstruction_picture``: render | x_t | x0_hat of one training view at several steps,
  read from the run's ``save/recon/stage1-it<step>-t<t>.png`` files (one row of 64-pixel
  tiles per view: render | noisy input | x0_hat).

Views are rendered with the lab's rasterizer from the ground truth (``GaussianObject``)
or from Gaussians as stored in a PLY, over a white background, at ``ELEVATION`` degrees.
"""
import math
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from .objects import GaussianObject
from .render import look_at_origin, render_object, render_ply_params

AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
ELEVATION = 15.0
DISTANCE = 1.75
FOVY_DEG = 45.0
RECON_FILE = re.compile(r"^stage1-it(\d+)-t(\d+)")

Row = Tuple[str, np.ndarray]
"""(label, views [V,H,W,3] in [0, 1])."""


def _cameras(azimuths: Sequence[float]):
    azimuth = torch.tensor([float(a) for a in azimuths])
    c2w = look_at_origin(torch.full_like(azimuth, ELEVATION), azimuth, torch.full_like(azimuth, DISTANCE))
    return c2w, torch.full_like(azimuth, math.radians(FOVY_DEG))


def truth_views(obj: GaussianObject, azimuths: Sequence[float], resolution: int) -> np.ndarray:
    c2w, fovy = _cameras(azimuths)
    return render_object(obj, c2w, fovy, resolution, resolution).rgb.clamp(0, 1).numpy()


def result_views(params: Dict[str, torch.Tensor], azimuths: Sequence[float], resolution: int) -> np.ndarray:
    """Views of Gaussians given pre-activation, as read from a 3DGS PLY."""
    c2w, fovy = _cameras(azimuths)
    return render_ply_params(params, c2w, fovy, resolution, resolution).rgb.clamp(0, 1).numpy()


def grid_picture(path: Path, rows: Sequence[Row], column_labels: Sequence[str], title: str = "",
                 tile_inches: float = 1.28) -> Path:
    """Save rows of equally many views as one labelled grid (PNG, 100 dpi: ``tile_inches``
    1.28 gives 128-pixel tiles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(column_labels)
    if any(len(views) != columns for _, views in rows):
        raise ValueError(f"every row needs {columns} views ({list(column_labels)}), got "
                         f"{[len(views) for _, views in rows]}")
    label_width, header = 1.6, 0.3 + (0.3 if title else 0.0)
    width, height = label_width + columns * tile_inches, header + len(rows) * tile_inches
    figure = plt.figure(figsize=(width, height), dpi=100)
    if title:
        figure.text(0.5, 1 - 0.25 / height, title, ha="center", va="center", fontsize=9)
    for r, (label, views) in enumerate(rows):
        bottom = 1 - (header + (r + 1) * tile_inches) / height
        figure.text((label_width - 0.08) / width, bottom + tile_inches / 2 / height, label,
                    ha="right", va="center", fontsize=7.5)
        for c, view in enumerate(views):
            axes = figure.add_axes([(label_width + c * tile_inches) / width, bottom,
                                    tile_inches / width, tile_inches / height])
            axes.imshow(np.clip(view, 0, 1), interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(column_labels[c], fontsize=7.5, pad=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def azimuth_labels(azimuths: Sequence[float]) -> List[str]:
    return [f"azimuth {a:g}°" for a in azimuths]


def score_label(scores: Dict[str, object]) -> str:
    return f"{scores['psnr']:.1f} dB, multi-face {scores['multi_face']:.3f}"


def truth_vs_result(path: Path, obj: GaussianObject, params: Dict[str, torch.Tensor], label: str,
                    resolution: int = 128) -> Path:
    rows = [("ground truth", truth_views(obj, AZIMUTHS, resolution)),
            (label, result_views(params, AZIMUTHS, resolution))]
    return grid_picture(path, rows, azimuth_labels(AZIMUTHS))


def objects_picture(path: Path, entries: Sequence[Tuple[GaussianObject, Dict, Dict, Dict, Dict]],
                    resolution: int = 128) -> Path:
    """``entries``: (object, oracle params, oracle scores, config params, config scores)."""
    rows: List[Row] = []
    for obj, oracle, oracle_scores, config, config_scores in entries:
        rows += [(f"{obj.name}: ground truth", truth_views(obj, AZIMUTHS, resolution)),
                 (f"oracle\n{oracle_scores['psnr']:.1f} dB", result_views(oracle, AZIMUTHS, resolution)),
                 (f"config's stage 1\n{config_scores['psnr']:.1f} dB", result_views(config, AZIMUTHS, resolution))]
    return grid_picture(path, rows, azimuth_labels(AZIMUTHS),
                        title="ground truth | oracle (multi-view reconstruction) | configs/stabledreamer.yaml stage 1")


MULTIFACE_AZIMUTHS = (0.0, 135.0, 180.0, 225.0)


def multiface_picture(path: Path, obj: GaussianObject, runs: Sequence[Tuple[str, Dict, Dict]],
                      resolution: int = 128) -> Path:
    """``runs``: (label, params, scores); the front and three back views of each."""
    rows: List[Row] = [("ground truth", truth_views(obj, MULTIFACE_AZIMUTHS, resolution))]
    rows += [(f"{label}\n{score_label(scores)}", result_views(params, MULTIFACE_AZIMUTHS, resolution))
             for label, params, scores in runs]
    labels = ["front (0°)"] + [f"back ({a:g}°)" for a in MULTIFACE_AZIMUTHS[1:]]
    return grid_picture(path, rows, labels, title=f"{obj.name}: front-biased, leaky prior")


def reconstruction_steps(trial_dir: Path) -> List[Tuple[int, int, Path]]:
    """(step, t of the first view, file) of a run's stage-1 reconstruction views, by step."""
    found = []
    for path in (Path(trial_dir) / "save" / "recon").glob("stage1-it*.png"):
        match = RECON_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return sorted(found)


def reconstruction_picture(path: Path, trial_dir: Path, max_rows: int = 5, scale: int = 2, title: str = "") -> Path:
    """The first training view of each saved step (at most ``max_rows``, spread over the
    run): render | x_t | x0_hat, enlarged ``scale`` times."""
    from PIL import Image

    steps = reconstruction_steps(trial_dir)
    if not steps:
        raise FileNotFoundError(f"{trial_dir}/save/recon: no stage1-it<step>-t<t>.png reconstruction views")
    if len(steps) > max_rows:
        steps = [steps[round(i * (len(steps) - 1) / (max_rows - 1))] for i in range(max_rows)]
    rows: List[Row] = []
    for step, t, file in steps:
        image = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255.0
        tile = image.shape[1] // 3
        views = [image[:tile, c * tile:(c + 1) * tile] for c in range(3)]
        rows.append((f"step {step}\nt = {t}", np.stack(views)))
    return grid_picture(path, rows, ["render", "noisy input x_t", "denoised x0_hat"],
                        title=title, tile_inches=0.64 * scale)

"""The lab's outputs: ``runs.csv`` (one row per run), ``results.csv`` and ``results.md`` (per
variant: mean and sample standard deviation over seeds and objects, and per object), and
plots: ``score_vs_step.png`` (PSNR and multi-face score against the training step, mean
over a variant's runs) and ``per_view_psnr.png`` (PSNR against azimuth around the object
at the middle held-out elevation, mean over a variant's runs).
"""
import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from .scores import SCORE_NAMES


@dataclass
class LabResult:
    variant: str
    object: str
    seed: int
    scores: Dict[str, object]
    wall_time_s: float
    azimuths: List[float] = field(default_factory=list)
    elevations: List[float] = field(default_factory=list)


def spread(values: Sequence[float]) -> str:
    """'mean +- sample std (n)'; the std is omitted for one value."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def write_runs_csv(path: Path, results: Sequence[LabResult]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["variant", "object", "seed", *SCORE_NAMES, "num_gaussians", "step", "wall_time_s"])
        for r in results:
            writer.writerow([r.variant, r.object, r.seed, *(f"{r.scores[n]:.4f}" for n in SCORE_NAMES),
                             r.scores["num_gaussians"], r.scores["step"], f"{r.wall_time_s:.1f}"])


def _group(results: Sequence[LabResult], variant: str, obj: str = None) -> List[LabResult]:
    return [r for r in results if r.variant == variant and (obj is None or r.object == obj)]


def write_results(out: Path, results: Sequence[LabResult], variants: Dict[str, str], objects: Sequence[str]) -> None:
    """``results.csv`` (means and stds per variant) and ``results.md`` (readable tables)."""
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["variant", "runs", *(f"{n}_{s}" for n in SCORE_NAMES for s in ("mean", "std")),
                         "mean_wall_time_s"])
        for variant in variants:
            group = _group(results, variant)
            if not group:
                continue
            row = [variant, len(group)]
            for name in SCORE_NAMES:
                values = [float(r.scores[name]) for r in group]
                row += [f"{statistics.fmean(values):.4f}",
                        f"{statistics.stdev(values):.4f}" if len(values) > 1 else ""]
            row.append(f"{statistics.fmean(r.wall_time_s for r in group):.1f}")
            writer.writerow(row)

    lines = ["# Lab results", "",
             "Scores of the exported PLY at held-out cameras against the ground truth: PSNR (dB), SSIM, "
             "silhouette IoU, multi-face score (0 = true back, 1 = the front copied onto the back). "
             "Mean ± sample standard deviation over seeds and objects.", "",
             "| variant | runs | PSNR | SSIM | IoU | multi-face | time (s) | what |", "|---|---|---|---|---|---|---|---|"]
    for variant, description in variants.items():
        group = _group(results, variant)
        if group:
            cells = [spread([float(r.scores[n]) for r in group]) for n in SCORE_NAMES]
            time_s = statistics.fmean(r.wall_time_s for r in group)
            lines.append(f"| {variant} | {len(group)} | {' | '.join(cells)} | {time_s:.0f} | {description} |")
    for name, label in (("psnr", "PSNR (dB)"), ("multi_face", "multi-face score")):
        lines += ["", f"## {label} per object (mean ± std over seeds)", "",
                  "| variant | " + " | ".join(objects) + " |", "|---|" + "---|" * len(objects)]
        for variant in variants:
            if _group(results, variant):
                cells = [spread([float(r.scores[name]) for r in _group(results, variant, obj)]) for obj in objects]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Plots: `score_vs_step.png`, `per_view_psnr.png`; one row per run in `runs.csv`.", ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")


def plot(out: Path, results: Sequence[LabResult], variants: Sequence[str]) -> List[Path]:
    """Write the two plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    present = [v for v in variants if _group(results, v)]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant in present:
        curves = [r.scores["curve"] for r in _group(results, variant) if r.scores["curve"]]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(point[0] for point in curve) for curve in curves)))
        for axis, index in ((axes[0], 1), (axes[1], 2)):
            means = [statistics.fmean(p[index] for curve in curves for p in curve if p[0] == step) for step in steps]
            axis.plot(steps, means, marker="o", label=variant)
    axes[0].set(xlabel="step", ylabel="PSNR (dB), held-out views", title="reconstruction quality")
    axes[1].set(xlabel="step", ylabel="multi-face score", title="front features in back views", ylim=(-0.02, 1.02))
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    curve_path = out / "score_vs_step.png"
    figure.savefig(curve_path, dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    middle = None
    for variant in present:
        group = _group(results, variant)
        elevations = np.array(group[0].elevations)
        middle = sorted(set(elevations.tolist()))[len(set(elevations.tolist())) // 2]
        keep = elevations == middle
        azimuths = np.array(group[0].azimuths)[keep]
        psnr = np.mean([np.array(r.scores["per_view_psnr"])[keep] for r in group], axis=0)
        axis.plot(azimuths, psnr, marker=".", label=variant)
    axis.set(xlabel="azimuth (degrees; 0 = front, 180 = back)", ylabel="PSNR (dB)",
             title=f"per-view PSNR around the object (elevation {middle:g} degrees)")
    axis.set_xticks(range(0, 361, 45))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    view_path = out / "per_view_psnr.png"
    figure.savefig(view_path, dpi=110)
    plt.close(figure)
    return [curve_path, view_path]

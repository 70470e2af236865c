"""The lab's outputs: ``runs.csv`` (one row per run), ``results.csv`` and ``results.md`` (per
variant: mean and sample standard deviation over seeds and objects, and per object),
plots: ``score_vs_step.png`` (PSNR and multi-face score against the training step, mean
over a variant's runs) and ``per_view_psnr.png`` (PSNR against azimuth around the object
at the middle held-out elevation, mean over a variant's runs), and ``results.html``: the
tables, plots, each run's ground-truth-versus-result picture and turntable video, written
with the comparison's page code (``benchmark.html_report``).
"""
import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .scores import SCORE_NAMES

TRUTH_VS_RESULT = "truth-vs-result.png"
"""Each trial directory's picture of the ground truth above the result (``pictures.truth_vs_result``)."""


@dataclass
class LabResult:
    variant: str
    object: str
    seed: int
    scores: Dict[str, object]
    wall_time_s: float
    azimuths: List[float] = field(default_factory=list)
    elevations: List[float] = field(default_factory=list)
    trial_dir: str = ""
    stage2_start_step: Optional[int] = None
    """Where the run switched to stage 2 (None: a stage-1 run)."""

    def after_stage1(self) -> Optional[Tuple[float, float]]:
        """(PSNR, multi-face score) at the switch, from the score curve; None for a stage-1
        run or when the curve has no point there."""
        for step, psnr, multi_face in self.scores.get("curve") or []:
            if step == self.stage2_start_step:
                return psnr, multi_face
        return None


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
    staged = [r for r in results if r.after_stage1() is not None]
    if staged:
        lines += ["", "## Two-stage runs: after stage 1 and after stage 2", "",
                  "| variant | object | seed | switch | stage 1: PSNR, multi-face | stage 2: PSNR, multi-face | "
                  "change in PSNR |", "|---|---|---|---|---|---|---|"]
        for r in staged:
            psnr, multi_face = r.after_stage1()
            final = float(r.scores["psnr"])
            lines.append(f"| {r.variant} | {r.object} | {r.seed} | {r.stage2_start_step} | {psnr:.2f} dB, "
                         f"{multi_face:.3f} | {final:.2f} dB, {float(r.scores['multi_face']):.3f} | "
                         f"{final - psnr:+.2f} dB |")
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


def turntable_video(trial_dir: Path):
    """The trial's ``save/it<step>-test.mp4`` of the largest step, or None."""
    videos = [(int(p.name[2:-len("-test.mp4")]), p) for p in (Path(trial_dir) / "save").glob("it*-test.mp4")
              if p.name[2:-len("-test.mp4")].isdigit()]
    return max(videos)[1] if videos else None


def write_results_html(out: Path, results: Sequence[LabResult], variants: Dict[str, str],
                       plots: Sequence[Path]) -> Path:
    """``results.html``: tables, plots and, per run, the picture and the turntable, all
    linked relative to ``out``."""
    import html

    from ..benchmark.html_report import image_figure, link, relative, table_row, video_element, write_page
    from ..benchmark.runs import prompt_slug

    esc = html.escape
    parts = [
        '<p class="note">Known-answer lab: score distillation against an exact denoiser over renders of '
        "a known object. Scores of the exported PLY at held-out cameras against the ground truth: PSNR "
        "(dB, pooled over views), SSIM, silhouette IoU, multi-face score (0 = true back, 1 = the front "
        "copied onto the back).</p>",
        "<h2>Variants</h2><table><tr><th>variant</th><th>what</th></tr>",
        *(table_row([esc(name), esc(text)], text_columns=2) for name, text in variants.items()),
        "</table><h2>Runs</h2><table><tr><th>variant</th><th>object</th><th>seed</th><th>PSNR (dB)</th>"
        "<th>SSIM</th><th>IoU</th><th>multi-face</th><th>Gaussians</th><th>wall time (s)</th><th>run</th>"
        "<th>log</th></tr>",
    ]
    for r in results:
        log = out / "logs" / f"{r.variant}-s{r.seed}" / f"{prompt_slug(r.object)}.log"
        parts.append(table_row([
            esc(r.variant), esc(r.object), str(r.seed), f"{r.scores['psnr']:.2f}", f"{r.scores['ssim']:.3f}",
            f"{r.scores['iou']:.3f}", f"{r.scores['multi_face']:.3f}", str(r.scores["num_gaussians"]),
            f"{r.wall_time_s:.0f}", link(r.trial_dir, out, "folder"), link(log, out, "log"),
        ], text_columns=2))
    parts.append("</table><h2>Plots</h2>")
    parts += [image_figure(relative(p, out), p.stem.replace("_", " ")) for p in plots]
    parts.append("<h2>Results and turntables</h2>")
    for r in results:
        trial = Path(r.trial_dir)
        parts.append(f"<h3>{esc(r.variant)}, {esc(r.object)}, seed {r.seed}: {r.scores['psnr']:.1f} dB</h3>")
        if (trial / TRUTH_VS_RESULT).is_file():
            parts.append(image_figure(relative(trial / TRUTH_VS_RESULT, out), "ground truth (top) and result"))
        video = turntable_video(trial)
        if video is not None:
            parts.append(video_element(video, out))
    return write_page(out / "results.html", "Known-answer lab", parts)

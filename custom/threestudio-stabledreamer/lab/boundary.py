"""Where noise-level annealing stops preventing multi-face objects: a sweep over the prior's biases.

    python -m threestudio_stabledreamer.lab.boundary --out outputs/lab/boundary

The lab's front-biased, leaky prior (``lab.denoiser``) has two knobs: ``front_bias`` (front
views weigh that many times more) and ``view_leak`` (the share of the prior that ignores
the view prompt). The sweep runs the config's stage 1 on the head for every pair of a grid
(``FRONT_BIASES`` x ``VIEW_LEAKS``) under two noise schedules: ``annealed`` (the config's
sqrt annealing from 0.98 T to 0.4 T) and ``uniform`` (t uniform in the same range, no
annealing), one seed per cell. Then the cells on either side of annealing's boundary (an
``annealed`` cell whose one-face verdict differs from a grid neighbour's) get two more
seeds; their verdict is the mean's. That is the boundary the claim is about; the uniform
cells show where annealing is needed at all. A run keeps one face when its multi-face
score is at most ``ONE_FACE``.

Runs last 500 steps (``--steps``), the shortest the verdict holds at: at 300 steps the
config's annealing still leaves the head multi-faced under the front x4, leak 0.5 prior
(0.952), at 500 it does not (0.001 +- 0.001 over three seeds, the README's ``schedules``
table). A compressed stage 1 keeps the per-step learning rates, so a shorter run moves
the Gaussians less while the noise level falls.

One limit of annealing follows from the prior at the highest noise level, where the
render no longer tells the references apart and the denoiser returns the prior's own
mean. ``high_noise_shares`` computes it exactly for a back view: the shares of front-bin
and back-bin references in the classifier-free-guided weights u + s (c - u) (c, u: the
conditional and unconditional prior weights, s: the guidance scale). Where the front
share exceeds the back share (``prior_back_view_is_front``), the prior itself turns a
back view into a front at the noise level that sets the coarse shape, so annealing,
which starts there, begins by drawing a front on the back. Elsewhere the noisiest steps
point back views the right way, which annealing needs but which does not suffice: the
sweep measures where it keeps one face (in the README's sweep it fails well before this
line).

Outputs in ``--out``: the lab's usual files (``lab.cli.run_lab``) and ``boundary.csv`` (a
row per cell and schedule), ``boundary.md`` (the regions) and ``boundary.png`` (the plot).
Repeating the command reuses finished runs, so ``--schedules`` and ``--front-biases`` can
split the sweep over processes sharing ``--out`` (``OMP_NUM_THREADS=1`` each on a 2-core
machine) before one last full command writes the report (and runs the seeds of any
boundary cell a split could not see: one whose differing neighbour was in another part).
"""
import argparse
import csv
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .denoiser import view_log_prior
from .suites import NO_ANNEAL, Variant

FRONT_BIASES: Tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)
VIEW_LEAKS: Tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
SCHEDULES: Dict[str, Tuple[str, ...]] = {"annealed": (), "uniform": NO_ANNEAL}
"""Overrides of each schedule over the config: ``annealed`` is the config as it is."""
BOUNDARY_SCHEDULE = "annealed"
"""The schedule whose boundary cells get more seeds."""
ONE_FACE = 0.1
"""A run keeps one face when its multi-face score is at most this."""
BOUNDARY_SEEDS: Tuple[int, ...] = (0, 1, 2)
OBJECT = "head"
# threestudio's view bins: front within 45 degrees of azimuth 0, back within 45 of 180
# (its prompt processors' front_threshold and back_threshold), side between.
FRONT_THRESHOLD_DEG = 45.0
BACK_THRESHOLD_DEG = 45.0
SIDE, FRONT, BACK = 0, 1, 2


@dataclass(frozen=True)
class Cell:
    front_bias: float
    view_leak: float
    schedule: str

    @property
    def name(self) -> str:
        return f"fb{self.front_bias:g}-leak{self.view_leak:g}-{self.schedule}"

    def variant(self) -> Variant:
        schedule = "sqrt annealing (the config's)" if self.schedule == "annealed" else "uniform t in [0.4, 0.98] T"
        return Variant(self.name, f"front_bias {self.front_bias:g}, view_leak {self.view_leak:g}; {schedule}",
                       (f"system.guidance.front_bias={self.front_bias}", f"system.guidance.view_leak={self.view_leak}",
                        *SCHEDULES[self.schedule]))


def grid(front_biases: Sequence[float], view_leaks: Sequence[float],
         schedules: Sequence[str] = tuple(SCHEDULES)) -> List[Cell]:
    """Every (front_bias, view_leak, schedule), schedules outermost."""
    return [Cell(fb, leak, schedule) for schedule in schedules for fb in front_biases for leak in view_leaks]


def _azimuth_bins(azimuth_deg: torch.Tensor) -> torch.Tensor:
    """View bin of azimuths in degrees (0 = front) by threestudio's thresholds, elevation below overhead."""
    wrapped = (azimuth_deg + 180.0) % 360.0 - 180.0
    bins = torch.full_like(wrapped, SIDE, dtype=torch.long)
    bins[wrapped.abs() < FRONT_THRESHOLD_DEG] = FRONT
    bins[wrapped.abs() > 180.0 - BACK_THRESHOLD_DEG] = BACK
    return bins


def high_noise_shares(front_bias: float, view_leak: float, guidance_scale: float,
                      num_azimuths: int = 8, samples: int = 90) -> Tuple[float, float]:
    """(front share, back share) of the guided prior weights for a back view, at t -> T.

    Back views at ``samples`` azimuths spread evenly over the back bin; each view's
    references are the object turned by k 360 / ``num_azimuths`` degrees (as the lab
    guidance's), binned by threestudio's rule. The weights are the prior's
    (``denoiser.view_log_prior``, conditional on the back bin and unconditional), combined
    as classifier-free guidance does, u + s (c - u), and summed per bin; averaged over
    the views.
    """
    step = 2.0 * BACK_THRESHOLD_DEG / samples
    azimuths = 180.0 - BACK_THRESHOLD_DEG + step * (torch.arange(samples, dtype=torch.float64) + 0.5)
    offsets = torch.arange(num_azimuths, dtype=torch.float64) * (360.0 / num_azimuths)
    bins = _azimuth_bins(azimuths[:, None] + offsets[None])
    conditional = torch.softmax(view_log_prior(bins, torch.full((samples,), BACK), FRONT, front_bias, view_leak), 1)
    unconditional = torch.softmax(view_log_prior(bins, torch.full((samples,), -1), FRONT, front_bias, view_leak), 1)
    guided = unconditional + guidance_scale * (conditional - unconditional)
    front = (guided * (bins == FRONT)).sum(1).mean().item()
    back = (guided * (bins == BACK)).sum(1).mean().item()
    return front, back


def prior_back_view_is_front(front_bias: float, view_leak: float, guidance_scale: float,
                             num_azimuths: int = 8) -> bool:
    """Whether the guided prior's own estimate of a back view at the highest noise is more front than back."""
    front, back = high_noise_shares(front_bias, view_leak, guidance_scale, num_azimuths)
    return front > back


@dataclass
class CellResult:
    cell: Cell
    multi_face: List[float]
    psnr: List[float]

    @property
    def one_face(self) -> bool:
        return statistics.fmean(self.multi_face) <= ONE_FACE


def cell_results(results: Sequence, cells: Sequence[Cell]) -> Dict[Cell, CellResult]:
    """The lab's results (``report.LabResult``) grouped by cell; cells without a run are left out."""
    by_name = {cell.name: cell for cell in cells}
    grouped: Dict[Cell, CellResult] = {}
    for r in sorted(results, key=lambda r: r.seed):
        cell = by_name.get(r.variant)
        if cell is None:
            continue
        entry = grouped.setdefault(cell, CellResult(cell, [], []))
        entry.multi_face.append(float(r.scores["multi_face"]))
        entry.psnr.append(float(r.scores["psnr"]))
    return grouped


def boundary_cells(outcomes: Dict[Cell, CellResult], front_biases: Sequence[float],
                   view_leaks: Sequence[float], schedule: str = BOUNDARY_SCHEDULE) -> List[Cell]:
    """Cells of ``schedule`` whose verdict differs from that of a grid neighbour (next front
    bias or next leak), in grid order: the cells on either side of its boundary."""

    def verdict(i: int, j: int) -> Optional[bool]:
        entry = outcomes.get(Cell(front_biases[i], view_leaks[j], schedule))
        return None if entry is None else entry.one_face

    chosen = []
    for i, fb in enumerate(front_biases):
        for j, leak in enumerate(view_leaks):
            here = verdict(i, j)
            neighbours = [verdict(i + di, j + dj) for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))
                          if 0 <= i + di < len(front_biases) and 0 <= j + dj < len(view_leaks)]
            if here is not None and any(n is not None and n != here for n in neighbours):
                chosen.append(Cell(fb, leak, schedule))
    return chosen


def region(annealed: Optional[CellResult], uniform: Optional[CellResult]) -> str:
    """The verdict of a (front_bias, view_leak) pair from its two schedules."""
    if annealed is None or uniform is None:
        return "not run"
    if annealed.one_face:
        return "both schedules keep one face" if uniform.one_face else "annealing keeps one face"
    return "only uniform keeps one face" if uniform.one_face else "neither schedule keeps one face"


def write_boundary(out: Path, outcomes: Dict[Cell, CellResult], front_biases: Sequence[float],
                   view_leaks: Sequence[float], guidance_scale: float, steps: int) -> List[Path]:
    """``boundary.csv``, ``boundary.md`` and ``boundary.png``; returns their paths."""
    rows = []
    for fb in front_biases:
        for leak in view_leaks:
            annealed, uniform = outcomes.get(Cell(fb, leak, "annealed")), outcomes.get(Cell(fb, leak, "uniform"))
            front, back = high_noise_shares(fb, leak, guidance_scale)
            rows.append((fb, leak, annealed, uniform, front, back, region(annealed, uniform)))

    def mean(entry: Optional[CellResult], field: str) -> str:
        return f"{statistics.fmean(getattr(entry, field)):.3f}" if entry else ""

    def runs(entry: Optional[CellResult]) -> str:
        return str(len(entry.multi_face)) if entry else "0"

    csv_path = out / "boundary.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["front_bias", "view_leak", "annealed_multi_face", "annealed_psnr", "annealed_runs",
                         "uniform_multi_face", "uniform_psnr", "uniform_runs", "high_noise_front_share",
                         "high_noise_back_share", "region"])
        for fb, leak, annealed, uniform, front, back, verdict in rows:
            writer.writerow([f"{fb:g}", f"{leak:g}", mean(annealed, "multi_face"), mean(annealed, "psnr"),
                             runs(annealed), mean(uniform, "multi_face"), mean(uniform, "psnr"), runs(uniform),
                             f"{front:.3f}", f"{back:.3f}", verdict])

    lines = [
        "# Where annealing keeps one face", "",
        f"The config's stage 1 on the {OBJECT}, {steps} steps, against the lab prior with each front bias and "
        f"view leak; multi-face score (mean over the cell's seeds; one face: <= {ONE_FACE:g}) under the config's "
        "sqrt annealing and under uniform noise levels. High-noise shares: front and back shares of the guided "
        f"prior weights for a back view at t -> T (guidance scale {guidance_scale:g}).", "",
        "| front bias | view leak | annealed | uniform | runs | high-noise front / back | region |",
        "|---|---|---|---|---|---|---|",
    ]
    for fb, leak, annealed, uniform, front, back, verdict in rows:
        lines.append(f"| {fb:g} | {leak:g} | {mean(annealed, 'multi_face')} | {mean(uniform, 'multi_face')} | "
                     f"{runs(annealed)} + {runs(uniform)} | {front:.2f} / {back:.2f} | {verdict} |")
    md_path = out / "boundary.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    png_path = plot_boundary(out / "boundary.png", outcomes, front_biases, view_leaks, guidance_scale, steps)
    return [csv_path, md_path, png_path]


def plot_boundary(path: Path, outcomes: Dict[Cell, CellResult], front_biases: Sequence[float],
                  view_leaks: Sequence[float], guidance_scale: float, steps: int) -> Path:
    """Two panels (annealed, uniform): each cell's mean multi-face score, its number of
    seeds, and the line where the high-noise guided prior of a back view turns front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    contour = len(front_biases) > 1 and len(view_leaks) > 1
    if contour:
        fine_leaks = np.linspace(min(view_leaks), max(view_leaks), 61)
        fine_biases = np.geomspace(min(front_biases), max(front_biases), 61)
        margin = np.array([[np.subtract(*high_noise_shares(fb, leak, guidance_scale)) for leak in fine_leaks]
                           for fb in fine_biases])
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for axis, schedule in zip(axes, SCHEDULES):
        scores = np.full((len(front_biases), len(view_leaks)), np.nan)
        for i, fb in enumerate(front_biases):
            for j, leak in enumerate(view_leaks):
                entry = outcomes.get(Cell(fb, leak, schedule))
                if entry is None:
                    continue
                scores[i, j] = statistics.fmean(entry.multi_face)
                colour = "black" if scores[i, j] > 0.5 else "white"  # magma: dark at 0, light at 1
                axis.text(j, i, f"{scores[i, j]:.2f}\n({len(entry.multi_face)})", ha="center", va="center",
                          fontsize=8, color=colour)
        image = axis.imshow(scores, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
        if contour:
            # the fine grid mapped onto cell coordinates: leak linearly, front bias by its log
            x = np.interp(fine_leaks, view_leaks, np.arange(len(view_leaks)))
            y = np.interp(np.log(fine_biases), np.log(front_biases), np.arange(len(front_biases)))
            axis.contour(x, y, margin, levels=[0.0], colors="cyan", linewidths=2)
        axis.set_xticks(range(len(view_leaks)), [f"{v:g}" for v in view_leaks])
        axis.set_yticks(range(len(front_biases)), [f"{v:g}" for v in front_biases])
        axis.set(xlabel="view leak", title=f"{schedule}: multi-face score (seeds)")
    axes[0].set_ylabel("front bias")
    figure.colorbar(image, ax=axes, shrink=0.85, label="multi-face score (0 = one face)")
    figure.suptitle(f"{OBJECT}, {steps} steps. Cyan: above and right of it, the guided prior's own back view "
                    f"at t -> T is a front (CFG {guidance_scale:g})", fontsize=9)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m threestudio_stabledreamer.lab.boundary",
                                     description="Sweep the lab prior's front bias and view leak under annealed "
                                     "and uniform noise levels; report where annealing keeps one face.")
    parser.add_argument("--out", type=Path, default=Path("outputs/lab/boundary"))
    parser.add_argument("--steps", type=int, default=500, help="stage-1 steps per run (default 500)")
    parser.add_argument("--front-biases", type=float, nargs="+", default=list(FRONT_BIASES))
    parser.add_argument("--view-leaks", type=float, nargs="+", default=list(VIEW_LEAKS))
    parser.add_argument("--boundary-seeds", type=int, nargs="+", default=list(BOUNDARY_SEEDS),
                        help="seeds of the cells on either side of annealing's boundary (the first is every cell's)")
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES),
                        help="run only these schedules (to split the sweep over processes sharing --out)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="stage 1's guidance scale for the high-noise analysis (default: the config's)")
    parser.add_argument("--progress-interval", type=float, default=60.0)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from omegaconf import OmegaConf

    from .cli import DEFAULT_CONFIG, LabSettings, run_lab

    args = build_parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"error: --steps must be >= 1, got {args.steps}")
    if any(not fb > 0 for fb in args.front_biases):
        raise SystemExit(f"error: --front-biases must be > 0, got {args.front_biases}")
    if any(not 0.0 <= leak <= 1.0 for leak in args.view_leaks):
        raise SystemExit(f"error: --view-leaks must be in [0, 1], got {args.view_leaks}")
    front_biases, view_leaks = sorted(set(args.front_biases)), sorted(set(args.view_leaks))
    scale = args.guidance_scale
    if scale is None:
        scale = float(OmegaConf.select(OmegaConf.load(DEFAULT_CONFIG), "system.guidance.guidance_scale"))
    cells = grid(front_biases, view_leaks, [s for s in SCHEDULES if s in args.schedules])
    first, *more = args.boundary_seeds
    settings = LabSettings(suites=(), objects=(OBJECT,), out=args.out, steps=args.steps, seeds=(first,),
                           variants=tuple(cell.variant() for cell in cells),
                           progress_interval=args.progress_interval)
    print(f"boundary: phase 1, {len(cells)} cells, seed {first}", flush=True)
    outcome = run_lab(settings)
    if outcome.failures:
        return 1
    outcomes = cell_results(outcome.results, cells)
    near = boundary_cells(outcomes, front_biases, view_leaks)
    if more and near:
        print(f"boundary: phase 2, seeds {more} on {len(near)} cells either side of the boundary: "
              + ", ".join(cell.name for cell in near), flush=True)
        outcome = run_lab(replace(settings, variant_seeds={cell.name: (first, *more) for cell in near}))
        if outcome.failures:
            return 1
        outcomes = cell_results(outcome.results, cells)
    for path in write_boundary(Path(args.out).resolve(), outcomes, front_biases, view_leaks, scale, args.steps):
        print(f"wrote {path}")
    print((Path(args.out) / "boundary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

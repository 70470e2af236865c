"""CPU timings of the Gaussian geometry: initialization and one density-control step.

Usage: python benchmarks/bench_geometry.py [--sizes 10000 100000 500000] [--runs 5] [--threads T]

- init: random points in a ball plus neighbour-distance scales (``core.initialization``);
- density control: one ``stabledreamer-gaussian`` ``density_control`` call on a densify
  step, with an Adam optimizer holding state for every parameter and statistics making
  about 10% of the Gaussians grow (half cloned, half split) and 5% pruned.
Each figure is the median of ``--runs`` runs, in seconds: wall clock, and the process's
CPU time (all threads) which is less disturbed by other load on the machine.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if importlib.util.find_spec("threestudio") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "threestudio_standin"))

import threestudio  # noqa: E402
import threestudio_stabledreamer.geometry.gaussian  # noqa: E402,F401  (registers the geometry)
from threestudio_stabledreamer.core.initialization import (  # noqa: E402
    constant_colours,
    gaussians_from_points,
    sample_points_in_ball,
)

DENSIFY_STEP = 500


def timed(function, *args):
    """(result, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def random_gaussians(n: int) -> dict:
    points = sample_points_in_ball(n, 0.5)
    return gaussians_from_points(points, constant_colours(n, [0.5, 0.5, 0.5]), 0.1, sh_degree=0)


def time_init(n: int, runs: int) -> tuple:
    times = [timed(random_gaussians, n)[1:] for _ in range(runs)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def prepared_geometry(state: dict, n: int):
    geometry = threestudio.find("stabledreamer-gaussian")(
        {"init": {"num_points": 8, "seed": 0}, "densify_from": DENSIFY_STEP, "densify_interval": 100,
         "grad_threshold": 0.01, "split_threshold": 0.02, "max_num_gaussians": 10 * n}
    )
    geometry.load_state_dict(state)
    optimizer = geometry.create_optimizer()
    loss = (geometry.means**2).sum() + geometry.opacities.sum() + geometry.scales.sum() + geometry.sh_coefficients.sum()
    loss = loss + (geometry.rotations * torch.tensor([0.1, 0.2, 0.3, 0.4])).sum()
    loss.backward()
    optimizer.step()
    grad = torch.zeros(1, n, 2)
    grad[0, :, 0] = torch.where(torch.rand(n) < 0.1, 0.02, 0.001)  # 10% above the 0.01 threshold
    geometry.add_densification_stats(grad, torch.full((1, n), 4), torch.ones(1, n, dtype=torch.bool))
    return geometry


def time_density_control(n: int, runs: int) -> tuple:
    tensors = random_gaussians(n)
    # Neighbour scales at this density straddle the split threshold; 5% are transparent.
    tensors["log_scales"] = tensors["log_scales"] + torch.randn(n, 1) * 0.5
    tensors["opacity_logits"][torch.rand(n) < 0.05] = -8.0
    state = {f"_{name}": tensor for name, tensor in tensors.items()}
    state["_scene_extent"] = torch.tensor(0.5)
    times, summary = [], None
    for _ in range(runs):
        geometry = prepared_geometry(state, n)
        summary, wall, cpu = timed(geometry.density_control, DENSIFY_STEP)
        times.append((wall, cpu))
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs} runs, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'N':>9} | {'init wall / CPU (s)':>19} | {'density step wall / CPU (s)':>27} | result of the step")
    for n in args.sizes:
        init_wall, init_cpu = time_init(n, args.runs)
        step_wall, step_cpu, summary = time_density_control(n, args.runs)
        result = (f"cloned {summary['cloned']}, split {summary['split']}, pruned {summary['pruned']} "
                  f"-> {summary['num_gaussians']}")
        print(f"{n:>9} | {init_wall:>8.3f} / {init_cpu:>8.3f} | {step_wall:>12.3f} / {step_cpu:>12.3f} | {result}")

if __name__ == "__main__":
    main()

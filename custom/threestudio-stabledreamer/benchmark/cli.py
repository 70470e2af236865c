"""``python -m threestudio_stabledreamer.benchmark``: compare text-to-3D configs on a prompt set.

Example (two GPUs, StableDreamer against the Gaussian baselines, the seven project prompts):

    python -m threestudio_stabledreamer.benchmark --threestudio-root ~/threestudio \\
        --configs configs/stabledreamer.yaml configs/gaussian-dreamfusion.yaml \\
                  configs/gaussian-hifa.yaml configs/gaussian-prolificdreamer.yaml \\
        --gpus 0,1 --out outputs/benchmark

Words after ``--`` are launcher overrides applied to every run (``trainer.max_steps=2000``);
``--method-override NAME KEY=VALUE`` applies one to a single method.

``--executor`` chooses where the runs go: ``local`` (default; one run per listed GPU on
this machine), ``ray`` (one Ray task per run, see ``ray_executor``) or ``slurm`` (one
submitit job per run, see ``slurm_executor``). Every executor skips finished runs and
resumes interrupted ones from their newest loadable checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .executor import CPU_SLOT, LaunchSettings, execute_all
from .metrics import DEFAULT_CLIP_MODEL, ClipEmbedder, ClipModelUnavailable
from .html_report import write_results_html
from .progress import ProgressBoard
from .report import (
    evaluate_runs,
    summarize,
    write_results_csv,
    write_results_md,
    write_runs_csv,
    write_videos,
)
from .runs import Method, parse_method, plan_runs, read_prompts

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PROMPTS = REPO_ROOT / "configs" / "stabledreamer-prompts.txt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m threestudio_stabledreamer.benchmark",
        description="Train and test every (config, prompt) through a threestudio launcher, "
        "measure time and peak memory, score the test views with CLIP and write side-by-side videos.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--threestudio-root", type=Path, help="threestudio checkout; runs its launch.py")
    where.add_argument("--launcher", type=Path, help="any launch.py with threestudio's command line")
    parser.add_argument(
        "--launcher-cwd", type=Path, default=None,
        help="working directory of the launcher, whose ./custom/ holds the extension "
        "(default: the threestudio root, or the launcher's folder)",
    )
    parser.add_argument(
        "--configs", nargs="+", required=True, metavar="[NAME=]CONFIG",
        help="configs to compare; the column name is NAME or the file's stem",
    )
    parser.add_argument(
        "--prompts", type=Path, default=DEFAULT_PROMPTS,
        help="prompt file, one per line (default: the seven StableDreamer project-page prompts)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmark"), help="output directory")
    parser.add_argument(
        "--gpus", default=None,
        help="comma-separated GPU ids, one job per id in parallel, or 'cpu' for one job "
        "(default: 0 with CUDA, else cpu)",
    )
    parser.add_argument(
        "--executor", choices=("local", "ray", "slurm"), default="local",
        help="local: this machine's GPUs (--gpus); ray: a Ray task per run; slurm: a job per run "
        "through submitit (default: local)",
    )
    parser.add_argument(
        "--retries", type=int, default=0,
        help="run a failed run again up to this many times, resuming from its checkpoints (default: 0)",
    )
    ray = parser.add_argument_group("ray executor")
    ray.add_argument(
        "--ray-address", default=None,
        help="Ray cluster to join: 'auto' (the local node's cluster) or host:port "
        "(default: start a local cluster for this comparison)",
    )
    ray.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    ray.add_argument(
        "--ray-cpus-per-run", type=float, default=1,
        help="CPUs each run reserves with --gpus cpu (with GPUs, each run reserves one GPU)",
    )
    slurm = parser.add_argument_group("slurm executor")
    slurm.add_argument("--slurm-partition", default=None, help="partition (sbatch --partition)")
    slurm.add_argument("--slurm-time", type=int, default=24 * 60, help="time limit per job in minutes")
    slurm.add_argument("--slurm-gpus-per-job", type=int, default=1, help="GPUs per job (0 with --gpus cpu)")
    slurm.add_argument("--slurm-cpus-per-job", type=int, default=None, help="CPUs per job (sbatch --cpus-per-task)")
    slurm.add_argument(
        "--slurm-array-parallelism", type=int, default=None,
        help="at most this many jobs of the array run at once",
    )
    slurm.add_argument(
        "--slurm-sbatch", action="append", default=[], metavar="KEY=VALUE",
        help="an extra sbatch option without its dashes, e.g. account=proj or qos=high (repeatable)",
    )
    slurm.add_argument(
        "--slurm-cluster", choices=("slurm", "local"), default="slurm",
        help="'local' runs the jobs as processes on this machine with submitit's local executor",
    )
    slurm.add_argument("--slurm-poll-interval", type=float, default=10.0, help="seconds between job checks")
    parser.add_argument(
        "--method-override", nargs=2, action="append", default=[], metavar=("NAME", "KEY=VALUE"),
        help="a launcher override for one method only (repeatable)",
    )
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP id or local directory")
    parser.add_argument("--clip-device", default=None, help="device for CLIP (default: cuda if available)")
    parser.add_argument("--clip-batch-size", type=int, default=32)
    parser.add_argument(
        "--rgb-panel-width", type=int, default=None,
        help="width of the rgb panel at the left of each test render (default: its height)",
    )
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the side-by-side videos")
    parser.add_argument("--progress-interval", type=float, default=10.0, help="seconds between status lines")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="launcher overrides for every run (after --)"
    )
    return parser


def _check_override(override: str, where: str) -> str:
    if "=" not in override or override.startswith("="):
        raise SystemExit(f"error: {where}: '{override}' is not KEY=VALUE")
    return override


def device_slots(gpus: str | None) -> list[str]:
    """Job slots from --gpus: GPU ids, or ['cpu'] (None: GPU 0 when CUDA is available, else the CPU)."""
    if gpus is None:
        import torch

        return ["0"] if torch.cuda.is_available() else [CPU_SLOT]
    if gpus.strip().lower() == CPU_SLOT:
        return [CPU_SLOT]
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
        raise SystemExit(f"error: --gpus: expected distinct GPU ids like '0,1' or 'cpu', got '{gpus}'")
    return ids


def _sbatch_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    options = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise SystemExit(f"error: --slurm-sbatch: '{item}' is not KEY=VALUE (an sbatch option without '--')")
        options.append((key, value))
    return tuple(options)


def _execute(args, runs: list, settings: LaunchSettings, board: ProgressBoard):
    """(finished records, failures) from the chosen executor."""
    if args.retries < 0:
        raise SystemExit(f"error: --retries: expected a number >= 0, got {args.retries}")
    if args.executor == "local":
        return execute_all(runs, settings, device_slots(args.gpus), board, args.retries)
    # on a cluster the runner's machine may have no GPU: runs use one unless --gpus cpu
    use_gpu = args.gpus is None or args.gpus.strip().lower() != CPU_SLOT
    if args.executor == "ray":
        from .ray_executor import execute_on_ray

        return execute_on_ray(
            runs, settings, board, address=args.ray_address, use_gpu=use_gpu,
            cpus_per_run=args.ray_cpus_per_run, local_cpus=args.ray_num_cpus, retries=args.retries,
            progress_interval=args.progress_interval,
        )
    from .slurm_executor import SlurmOptions, execute_on_slurm

    options = SlurmOptions(
        partition=args.slurm_partition,
        time_min=args.slurm_time,
        gpus_per_job=args.slurm_gpus_per_job,
        cpus_per_job=args.slurm_cpus_per_job,
        sbatch=_sbatch_options(args.slurm_sbatch),
        array_parallelism=args.slurm_array_parallelism,
        cluster=args.slurm_cluster,
        poll_interval_s=args.slurm_poll_interval,
    )
    return execute_on_slurm(
        runs, settings, board, options, use_gpu=use_gpu, retries=args.retries,
        progress_interval=args.progress_interval,
    )


def _methods(specs: list[str], method_overrides: list[list[str]]) -> list[Method]:
    try:
        methods = [parse_method(spec) for spec in specs]
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    names = {m.name for m in methods}
    per_method: dict[str, list[str]] = {m.name: [] for m in methods}
    for name, override in method_overrides:
        if name not in names:
            raise SystemExit(f"error: --method-override: '{name}' is not one of the methods {sorted(names)}")
        per_method[name].append(_check_override(override, "--method-override"))
    return [Method(m.name, m.config, tuple(per_method[m.name])) for m in methods]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    launcher = args.launcher if args.launcher is not None else args.threestudio_root / "launch.py"
    launcher = launcher.expanduser().resolve()
    if not launcher.is_file():
        raise SystemExit(f"error: launcher: '{launcher}' does not exist")
    launcher_cwd = (args.launcher_cwd or launcher.parent).expanduser().resolve()
    if not launcher_cwd.is_dir():
        raise SystemExit(f"error: --launcher-cwd: '{launcher_cwd}' is not a directory")
    if not args.prompts.is_file():
        hint = " (the default file ships in the repository's configs/; give --prompts)"
        raise SystemExit(
            f"error: --prompts: '{args.prompts}' does not exist{hint if args.prompts == DEFAULT_PROMPTS else ''}"
        )
    prompts = read_prompts(args.prompts)
    methods = _methods(args.configs, args.method_override)
    overrides = tuple(_check_override(o, "overrides") for o in args.overrides)
    where = ", ".join(device_slots(args.gpus)) if args.executor == "local" else args.executor
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    # load CLIP first (on the CPU, moved later): a missing model should fail before training
    try:
        embedder = ClipEmbedder(args.clip_model, device="cpu", batch_size=args.clip_batch_size)
    except ClipModelUnavailable as error:
        raise SystemExit(f"error: --clip-model: {error}")

    runs = plan_runs(methods, prompts)
    print(
        f"{len(runs)} runs ({len(methods)} methods x {len(prompts)} prompts) on {where}; "
        f"launcher {launcher}; output {out}",
        flush=True,
    )
    board = ProgressBoard(total=len(runs), interval=args.progress_interval)
    settings = LaunchSettings(
        launcher=launcher, launcher_cwd=launcher_cwd, out=out, extra_overrides=overrides
    )
    records, failures = _execute(args, runs, settings, board)

    method_names = [m.name for m in methods]
    if records:
        clip_device = args.clip_device or _default_device()
        print(f"scoring {len(records)} runs with CLIP '{args.clip_model}' on {clip_device}", flush=True)
        results = evaluate_runs(records, prompts, embedder.to(clip_device), args.rgb_panel_width)
        summaries = summarize(results, method_names, len(prompts))
        videos = write_videos(out, records, prompts, method_names, args.rgb_panel_width, args.fps)
        write_runs_csv(out / "runs.csv", results)
        write_results_csv(out / "results.csv", summaries)
        write_results_md(out / "results.md", summaries, results, prompts, args.clip_model, videos)
        write_results_html(out / "results.html", summaries, results, prompts, args.clip_model, videos)
        print(
            f"wrote {out / 'results.html'}, {out / 'results.md'}, {out / 'results.csv'}, {out / 'runs.csv'} "
            f"and {len(videos)} videos in {out / 'videos'}"
        )
    for run, note in failures:
        print(f"FAILED: {run.label}: {note}", file=sys.stderr)
    return 1 if failures else 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

"""``python -m threestudio_stabledreamer.lab``: run the lab's variants through the launcher and score them.

    python -m threestudio_stabledreamer.lab --suite goals multiface --seeds 0 1 2 --out outputs/lab

Each (variant, object, seed) is one launcher run of ``configs/stabledreamer.yaml`` (or
``--config``) with the lab swapped in (``suites.lab_overrides``) and its stage 1
compressed to ``--steps`` (``suites.compressed_stage1_overrides``), trained and tested
through the same runner as the comparison benchmark (``benchmark.executor``: one
process per run, wall time measured from outside, finished runs skipped when the
command is repeated). The launcher is threestudio's ``launch.py`` in
``--threestudio-root`` (the extension is linked into it first), any ``--launcher``, or by
default the threestudio stand-in shipped with the tests, run in the repository root.
Words after ``--`` are launcher overrides for every run, applied last (over a variant's own).

Outputs in ``--out``: ``runs/`` (trial directories), ``logs/``, ``records/`` (the
runner's), ``runs.csv``, ``results.csv``, ``results.md`` and the plots (``report``).
"""
import argparse
import sys
from pathlib import Path
from typing import List

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "stabledreamer.yaml"
STANDIN_LAUNCHER = REPO_ROOT / "tests" / "threestudio_standin" / "launch.py"


def build_parser() -> argparse.ArgumentParser:
    from .objects import OBJECTS
    from .suites import SUITES

    parser = argparse.ArgumentParser(
        prog="python -m threestudio_stabledreamer.lab",
        description="Known-answer lab: score distillation against an exact denoiser over renders of "
        "procedural objects; scores (PSNR, SSIM, IoU, multi-face) against the ground truth.",
    )
    parser.add_argument("--suite", nargs="+", default=["goals", "multiface"], choices=sorted(SUITES),
                        help="experiment suites (default: goals multiface); " +
                        "; ".join(f"{k}: {', '.join(v)}" for k, v in SUITES.items()))
    parser.add_argument("--objects", nargs="+", default=sorted(OBJECTS), choices=sorted(OBJECTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds of the multi-seed suites (multiface, schedules); the others use the first")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (default 1000)")
    parser.add_argument("--eval-every", type=int, default=100, help="checkpoint (and curve point) interval")
    parser.add_argument("--eval-resolution", type=int, default=64, help="side of the held-out views (pixels)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config the lab swaps into")
    parser.add_argument("--out", type=Path, default=Path("outputs/lab"), help="output directory")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--threestudio-root", type=Path, help="threestudio checkout: link the extension, run its launch.py")
    where.add_argument("--launcher", type=Path, help="any launch.py with threestudio's command line")
    parser.add_argument("--launcher-cwd", type=Path, default=None,
                        help="working directory of --launcher, whose ./custom/ holds the extension")
    parser.add_argument("--gpus", default="cpu", help="comma-separated GPU ids, one job each, or 'cpu' (default)")
    parser.add_argument("--progress-interval", type=float, default=30.0, help="seconds between status lines")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="launcher overrides for every run (after --)")
    return parser


def _launcher(args) -> tuple:
    if args.threestudio_root is not None:
        from ..link import LinkError, link_into

        root = args.threestudio_root.expanduser().resolve()
        try:
            for line in link_into(root):
                print(line)
        except LinkError as error:
            raise SystemExit(f"error: --threestudio-root: {error}")
        return root / "launch.py", root
    if args.launcher is not None:
        launcher = args.launcher.expanduser().resolve()
        return launcher, (args.launcher_cwd or launcher.parent).expanduser().resolve()
    if not STANDIN_LAUNCHER.is_file():
        raise SystemExit(f"error: the threestudio stand-in ({STANDIN_LAUNCHER}) is missing; give "
                         "--threestudio-root or --launcher")
    return STANDIN_LAUNCHER, REPO_ROOT


def main(argv: List[str] = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "eval_every", "eval_resolution"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    bad = [o for o in args.overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise SystemExit(f"error: overrides {bad} are not KEY=VALUE")
    if not args.config.is_file():
        raise SystemExit(f"error: --config: '{args.config}' does not exist")
    launcher, launcher_cwd = _launcher(args)
    if not launcher.is_file() or not launcher_cwd.is_dir():
        raise SystemExit(f"error: launcher '{launcher}' or its working directory '{launcher_cwd}' does not exist")

    from ..benchmark.cli import device_slots
    from ..benchmark.executor import LaunchSettings, execute_all
    from ..benchmark.progress import ProgressBoard
    from ..benchmark.runs import Method, Run
    from .evaluate import score_trial
    from .objects import make_object
    from .report import LabResult, plot, write_results, write_runs_csv
    from .scores import EvalCameras, GroundTruthViews
    from .suites import SUITES, compressed_stage1_overrides, lab_overrides, variants_of

    variants = variants_of(args.suite)
    multi_seed = {name for suite in ("multiface", "schedules") if suite in args.suite for name in SUITES[suite]}
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = args.config.expanduser().resolve()
    try:
        compression, factor = compressed_stage1_overrides(config, args.steps)
    except ValueError as error:
        raise SystemExit(f"error: {error}")

    labels, runs = {}, []
    for variant in variants:
        for seed in args.seeds if variant.name in multi_seed else args.seeds[:1]:
            # the user's overrides come last, so they win over the variant's own
            method = Method(f"{variant.name}-s{seed}", config, (*variant.overrides, f"seed={seed}", *args.overrides))
            labels[method.name] = (variant.name, seed)
            for index, obj in enumerate(args.objects):
                runs.append(Run(method=method, prompt=obj, prompt_index=index))
    print(f"lab: {len(runs)} runs ({len(variants)} variants, objects {args.objects}, {args.steps} steps each) "
          f"via {launcher}; output {out}", flush=True)
    print(f"lab: stage 1 of {config.name} compressed by {factor:g}: {' '.join(compression)}", flush=True)

    board = ProgressBoard(total=len(runs), interval=args.progress_interval)
    settings = LaunchSettings(launcher=launcher, launcher_cwd=launcher_cwd, out=out,
                              extra_overrides=(*lab_overrides(args.steps, args.eval_every), *compression))
    records, failures = execute_all(runs, settings, device_slots(args.gpus), board)

    cameras = EvalCameras(resolution=args.eval_resolution)
    _, _, elevation, azimuth = cameras.cameras()
    ground_truth = {}
    results = []
    for number, record in enumerate(sorted(records, key=lambda r: (r.method, r.prompt)), start=1):
        if record.prompt not in ground_truth:
            ground_truth[record.prompt] = GroundTruthViews.of(make_object(record.prompt), cameras)
        scores = score_trial(Path(record.trial_dir), ground_truth[record.prompt], cameras)
        variant, seed = labels[record.method]
        results.append(LabResult(variant, record.prompt, seed, scores, record.wall_time_s,
                                 azimuth.tolist(), elevation.tolist()))
        print(f"scored {number}/{len(records)}: {record.method} {record.prompt}: PSNR {scores['psnr']:.2f} dB, "
              f"SSIM {scores['ssim']:.3f}, IoU {scores['iou']:.3f}, multi-face {scores['multi_face']:.3f}",
              flush=True)
    if results:
        write_runs_csv(out / "runs.csv", results)
        write_results(out, results, {v.name: v.description for v in variants}, args.objects)
        plots = plot(out, results, [v.name for v in variants])
        print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'runs.csv'}, "
              + ", ".join(str(p) for p in plots), flush=True)
        print((out / "results.md").read_text(encoding="utf-8"))
    for run, note in failures:
        print(f"FAILED: {run.label}: {note}", file=sys.stderr)
    return 1 if failures else 0

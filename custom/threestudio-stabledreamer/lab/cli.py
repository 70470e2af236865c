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
``--variants`` runs named variants in place of the suites' (e.g. one stage-2 variant on
one object). Words after ``--`` are launcher overrides for every run, applied last (over
a variant's own).

Outputs in ``--out``: ``runs/`` (trial directories), ``logs/``, ``records/`` (the
runner's), ``runs.csv``, ``results.csv``, ``results.md``, the plots and ``results.html``
(``report``), and in each trial directory ``truth-vs-result.png``.
``--figures DIR`` instead makes the README's pictures (``figures``).

``run_lab`` is the same as a function, for the figures and the CPU main job.
"""
import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "stabledreamer.yaml"
DEFAULT_LAB_VAE = REPO_ROOT / ".cache" / "lab-vae"
STANDIN_LAUNCHER = REPO_ROOT / "tests" / "threestudio_standin" / "launch.py"


def build_parser() -> argparse.ArgumentParser:
    from .objects import OBJECTS
    from .suites import SUITES, VARIANTS

    parser = argparse.ArgumentParser(
        prog="python -m threestudio_stabledreamer.lab",
        description="Known-answer lab: score distillation against an exact denoiser over renders of "
        "procedural objects; scores (PSNR, SSIM, IoU, multi-face) against the ground truth.",
    )
    parser.add_argument("--suite", nargs="+", default=["goals", "multiface"], choices=sorted(SUITES),
                        help="experiment suites (default: goals multiface); " +
                        "; ".join(f"{k}: {', '.join(v)}" for k, v in SUITES.items()))
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS), metavar="VARIANT",
                        help="run these variants in place of --suite's: " + ", ".join(sorted(VARIANTS)))
    parser.add_argument("--objects", nargs="+", default=sorted(OBJECTS), choices=sorted(OBJECTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds of the multi-seed suites (multiface, schedules); the others use the first")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default 1000; 500 with --figures)")
    parser.add_argument("--eval-every", type=int, default=100, help="checkpoint (and curve point) interval")
    parser.add_argument("--eval-resolution", type=int, default=64, help="side of the held-out views (pixels)")
    parser.add_argument("--test-views", type=int, default=4,
                        help="views of each run's test turntable (default 4; the config's is 120)")
    parser.add_argument("--test-resolution", type=int, default=64,
                        help="side of the turntable and validation views in pixels (default 64)")
    parser.add_argument("--mesh", action="store_true", help="also export the config's meshes (OBJ, GLB)")
    parser.add_argument("--figures", type=Path, metavar="DIR",
                        help="make the README's pictures in DIR (objects.png, multiface.png, reconstruction.png) "
                        "from the runs they need in --out (default outputs/lab/figures), at --steps (default "
                        "500 here); --suite and --objects are ignored")
    parser.add_argument("--two-stage", action="store_true",
                        help="keep the config's stage 2 with the lab's latent prior, compressed as stage 1 "
                        "(--steps is stage 1's length; the curve scores every --eval-every steps)")
    parser.add_argument("--lab-vae", type=Path, default=DEFAULT_LAB_VAE,
                        help=f"the lab's fitted VAE for --two-stage, fitted there once (default {DEFAULT_LAB_VAE})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config the lab swaps into")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default outputs/lab; outputs/lab/figures with --figures)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--threestudio-root", type=Path, help="threestudio checkout: link the extension, run its launch.py")
    where.add_argument("--launcher", type=Path, help="any launch.py with threestudio's command line")
    parser.add_argument("--launcher-cwd", type=Path, default=None,
                        help="working directory of --launcher, whose ./custom/ holds the extension")
    parser.add_argument("--gpus", default="cpu", help="comma-separated GPU ids, one job each, or 'cpu' (default)")
    parser.add_argument("--progress-interval", type=float, default=30.0, help="seconds between status lines")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="launcher overrides for every run (after --)")
    return parser


def launcher_of(threestudio_root: Optional[Path] = None, launcher: Optional[Path] = None,
                launcher_cwd: Optional[Path] = None) -> Tuple[Path, Path]:
    """(launch.py, its working directory): threestudio's (the extension linked in first),
    any launcher, or the stand-in in the repository root."""
    if threestudio_root is not None:
        from ..link import LinkError, link_into

        root = threestudio_root.expanduser().resolve()
        try:
            for line in link_into(root):
                print(line)
        except LinkError as error:
            raise SystemExit(f"error: --threestudio-root: {error}")
        return root / "launch.py", root
    if launcher is not None:
        launcher = launcher.expanduser().resolve()
        return launcher, (launcher_cwd or launcher.parent).expanduser().resolve()
    if not STANDIN_LAUNCHER.is_file():
        raise SystemExit(f"error: the threestudio stand-in ({STANDIN_LAUNCHER}) is missing; give "
                         "--threestudio-root or --launcher")
    return STANDIN_LAUNCHER, REPO_ROOT



def stage2_start_step(trial: Path) -> Optional[int]:
    """The trial's ``system.stage2_start_step`` as the launcher resolved it (None: stage 1 only)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(trial / "configs" / "parsed.yaml"), "system.stage2_start_step")


@dataclass
class LabSettings:
    """What ``run_lab`` runs: every variant of ``suites`` on every object (and seed, for the
    multi-seed suites), ``steps`` long, on ``launcher`` in ``launcher_cwd``."""

    suites: Sequence[str]
    objects: Sequence[str]
    out: Path
    steps: int = 1000
    seeds: Sequence[int] = (0,)
    eval_every: int = 100
    eval_resolution: int = 64
    test_views: int = 4
    test_resolution: int = 64
    mesh: bool = False
    config: Path = DEFAULT_CONFIG
    two_stage: bool = False
    lab_vae: Path = DEFAULT_LAB_VAE
    launcher: Path = STANDIN_LAUNCHER
    launcher_cwd: Path = REPO_ROOT
    gpus: str = "cpu"
    progress_interval: float = 30.0
    overrides: Sequence[str] = field(default_factory=tuple)
    variant_objects: Dict[str, Sequence[str]] = field(default_factory=dict)
    """Objects of the named variants, in place of ``objects``."""
    variants: Sequence = ()
    """Variants (``suites.Variant``) to run in place of those of ``suites``."""
    variant_seeds: Dict[str, Sequence[int]] = field(default_factory=dict)
    """Seeds of the named variants, in place of ``seeds``."""


@dataclass
class LabOutcome:
    results: list  # report.LabResult, one per finished run
    failures: list  # (benchmark.runs.Run, note)
    out: Path


def run_lab(settings: LabSettings) -> LabOutcome:
    """Run (or reuse) the runs, score them, write the tables, plots, pictures and page."""
    from ..benchmark.cli import device_slots
    from ..benchmark.executor import LaunchSettings, execute_all
    from ..benchmark.progress import ProgressBoard
    from ..benchmark.runs import Method, Run
    from .evaluate import final_ply, read_ply_params, score_trial
    from .objects import make_object
    from .pictures import truth_vs_result
    from .report import TRUTH_VS_RESULT, LabResult, plot, write_results, write_results_html, write_runs_csv
    from .scores import EvalCameras, GroundTruthViews
    from .latent_vae import fit_lab_vae
    from .suites import SUITES, compressed_stage1_overrides, lab_overrides, two_stage_overrides, variants_of

    variants = list(settings.variants) or variants_of(settings.suites)
    stage2_variants = [v.name for v in variants if v.two_stage]
    if stage2_variants and not settings.two_stage:
        raise SystemExit(f"error: variants {stage2_variants} vary stage 2 and need --two-stage")
    multi_seed = {name for suite in ("multiface", "schedules") if suite in settings.suites for name in SUITES[suite]}
    out = Path(settings.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = Path(settings.config).expanduser().resolve()
    try:
        compression, factor = compressed_stage1_overrides(config, settings.steps)
        if settings.two_stage:
            compression += two_stage_overrides(config, settings.steps, factor, fit_lab_vae(settings.lab_vae))
    except ValueError as error:
        raise SystemExit(f"error: {error}")

    labels, runs = {}, []
    for variant in variants:
        seeds = settings.seeds if variant.name in multi_seed else settings.seeds[:1]
        for seed in settings.variant_seeds.get(variant.name, seeds):
            # the user's overrides come last, so they win over the variant's own
            method = Method(f"{variant.name}-s{seed}", config,
                            (*variant.overrides, f"seed={seed}", *settings.overrides))
            labels[method.name] = (variant.name, seed)
            for index, obj in enumerate(settings.variant_objects.get(variant.name, settings.objects)):
                runs.append(Run(method=method, prompt=obj, prompt_index=index))
    print(f"lab: {len(runs)} runs ({len(variants)} variants, objects {list(settings.objects)}, {settings.steps} "
          f"steps each) via {settings.launcher}; output {out}", flush=True)
    print(f"lab: stage 1 of {config.name} compressed by {factor:g}: {' '.join(compression)}", flush=True)

    board = ProgressBoard(total=len(runs), interval=settings.progress_interval)
    extra = lab_overrides(settings.steps, settings.eval_every, settings.test_views, settings.test_resolution,
                          settings.mesh)
    launch = LaunchSettings(launcher=Path(settings.launcher), launcher_cwd=Path(settings.launcher_cwd), out=out,
                            extra_overrides=(*extra, *compression))
    records, failures = execute_all(runs, launch, device_slots(settings.gpus), board)

    cameras = EvalCameras(resolution=settings.eval_resolution)
    _, _, elevation, azimuth = cameras.cameras()
    ground_truth = {}
    results = []
    for number, record in enumerate(sorted(records, key=lambda r: (r.method, r.prompt)), start=1):
        if record.prompt not in ground_truth:
            ground_truth[record.prompt] = GroundTruthViews.of(make_object(record.prompt), cameras)
        trial = Path(record.trial_dir)
        scores = score_trial(trial, ground_truth[record.prompt], cameras)
        variant, seed = labels[record.method]
        truth_vs_result(trial / TRUTH_VS_RESULT, make_object(record.prompt), read_ply_params(final_ply(trial)[1]),
                        f"{variant}\n{scores['psnr']:.1f} dB", settings.test_resolution)
        results.append(LabResult(variant, record.prompt, seed, scores, record.wall_time_s,
                                 azimuth.tolist(), elevation.tolist(), str(trial), stage2_start_step(trial)))
        print(f"scored {number}/{len(records)}: {record.method} {record.prompt}: PSNR {scores['psnr']:.2f} dB, "
              f"SSIM {scores['ssim']:.3f}, IoU {scores['iou']:.3f}, multi-face {scores['multi_face']:.3f}",
              flush=True)
    if results:
        descriptions = {v.name: v.description for v in variants}
        write_runs_csv(out / "runs.csv", results)
        write_results(out, results, descriptions, settings.objects)
        plots = plot(out, results, [v.name for v in variants])
        page = write_results_html(out, results, descriptions, plots)
        print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'runs.csv'}, "
              + ", ".join(str(p) for p in plots) + f", {page}", flush=True)
        print((out / "results.md").read_text(encoding="utf-8"))
    for run, note in failures:
        print(f"FAILED: {run.label}: {note}", file=sys.stderr)
    return LabOutcome(results, failures, out)


def main(argv: List[str] = None) -> int:
    args = build_parser().parse_args(argv)
    figures = args.figures is not None
    if args.steps is None:
        args.steps = 500 if figures else 1000
    if args.out is None:
        args.out = Path("outputs/lab/figures" if figures else "outputs/lab")
    for name in ("steps", "eval_every", "eval_resolution", "test_views", "test_resolution"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    bad = [o for o in args.overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise SystemExit(f"error: overrides {bad} are not KEY=VALUE")
    if not args.config.is_file():
        raise SystemExit(f"error: --config: '{args.config}' does not exist")
    launcher, launcher_cwd = launcher_of(args.threestudio_root, args.launcher, args.launcher_cwd)
    if not launcher.is_file() or not launcher_cwd.is_dir():
        raise SystemExit(f"error: launcher '{launcher}' or its working directory '{launcher_cwd}' does not exist")
    from .suites import VARIANTS

    settings = LabSettings(
        suites=args.suite, variants=[VARIANTS[name] for name in args.variants or ()], objects=args.objects,
        out=args.out, steps=args.steps, seeds=args.seeds,
        eval_every=args.eval_every, eval_resolution=args.eval_resolution, test_views=args.test_views,
        test_resolution=args.test_resolution, mesh=args.mesh, config=args.config, two_stage=args.two_stage,
        lab_vae=args.lab_vae, launcher=launcher,
        launcher_cwd=launcher_cwd, gpus=args.gpus, progress_interval=args.progress_interval,
        overrides=tuple(args.overrides),
    )
    if figures:
        from .figures import make_figures

        return make_figures(args.figures, settings)
    return 1 if run_lab(settings).failures else 0

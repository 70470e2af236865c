"""Run the main job: ``python -m threestudio_stabledreamer.run --prompt "..." [--threestudio DIR]``.

With a threestudio checkout (``--threestudio`` or ``$THREESTUDIO_ROOT``) and a CUDA GPU,
sets it up (``stabledreamer-setup-threestudio``: threestudio's requirements under this
repository's constraints, the extension linked in) and runs ``configs/stabledreamer.yaml``
there with threestudio's own ``launch.py``. A ``--threestudio`` that is not a checkout is an
error on every machine. Otherwise the prompt cannot be honoured, and it runs the
known-answer job (``run_known_answer``): the config with the lab's exact prior in place
of the diffusion model, rebuilding a known object (``--object``, ``--steps``) that the
result is scored against. ``--smoke`` instead builds the tiny local models and runs
``configs/stabledreamer-cpu.yaml`` through the threestudio stand-in shipped with the
tests: that run shows the pipeline working end to end; it is not a real result.
Every run ends by printing where the turntable video, the Gaussians' PLY and the mesh
files are. Further ``a.b=c`` arguments are passed to the launcher as config overrides.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

EXTENSION_NAME = "threestudio-stabledreamer"
MAIN_CONFIG = "stabledreamer.yaml"
SMOKE_CONFIG = "stabledreamer-cpu.yaml"


class RunError(Exception):
    """A problem that stops the run; the message says what and how to fix it."""


def extension_dir() -> Path:
    return Path(__file__).resolve().parent


def source_checkout() -> Path:
    """The repository holding this extension (an editable install from a clone)."""
    repo = extension_dir().parent.parent
    if not (repo / "configs" / SMOKE_CONFIG).is_file():
        raise RunError(
            f"{extension_dir()} is not inside a clone of this repository (no configs/{SMOKE_CONFIG} "
            "next to it); clone the repository and install it with `pip install -e .`"
        )
    return repo


def prompt_override(prompt: str) -> str:
    """The prompt as a dot-list override; JSON quoting keeps commas and colons literal."""
    if not prompt or not prompt.strip():
        raise RunError("--prompt is empty or missing: give the text prompt of the object to generate")
    return f"system.prompt_processor.prompt={json.dumps(prompt)}"


def trial_dirs(exp_root: Path) -> set:
    return {p for p in exp_root.glob("*/*") if p.is_dir()}


def launch(command: List[str], cwd: Path, env: Dict[str, str], exp_root: Path) -> Path:
    """Run a launcher command; returns the trial directory it created."""
    before = trial_dirs(exp_root)
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=cwd, env=env)
    if completed.returncode != 0:
        raise RunError(f"the launcher exited with status {completed.returncode} (see its output above)")
    created = sorted(trial_dirs(exp_root) - before, key=lambda p: p.stat().st_mtime)
    if not created:
        raise RunError(f"the launcher finished but created no trial directory under {exp_root}")
    return created[-1]


def threestudio_checkout(value: Optional[Path]) -> Optional[Path]:
    """The checkout named by ``--threestudio`` (or ``$THREESTUDIO_ROOT``), resolved; None when
    neither is given. One that does not exist or is not a threestudio 0.2.3 checkout is an
    error on every machine, with or without CUDA."""
    if value is None:
        return None
    from .setup_threestudio import SetupError, check_checkout

    root = value.expanduser().resolve()
    if not root.exists():
        raise RunError(
            f"--threestudio (or $THREESTUDIO_ROOT) '{value}' does not exist: set it up with "
            f"`stabledreamer-setup-threestudio {value}` (it clones threestudio there), or give neither "
            "for the CPU smoke run"
        )
    try:
        check_checkout(root)
    except SetupError as error:
        raise RunError(f"--threestudio (or $THREESTUDIO_ROOT): {error}") from error
    return root


def set_up_threestudio(root: Path) -> None:
    """``stabledreamer-setup-threestudio --gpu root`` (quick when it was done before)."""
    from .setup_threestudio import SetupError, setup

    try:
        setup(root, mode="gpu")
    except SetupError as error:
        raise RunError(f"setting up threestudio in {root} failed: {error}") from error


def run_in_threestudio(root: Path, gpu: str, prompt: str, overrides: Sequence[str], exp_root: Path) -> Path:
    from .link import LinkError, link_into

    try:
        for line in link_into(root):
            print(line)
    except LinkError as error:
        raise RunError(f"linking into {root} failed: {error}") from error
    command = [sys.executable, "launch.py", "--config", f"configs/{MAIN_CONFIG}", "--train", "--gpu", gpu,
               prompt_override(prompt), f"exp_root_dir={exp_root}", *overrides]
    return launch(command, root, dict(os.environ), exp_root)


def run_smoke(workdir: Path, prompt: str, overrides: Sequence[str], exp_root: Path) -> Path:
    from .tiny_models import build_tiny_models

    repo = source_checkout()
    standin = repo / "tests" / "threestudio_standin"
    if not (standin / "launch.py").is_file():
        raise RunError(f"the threestudio stand-in is missing ({standin / 'launch.py'}); use a full clone")
    tiny_root = repo / ".cache" / "tiny-models"
    print(f"Building (or reusing) the tiny models in {tiny_root} ...", flush=True)
    build_tiny_models(tiny_root)
    custom = workdir / "custom" / EXTENSION_NAME
    custom.parent.mkdir(parents=True, exist_ok=True)
    if not custom.is_symlink():
        if custom.exists():
            raise RunError(f"{custom} exists and is not a link to {extension_dir()}; remove it")
        custom.symlink_to(extension_dir(), target_is_directory=True)
    elif custom.resolve() != extension_dir():
        raise RunError(f"{custom} links to {os.readlink(custom)}, not to {extension_dir()}; remove it")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(standin), *filter(None, [env.get("PYTHONPATH")])])
    env["STABLEDREAMER_TINY_MODELS"] = str(tiny_root)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    command = [sys.executable, str(standin / "launch.py"), "--config", str(repo / "configs" / SMOKE_CONFIG),
               "--train", prompt_override(prompt), f"exp_root_dir={exp_root}", *overrides]
    return launch(command, workdir, env, exp_root)


def newest(paths: List[Path]) -> Optional[Path]:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def report_outputs(trial: Path) -> bool:
    """Print where the results are; False when one is missing."""
    save = trial / "save"
    found = {
        "turntable video": newest(list(save.glob("it*-test.mp4"))),
        "Gaussians (3DGS PLY)": newest(list(save.glob("it*-export/*.ply"))),
        "mesh (OBJ)": newest(list(save.glob("it*-export/*.obj"))),
        "mesh (GLB)": newest(list(save.glob("it*-export/*.glb"))),
        "metrics": save / "metrics.json" if (save / "metrics.json").is_file() else None,
    }
    print(f"\nTrial directory: {trial}")
    for label, path in found.items():
        print(f"  {label:22s} {path if path is not None else 'MISSING'}")
    return all(path is not None for path in found.values())


def missing_for_gpu(root: Optional[Path], has_gpu: bool) -> str:
    """What the GPU run lacks, in words ("" when nothing)."""
    return " and ".join(what for what, ok in (
        ("no threestudio checkout (--threestudio or $THREESTUDIO_ROOT)", root is not None),
        ("no CUDA GPU", has_gpu)) if not ok)


def known_answer_banner(missing: str, prompt: Optional[str], obj: str, steps: int) -> str:
    asked = f'The prompt given, "{prompt}", is not used.\n' if prompt else ""
    return (
        "\n" + "=" * 78 + "\n" + missing[0].upper() + missing[1:] + ".\n"
        "Without a GPU the text prompt cannot be honoured: the diffusion models that turn a\n"
        f"prompt into 3D need one. {asked}Running instead the known-answer job: the real\n"
        f"pipeline of configs/{MAIN_CONFIG} (our IF guidance, annealing, Gaussians, density\n"
        "control) with the lab's exact image prior in place of DeepFloyd IF, its stage 1\n"
        f"compressed to {steps} steps, rebuilding a known object ({obj}); the result is scored\n"
        "against it. --object head|house|duck picks the object, --steps the length, --smoke\n"
        "runs the tiny-model smoke run instead.\n" + "=" * 78 + "\n"
    )


def run_known_answer(obj: str, steps: int, prompt: Optional[str], missing: str, overrides: Sequence[str],
                     root: Path) -> int:
    """The CPU main job (``lab.known_answer``); prints where its outputs are and its scores."""
    from .lab.known_answer import KnownAnswerError, check_inputs
    from .lab.known_answer import run_known_answer as known_answer

    try:
        check_inputs(obj, steps)
    except KnownAnswerError as error:
        raise RunError(str(error)) from error
    print(known_answer_banner(missing, prompt, obj, steps), flush=True)
    try:
        run = known_answer(obj, steps, root, overrides=overrides)
    except RuntimeError as error:
        raise RunError(str(error)) from error
    print(f"\nTrial directory: {run.trial_dir}")
    for label, path in run.outputs.items():
        print(f"  {label:24s} {path if path is not None else 'MISSING'}")
    scores = run.scores
    print(f"\nScores of the {obj} against the ground truth (72 held-out views): PSNR {scores['psnr']:.2f} dB, "
          f"SSIM {scores['ssim']:.3f}, silhouette IoU {scores['iou']:.3f}, multi-face {scores['multi_face']:.3f} "
          f"(0 = true back, 1 = the front copied onto the back); {scores['num_gaussians']} Gaussians.")
    return 0 if all(path is not None for path in run.outputs.values()) else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m threestudio_stabledreamer.run",
        description="Run StableDreamer: on a GPU inside a threestudio checkout, else the known-answer run "
        "on a CPU (or, with --smoke, the tiny-model smoke run).",
    )
    parser.add_argument("--prompt", default=None,
                        help="text prompt of the object to generate (required on a GPU and with --smoke)")
    parser.add_argument("--threestudio", type=Path, default=os.environ.get("THREESTUDIO_ROOT") or None,
                        help="threestudio checkout (default: $THREESTUDIO_ROOT)")
    parser.add_argument("--gpu", default="0", help="GPU index(es) for threestudio's launch.py")
    parser.add_argument("--workdir", type=Path, default=Path("stabledreamer-smoke"),
                        help="working directory of the CPU smoke run (default: ./stabledreamer-smoke)")
    parser.add_argument("--outputs", type=Path, default=None,
                        help="exp_root_dir of the run (default: <threestudio>/outputs or <workdir>/outputs)")
    parser.add_argument("--object", default=None,
                        help="without a GPU: the known object to rebuild, head, house or duck (default head)")
    parser.add_argument("--steps", type=int, default=None,
                        help="without a GPU: training steps of the known-answer run (default 500)")
    parser.add_argument("--known-answer-dir", type=Path, default=Path("stabledreamer-known-answer"),
                        help="without a GPU: where the known-answer runs go (default ./stabledreamer-known-answer)")
    parser.add_argument("--smoke", action="store_true",
                        help="run the CPU smoke configuration on tiny random models instead (not a real result)")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if "=" not in o or o.startswith("-")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; config overrides look like a.b=c")

    import torch

    has_gpu = torch.cuda.is_available()
    try:
        root = threestudio_checkout(args.threestudio)
        on_gpu = root is not None and has_gpu and not args.smoke
        known_answer_options = [f"--{name}" for name in ("object", "steps") if getattr(args, name) is not None]
        if known_answer_options and (on_gpu or args.smoke):
            raise RunError(
                f"{' and '.join(known_answer_options)} only apply to the known-answer run on a CPU, not to "
                + ("--smoke" if args.smoke else "the GPU run, whose prompt and config say what to build and for how long")
            )
        if on_gpu or args.smoke:
            prompt_override(args.prompt)
        else:
            return run_known_answer(args.object or "head", 500 if args.steps is None else args.steps, args.prompt,
                                    missing_for_gpu(root, has_gpu), overrides, args.known_answer_dir)
        if on_gpu:
            set_up_threestudio(root)
            exp_root = (args.outputs or root / "outputs").resolve()
            trial = run_in_threestudio(root, args.gpu, args.prompt, overrides, exp_root)
        else:
            missing = missing_for_gpu(root, has_gpu) or "--smoke was given"
            print(
                "\n" + "=" * 78 + "\n" + missing[0].upper() + missing[1:] + ".\n"
                f"Running the CPU smoke configuration configs/{SMOKE_CONFIG} on tiny, randomly\n"
                "initialised models through the threestudio stand-in. This shows the pipeline\n"
                "working end to end; it is NOT a real result (the tiny models produce noise).\n" + "=" * 78 + "\n",
                flush=True,
            )
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            exp_root = (args.outputs or workdir / "outputs").resolve()
            trial = run_smoke(workdir, args.prompt, overrides, exp_root)
    except RunError as error:
        print(f"threestudio_stabledreamer.run: error: {error}", file=sys.stderr)
        return 1
    return 0 if report_outputs(trial) else 1


if __name__ == "__main__":
    sys.exit(main())

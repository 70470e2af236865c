"""``python -m threestudio_stabledreamer.lab --figures docs/images``: the README's pictures.

Runs what the pictures need through ``run_lab`` (repeating the command reuses finished
runs and their scores): the ``goals`` suite (oracle and the config's stage 1) on every
object and the ``multiface`` suite (front-biased, leaky prior, uniform noise levels vs the
config's annealing) on the head, then writes

- ``objects.png``: ground truth | oracle | the config's result, per object, four azimuths;
- ``multiface.png``: the head's front and back views under both schedules;
- ``reconstruction.png``: render | x_t | x0_hat of the config's head run over training.
"""
import dataclasses
from pathlib import Path
from typing import Dict, Tuple

from .cli import LabSettings, run_lab
from .evaluate import final_ply, read_ply_params
from .objects import make_object
from .pictures import multiface_picture, objects_picture, reconstruction_picture
from .suites import SUITES

MULTIFACE_OBJECT = "head"
MULTIFACE_LABELS = {"biased-none": "uniform t (no annealing)", "biased-sqrt": "sqrt annealing (the config's)"}


def make_figures(directory: Path, settings: LabSettings) -> int:
    """Run (or reuse) the runs in ``settings.out`` and write the three pictures to ``directory``."""
    if MULTIFACE_OBJECT not in settings.objects:
        raise SystemExit(f"error: --figures needs the {MULTIFACE_OBJECT} among --objects, got {list(settings.objects)}")
    settings = dataclasses.replace(
        settings, suites=("goals", "multiface"), seeds=tuple(settings.seeds[:1]),
        variant_objects={name: (MULTIFACE_OBJECT,) for name in SUITES["multiface"]},
    )
    outcome = run_lab(settings)
    if outcome.failures:
        return 1
    runs: Dict[Tuple[str, str], object] = {(r.variant, r.object): r for r in outcome.results}

    def params(variant: str, obj: str):
        return read_ply_params(final_ply(Path(runs[variant, obj].trial_dir))[1])

    directory = Path(directory)
    entries = [(make_object(obj), params("oracle", obj), runs["oracle", obj].scores,
                params("stage1", obj), runs["stage1", obj].scores) for obj in settings.objects]
    written = [
        objects_picture(directory / "objects.png", entries),
        multiface_picture(directory / "multiface.png", make_object(MULTIFACE_OBJECT), [
            (label, params(variant, MULTIFACE_OBJECT), runs[variant, MULTIFACE_OBJECT].scores)
            for variant, label in MULTIFACE_LABELS.items()
        ]),
        reconstruction_picture(directory / "reconstruction.png", Path(runs["stage1", MULTIFACE_OBJECT].trial_dir),
                               title=f"{MULTIFACE_OBJECT}, the config's stage 1: the first training view"),
    ]
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"in all {sum(p.stat().st_size for p in written) / 1024:.0f} KiB from {settings.steps}-step runs:")
    for (variant, obj), result in sorted(runs.items()):
        print(f"  {variant:12s} {obj:6s} PSNR {result.scores['psnr']:.1f} dB, multi-face "
              f"{result.scores['multi_face']:.3f}")
    return 0

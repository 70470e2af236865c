"""The CPU main job: a known-answer run of the config, scored against the ground truth.

Without a GPU the text prompt cannot be honoured (no diffusion model runs on a CPU in
minutes), so ``python -m threestudio_stabledreamer.run`` runs the lab's ``config``
suite instead: ``configs/stabledreamer.yaml`` with the lab's exact prior in place of
DeepFloyd IF, its stage 1 compressed to ``steps``, through the launcher, on a known
object. The run renders the config's 120-view turntable and exports the PLY and the mesh
like a real run, and its result is scored against the object it should rebuild.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from .cli import LabSettings, run_lab
from .objects import OBJECTS
from .report import TRUTH_VS_RESULT, turntable_video

DEFAULT_OBJECT = "head"
DEFAULT_STEPS = 500
TEST_VIEWS = 120
TEST_RESOLUTION = 128
SCORES_FILE = "scores.json"


class KnownAnswerError(ValueError):
    """Bad input; the message names the value and what was expected."""


@dataclass
class KnownAnswer:
    trial_dir: Path
    outputs: Dict[str, Optional[Path]]
    scores: Dict[str, float]


def check_inputs(obj: str, steps: int) -> None:
    if obj not in OBJECTS:
        raise KnownAnswerError(f"--object must be one of {sorted(OBJECTS)}, got {obj!r}")
    if not isinstance(steps, int) or steps < 1:
        raise KnownAnswerError(f"--steps must be a positive number of training steps, got {steps!r}")


def output_dir(root: Path, obj: str, steps: int) -> Path:
    return Path(root) / f"{obj}-{steps}-steps"


def run_known_answer(obj: str = DEFAULT_OBJECT, steps: int = DEFAULT_STEPS,
                     root: Path = Path("stabledreamer-known-answer"), test_views: int = TEST_VIEWS,
                     test_resolution: int = TEST_RESOLUTION, progress_interval: float = 20.0,
                     overrides: Sequence[str] = ()) -> KnownAnswer:
    """Run (or reuse) the known-answer run of ``obj``; returns where its outputs are and its
    scores. ``overrides`` (``a.b=c``) go to the launcher after the lab's own."""
    check_inputs(obj, steps)
    out = output_dir(root, obj, steps).resolve()
    settings = LabSettings(suites=("config",), objects=(obj,), out=out, steps=steps, eval_every=steps,
                           test_views=test_views, test_resolution=test_resolution, mesh=True,
                           progress_interval=progress_interval, overrides=tuple(overrides))
    outcome = run_lab(settings)
    if outcome.failures or not outcome.results:
        run, note = outcome.failures[0] if outcome.failures else (None, "no result")
        raise RuntimeError(f"the known-answer run failed: {note} (log: {out / 'logs'})")
    result = outcome.results[0]
    trial = Path(result.trial_dir)
    exports = sorted(trial.glob("save/it*-export"), key=lambda p: int(p.name[2:-len("-export")]))

    def exported(pattern: str) -> Optional[Path]:
        found = sorted(exports[-1].glob(pattern)) if exports else []
        return found[0] if found else None

    scores = {name: float(result.scores[name]) for name in ("psnr", "ssim", "iou", "multi_face")}
    scores["num_gaussians"] = result.scores["num_gaussians"]
    (out / SCORES_FILE).write_text(json.dumps({"object": obj, "steps": steps, **scores}, indent=2) + "\n",
                                   encoding="utf-8")
    outputs = {
        "turntable video": turntable_video(trial),
        "Gaussians (3DGS PLY)": exported("*.ply"),
        "mesh (OBJ)": exported("*.obj"),
        "mesh (GLB)": exported("*.glb"),
        "ground truth vs result": trial / TRUTH_VS_RESULT if (trial / TRUTH_VS_RESULT).is_file() else None,
        "scores": out / SCORES_FILE,
        "page (results.html)": out / "results.html" if (out / "results.html").is_file() else None,
    }
    return KnownAnswer(trial, outputs, scores)

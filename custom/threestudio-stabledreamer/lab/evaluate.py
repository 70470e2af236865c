"""Scores of finished lab runs, read from their trial directories.

The final scores come from the exported PLY (``save/it<step>-export/model.ply``, the file
users get); the score-against-step curve from the checkpoints
(``ckpts/epoch=0-step=<s>.ckpt``, whose ``geometry._*`` tensors are the same
pre-activation values the PLY stores). Scoring renders every checkpoint at every
held-out camera, so the scores are kept in the trial directory (``lab-scores.json``) with
what they were computed from (cameras, ground truth, the files' sizes and times) and
reused while those are unchanged: repeating the lab command to gather a table costs
nothing for runs already scored.
"""
import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..core.ply import read_gaussian_ply
from .scores import EvalCameras, GroundTruthViews, score_params

EXPORT_DIR = re.compile(r"^it(\d+)-export$")
CHECKPOINT = re.compile(r"^epoch=\d+-step=(\d+)\.ckpt$")
SCORES_FILE = "lab-scores.json"
PARAMETER_NAMES = ("means", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest")


def final_ply(trial_dir: Path) -> Tuple[int, Path]:
    """(step, path) of the latest exported PLY."""
    save = Path(trial_dir) / "save"
    found = [(int(m.group(1)), p / "model.ply") for p in save.glob("it*-export")
             if (m := EXPORT_DIR.match(p.name)) and (p / "model.ply").is_file()]
    if not found:
        raise FileNotFoundError(f"{save}: no it<step>-export/model.ply (did the run export at the end of training?)")
    return max(found)


def read_ply_params(path: Path) -> Dict[str, torch.Tensor]:
    """Pre-activation Gaussians from a 3DGS PLY of any SH degree 0-3."""
    errors = []
    for degree in range(4):
        try:
            return read_gaussian_ply(path, degree)
        except ValueError as error:
            errors.append(str(error))
    raise ValueError(f"{path}: not a 3DGS PLY of SH degree 0-3 ({errors[-1]})")


def checkpoint_params(path: Path) -> Dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {name: state[f"geometry._{name}"].float() for name in PARAMETER_NAMES}


def checkpoints(trial_dir: Path) -> List[Tuple[int, Path]]:
    """(step, path) of the step-numbered checkpoints, by step."""
    found = [(int(m.group(1)), p) for p in (Path(trial_dir) / "ckpts").glob("*.ckpt") if (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def score_trial(trial_dir: Path, gt: GroundTruthViews, cameras: EvalCameras,
                curve: bool = True) -> Dict[str, object]:
    """Final scores (from the PLY) plus ``step`` and, with ``curve``, ``curve``: a list of
    (step, psnr, multi_face) from step 0 (the initial Gaussians are not saved: the curve
    starts at the first checkpoint) to the end."""
    trial_dir = Path(trial_dir)
    step, ply = final_ply(trial_dir)
    key = _scoring_inputs(trial_dir, ply, gt, cameras, curve)
    cache = trial_dir / SCORES_FILE
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("inputs") == key:
            return saved["scores"]
    result = json.loads(json.dumps(_score_files(trial_dir, step, ply, gt, cameras, curve)))
    cache.write_text(json.dumps({"inputs": key, "scores": result}), encoding="utf-8")
    return result


def _scoring_inputs(trial_dir: Path, ply: Path, gt: GroundTruthViews, cameras: EvalCameras, curve: bool) -> dict:
    """What a trial's scores depend on, as JSON values."""
    files = [ply] + ([path for _, path in checkpoints(trial_dir)] if curve else [])
    return json.loads(json.dumps({
        "curve": curve,
        "cameras": dataclasses.asdict(cameras),
        "ground_truth_sha1": hashlib.sha1(gt.truth.rgb.contiguous().numpy().tobytes()).hexdigest(),
        "files": [[str(p.relative_to(trial_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }))


def _score_files(trial_dir: Path, step: int, ply: Path, gt: GroundTruthViews, cameras: EvalCameras,
                 curve: bool) -> Dict[str, object]:
    params = read_ply_params(ply)
    result = score_params(params, gt, cameras)
    result["step"] = step
    result["num_gaussians"] = params["means"].shape[0]
    points: List[Tuple[int, float, float]] = []
    if curve:
        for ckpt_step, path in checkpoints(trial_dir):
            if ckpt_step == step:
                continue
            scores = score_params(checkpoint_params(path), gt, cameras)
            points.append((ckpt_step, scores["psnr"], scores["multi_face"]))
        points.append((step, result["psnr"], result["multi_face"]))
    result["curve"] = points
    return result

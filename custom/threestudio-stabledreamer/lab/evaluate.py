"""Scores of finished lab runs, read from their trial directories.

The final scores come from the exported PLY (``save/it<step>-export/model.ply``, the file
users get); the score-against-step curve from the checkpoints
(``ckpts/epoch=0-step=<s>.ckpt``, whose ``geometry._*`` tensors are the same
pre-activation values the PLY stores).
"""
import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..core.ply import read_gaussian_ply
from .scores import EvalCameras, GroundTruthViews, score_params

EXPORT_DIR = re.compile(r"^it(\d+)-export$")
CHECKPOINT = re.compile(r"^epoch=\d+-step=(\d+)\.ckpt$")
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
    step, ply = final_ply(trial_dir)
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

"""End to end through the launcher, as a user runs it: ``launch.py --config
configs/stabledreamer-cpu.yaml`` in a working directory whose ``custom/`` links the
extension, on the tiny models. The launcher is the stand-in's, or real threestudio's own
``launch.py`` with ``THREESTUDIO_ROOT`` set (``conftest.LAUNCHER``).

One training run (module fixture) is shared: it crosses the stage switch with densification
and pruning, then tests (120-frame turntable) and exports. Its prompt processors encode in
a spawned process, threestudio's default. Further runs resume from its
checkpoints, export from it, swap components by CLI overrides, and omit the prompt.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, NamedTuple

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from plyfile import PlyData

import threestudio
import threestudio_stabledreamer.geometry  # noqa: F401  (registers stabledreamer-gaussian)
from conftest import LAUNCHER, REPO_ROOT

CPU_CONFIG = REPO_ROOT / "configs" / "stabledreamer-cpu.yaml"
EXTENSION = REPO_ROOT / "custom" / "threestudio-stabledreamer"
TEST_COMPONENTS = REPO_ROOT / "tests" / "e2e_components"
PROMPT = 'system.prompt_processor.prompt="a hamburger"'
SHORT_EVAL = ["data.n_test_views=2", "system.export_on_fit_end=false"]
SPAWNED_ENCODING = ["system.prompt_processor.spawn=true", "system.prompt_processor_stage2.spawn=true"]
LAUNCH_TIMEOUT_S = 900


class UserDir(NamedTuple):
    """Where the user runs the launcher, and the environment naming the tiny models."""

    path: Path
    env: Dict[str, str]


def launch(user: UserDir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        cwd=user.path,
        env=user.env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    if check and result.returncode != 0:
        pytest.fail(f"launcher failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def trials(user: UserDir) -> set:
    return set((user.path / "outputs").glob("*/*@*"))


def train(user: UserDir, *overrides: str) -> Path:
    """Run ``--train`` with the CPU config; returns the new trial directory."""
    before = trials(user)
    launch(user, "--config", str(CPU_CONFIG), "--train", PROMPT, *overrides)
    (trial,) = trials(user) - before
    return trial


def checkpoint(trial: Path, step: int) -> Path:
    return trial / "ckpts" / f"epoch=0-step={step}.ckpt"


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory, tiny_models):
    """A user's working directory: ``custom/`` links the extension and the test doubles."""
    root = tmp_path_factory.mktemp("e2e")
    (root / "custom").mkdir()
    (root / "custom" / "threestudio-stabledreamer").symlink_to(EXTENSION, target_is_directory=True)
    (root / "custom" / "stabledreamer-test-components").symlink_to(TEST_COMPONENTS, target_is_directory=True)
    env = {**os.environ, "STABLEDREAMER_TINY_MODELS": str(tiny_models["deepfloyd-if"].parent)}
    return UserDir(root, env)


@pytest.fixture(scope="module")
def main_run(user_dir) -> Path:
    return train(user_dir, *SPAWNED_ENCODING)


@pytest.fixture(scope="module")
def metrics(main_run) -> dict:
    return json.loads((main_run / "save" / "metrics.json").read_text())


def test_training_crosses_the_stage_switch_with_densification_and_pruning(main_run, metrics):
    stage1, stage2 = metrics["stages"]["stage1"], metrics["stages"]["stage2"]
    assert (stage1["first_step"], stage1["last_step"], stage1["steps"]) == (0, 9, 10)
    assert (stage2["first_step"], stage2["last_step"], stage2["steps"]) == (10, 19, 10)
    assert stage1["guidance_type"] == "stabledreamer-deep-floyd-guidance"
    assert stage2["guidance_type"] == "stabledreamer-stable-diffusion-guidance"
    densification = metrics["densification"]
    assert densification["cloned"] + densification["split"] > 0
    assert densification["pruned"] > 0
    events = densification["events"]
    assert [e["step"] for e in events] == [4, 8, 12, 16]
    # Counts chain: each event's count = previous + cloned + split (one extra per split) - pruned.
    count = 800
    for event in events:
        count = count + event["cloned"] + event["split"] - event["pruned"]
        assert event["num_gaussians"] == count
    assert metrics["final_num_gaussians"] == count != 800
    last = load_checkpoint(main_run / "ckpts" / "last.ckpt")
    assert last["state_dict"]["geometry._means"].shape[0] == count


def test_metrics_json_has_every_field(metrics):
    for stage in ("stage1", "stage2"):
        record = metrics["stages"][stage]
        for key in ("steps", "wall_time_s", "load_time_s", "peak_memory_mib", "iterations_per_second"):
            assert record[key] is not None and record[key] > 0, (stage, key)
    for key in ("total_steps", "total_wall_time_s", "iterations_per_second", "final_num_gaussians",
                "device", "memory_measure", "global_step", "stage2_start_step"):
        assert key in metrics, key
    assert metrics["total_steps"] == 20 == metrics["global_step"]
    assert metrics["iterations_per_second"] == pytest.approx(20 / metrics["total_wall_time_s"])
    assert metrics["test"]["frames"] == 120


def test_reconstruction_views_exist_for_both_stages(main_run):
    names = sorted(p.name for p in (main_run / "save" / "recon").glob("*.png"))
    assert [n.split("-t")[0] for n in names] == [
        "stage1-it000000", "stage1-it000005", "stage2-it000010", "stage2-it000015"
    ]
    grid = iio.imread(main_run / "save" / "recon" / names[0])
    # batch 2 in stage 1: two rows of [render | noisy | x0_hat] at the largest tile size
    assert grid.shape[0] * 3 == grid.shape[1] * 2
    events = list((main_run / "tb_logs").rglob("events.out.tfevents.*"))
    assert events and any(b"reconstruction/stage2" in e.read_bytes() for e in events)


def test_validation_and_turntable_video(main_run):
    save = main_run / "save"
    assert (save / "it10-0.png").is_file() and (save / "it20-0.png").is_file()
    frames = imageio.mimread(save / "it20-test.mp4", memtest=False)
    # 120 views of [rgb | opacity | depth] at 32x32
    assert len(frames) == 120
    assert frames[0].shape[:2] == (32, 96)


def test_export_at_end_of_training(main_run):
    export = main_run / "save" / "it20-export"
    ply = PlyData.read(str(export / "model.ply"))
    last = load_checkpoint(main_run / "ckpts" / "last.ckpt")["state_dict"]
    means = np.stack([ply["vertex"][axis] for axis in "xyz"], axis=1)
    np.testing.assert_array_equal(means, last["geometry._means"].numpy())

    geometry = threestudio.find("stabledreamer-gaussian")({"init": {"type": "ply", "path": str(export / "model.ply")}})
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh_dc"):
        torch.testing.assert_close(getattr(geometry, f"_{name}").detach(), last[f"geometry._{name}"])

    for suffix in ("obj", "glb"):
        mesh = trimesh.load(export / f"model-mesh.{suffix}", force="mesh", process=False)
        assert len(mesh.faces) > 0
        assert np.abs(mesh.vertices).max() < 2.0


def test_export_command_from_a_checkpoint(user_dir, main_run):
    result = launch(user_dir, "--config", str(main_run / "configs" / "parsed.yaml"), "--export",
                    f"resume={main_run / 'ckpts' / 'epoch=0-step=15.ckpt'}", "data.n_test_views=2")
    export = main_run / "save" / "it15-export"
    ply = PlyData.read(str(export / "model.ply"))
    state = load_checkpoint(checkpoint(main_run, 15))["state_dict"]
    assert len(ply["vertex"]) == state["geometry._means"].shape[0]
    assert (export / "model-mesh.obj").is_file() and (export / "model-mesh.glb").is_file()
    assert "UNet" not in result.stdout + result.stderr  # exporting loads no diffusion model


@pytest.mark.parametrize("step, stage", [(5, 1), (15, 2)])
def test_resume_keeps_gaussians_and_stage_and_continues(user_dir, main_run, step, stage):
    saved = load_checkpoint(checkpoint(main_run, step))
    assert saved["global_step"] == step
    n_saved = saved["state_dict"]["geometry._means"].shape[0]
    assert n_saved != 800  # taken after a densification

    # pytorch-lightning 2.0 (threestudio's pin) writes last.ckpt only with a checkpoint
    # that every_n_train_steps triggers, never at the end of fit by itself
    trial = train(user_dir, f"resume={checkpoint(main_run, step)}", f"trainer.max_steps={step + 2}",
                  "checkpoint.every_n_train_steps=1", *SHORT_EVAL)

    resumed = json.loads((trial / "save" / "metrics.json").read_text())
    assert resumed["global_step"] == step + 2
    assert resumed["stages"][f"stage{stage}"]["last_step"] == step + 1
    original = json.loads((main_run / "save" / "metrics.json").read_text())
    if stage == 1:
        assert "stage2" not in resumed["stages"]  # stage-2 models were never loaded
    else:
        # stage 1 was neither run nor loaded again: its record is the checkpoint's
        assert resumed["stages"]["stage1"] == original["stages"]["stage1"]
    # The resumed run starts from the checkpoint's Gaussians: the final count is the saved
    # count changed only by the density-control events after the checkpoint.
    new_events = [e for e in resumed["densification"]["events"] if e["step"] > step]
    expected = n_saved + sum(e["cloned"] + e["split"] - e["pruned"] for e in new_events)
    last = load_checkpoint(trial / "ckpts" / "last.ckpt")
    assert last["global_step"] == step + 2
    assert last["stabledreamer"]["active_stage"] == stage
    assert last["state_dict"]["geometry._means"].shape[0] == expected == resumed["final_num_gaussians"]
    logs = (trial / "save" / "recon").glob("*.png")
    assert all(p.name.startswith(f"stage{stage}-") for p in logs)


def test_guidance_and_renderer_swapped_by_cli_overrides(user_dir):
    trial = train(
        user_dir,
        "system.stage2_start_step=1000",  # beyond max_steps: stage 1 only
        "system.guidance_type=test-trainable-guidance",
        "system.renderer_type=test-recording-rasterizer",
        "system.optimizer.params.guidance.lr=0.1",
        "system.loss.lambda_lora=1.0",
        "trainer.max_steps=6",
        "checkpoint.every_n_train_steps=6",
        *SHORT_EVAL,
    )
    last = load_checkpoint(trial / "ckpts" / "last.ckpt")
    assert int(last["state_dict"]["renderer.calls"]) >= 6
    # Adam with lr 0.1 moves offset from 0 towards 1 by about 0.1 per step.
    offset = float(last["state_dict"]["guidance.offset"])
    assert 0.3 < offset <= 1.0
    groups = [g.get("name") for g in last["optimizer_states"][0]["param_groups"]]
    assert "guidance" in groups
    metrics = json.loads((trial / "save" / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["stage1"]
    assert metrics["stages"]["stage1"]["guidance_type"] == "test-trainable-guidance"
    assert sorted(p.name for p in (trial / "save" / "recon").glob("*.png")) == [
        "stage1-it000000-t0.500-0.500.png", "stage1-it000005-t0.500-0.500.png"
    ]


def test_missing_prompt_fails_with_a_clear_message(user_dir):
    result = launch(user_dir, "--config", str(CPU_CONFIG), "--train", check=False)
    assert result.returncode != 0
    # OmegaConf 2.4 names the prompt; 2.3 (threestudio's pin) names the key whose
    # interpolation reaches it first: the trial directory's tag, "${rmspace:<prompt>,_}"
    assert re.search(r"Missing mandatory value: (system\.prompt_processor\.prompt|tag)\b",
                     result.stdout + result.stderr)

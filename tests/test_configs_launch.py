"""Every config in ``configs/`` trains a few steps, tests and exports through the launcher
(``conftest.LAUNCHER``: the stand-in's, or real threestudio's ``launch.py``), on the tiny
models at the CPU config's sizes (``tiny_run_overrides``). Stage switches come after two
steps. ``configs/stabledreamer-cpu.yaml`` itself is run by ``test_system_e2e.py``.
"""
import json
import os
import subprocess
import sys

import imageio
import pytest
import torch
from omegaconf import OmegaConf
from plyfile import PlyData

from conftest import LAUNCHER, REPO_ROOT, USES_REAL_THREESTUDIO
from tiny_run_overrides import CONFIGS, STAGE_SLOTS, cpu_size_overrides, override, tiny_model_overrides

STEPS = 4
SWITCH_STEP = 2
TEST_VIEWS = 4
LAUNCH_TIMEOUT_S = 900
CONFIG_NAMES = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "stabledreamer-cpu")
# Guidances of threestudio itself, which the stand-in does not have.
THREESTUDIO_GUIDANCES = {"stable-diffusion-vsd-guidance"}


def test_every_config_is_run():
    assert CONFIG_NAMES == [
        "gaussian-dreamfusion", "gaussian-hifa", "gaussian-prolificdreamer", "stabledreamer",
        "stabledreamer-if-only", "stabledreamer-no-anneal", "stabledreamer-sd-only",
    ]


def guidance_types_by_stage(system: dict, stage2_start_step):
    """{"stage1": type, "stage2": type} of the stages that run within ``STEPS`` steps."""
    stages = {}
    if stage2_start_step != 0:
        stages["stage1"] = system[f"{STAGE_SLOTS[0][1]}_type"]
    if stage2_start_step is not None:
        stages["stage2"] = system[f"{STAGE_SLOTS[1][1]}_type"]
    return stages


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("configs")
    (root / "custom").mkdir()
    (root / "custom" / "threestudio-stabledreamer").symlink_to(
        REPO_ROOT / "custom" / "threestudio-stabledreamer", target_is_directory=True
    )
    return root


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_trains_tests_and_exports_through_the_launcher(name, user_dir, tiny_models):
    config = OmegaConf.load(CONFIGS / f"{name}.yaml")
    system = {key: OmegaConf.select(config, f"system.{key}") for key in
              ("stage2_start_step", *(f"{guidance}_type" for _, guidance in STAGE_SLOTS))}
    used = {system[f"{guidance}_type"] for _, guidance in STAGE_SLOTS}
    if not USES_REAL_THREESTUDIO and used & THREESTUDIO_GUIDANCES:
        pytest.skip(f"{sorted(used & THREESTUDIO_GUIDANCES)} exists only in real threestudio (THREESTUDIO_ROOT)")
    stage2_start_step = system["stage2_start_step"]
    if stage2_start_step:
        stage2_start_step = SWITCH_STEP
    run = [
        'system.prompt_processor.prompt="a hamburger"',
        f"trainer.max_steps={STEPS}",
        f"trainer.val_check_interval={STEPS}",
        f"checkpoint.every_n_train_steps={STEPS}",
        override("system.stage2_start_step", stage2_start_step),
        f"data.resolution_milestones=[{SWITCH_STEP}]",
        f"data.n_test_views={TEST_VIEWS}",
        f"exp_root_dir={user_dir / 'outputs' / name}",
    ]
    given = {item.split("=", 1)[0] for item in run}
    overrides = cpu_size_overrides(given) + tiny_model_overrides(name, tiny_models) + run

    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "--config", str(CONFIGS / f"{name}.yaml"), "--train", *overrides],
        cwd=user_dir,
        env={**os.environ, "STABLEDREAMER_TINY_MODELS": str(tiny_models["clip"].parent)},
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    (trial,) = (user_dir / "outputs" / name / name).iterdir()
    metrics = json.loads((trial / "save" / "metrics.json").read_text())
    assert metrics["global_step"] == STEPS
    expected_stages = guidance_types_by_stage(system, stage2_start_step)
    assert {stage: record["guidance_type"] for stage, record in metrics["stages"].items()} == expected_stages
    assert sum(record["steps"] for record in metrics["stages"].values()) == STEPS

    frames = imageio.mimread(trial / "save" / f"it{STEPS}-test.mp4", memtest=False)
    assert len(frames) == TEST_VIEWS
    export = trial / "save" / f"it{STEPS}-export"
    last = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    ply = PlyData.read(str(export / "model.ply"))
    assert len(ply["vertex"]) == last["state_dict"]["geometry._means"].shape[0]
    assert (export / "model-mesh.obj").is_file() and (export / "model-mesh.glb").is_file()

    if "stable-diffusion-vsd-guidance" in expected_stages.values():
        # ProlificDreamer's LoRA layers (zero-initialised output projections) trained
        lora_up = [v for k, v in last["state_dict"].items() if k.startswith("guidance_stage2.") and "lora" in k
                   and k.endswith("up.weight")]
        assert lora_up and any(v.abs().max() > 0 for v in lora_up)

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
VSD_GUIDANCES = {"stable-diffusion-vsd-guidance", "stabledreamer-vsd-guidance"}


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
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    _train_through_the_launcher(name, config, CONFIGS / f"{name}.yaml", user_dir, tiny_models)


ALTERNATIVE_MARKER = "Replace the two entries above with:"


def _commented_alternative(path):
    """The config at ``path`` with its guidance replaced by the commented alternative that
    follows ``ALTERNATIVE_MARKER`` (lines "  #   key: value" become "  key: value")."""
    lines = path.read_text().splitlines()
    (marker,) = [i for i, line in enumerate(lines) if ALTERNATIVE_MARKER in line]
    alternative = []
    for line in lines[marker + 1 :]:
        if not line.startswith("  #   "):
            break
        alternative.append("  " + line[len("  #   "):])
    replacement = OmegaConf.create("\n".join(alternative))
    config = OmegaConf.to_container(OmegaConf.load(path))
    config["system"].update(OmegaConf.to_container(replacement))
    return config


def test_prolificdreamer_commented_threestudio_vsd_alternative(user_dir, tiny_models, tmp_path):
    """configs/gaussian-prolificdreamer.yaml's commented alternative, threestudio's own VSD,
    still trains (it needs real threestudio, whose VSD needs diffusers < 0.20)."""
    name = "gaussian-prolificdreamer"
    config = _commented_alternative(CONFIGS / f"{name}.yaml")
    assert config["system"]["guidance_stage2_type"] == "stable-diffusion-vsd-guidance"
    if not USES_REAL_THREESTUDIO:
        pytest.skip("threestudio's stable-diffusion-vsd-guidance exists only in real threestudio (THREESTUDIO_ROOT)")
    import diffusers

    if tuple(int(part) for part in diffusers.__version__.split(".")[:2]) >= (0, 20):
        pytest.skip(f"threestudio's VSD needs diffusers < 0.20, found {diffusers.__version__}")
    path = tmp_path / f"{name}.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    _train_through_the_launcher(name, config, path, user_dir, tiny_models, tag="threestudio-vsd")


@pytest.mark.parametrize("name", ["stabledreamer"])
def test_perp_neg_trains_with_both_guidances(name, user_dir, tiny_models):
    """threestudio's ``use_perp_neg: true`` in both stages (DeepFloyd IF, then Stable Diffusion)."""
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert {config["system"]["guidance_type"], config["system"]["guidance_stage2_type"]} == {
        "stabledreamer-deep-floyd-guidance", "stabledreamer-stable-diffusion-guidance"
    }
    perp_neg = ["system.prompt_processor.use_perp_neg=true", "system.prompt_processor_stage2.use_perp_neg=true"]
    _train_through_the_launcher(name, config, CONFIGS / f"{name}.yaml", user_dir, tiny_models,
                                tag="-perp-neg", extra=perp_neg)


def _train_through_the_launcher(name, config, config_path, user_dir, tiny_models, tag="", extra=()):
    # resolved: a comparison config's stage 2 may name stage 1's types by interpolation
    resolved = OmegaConf.create(config)
    system = {key: OmegaConf.select(resolved, f"system.{key}") for key in
              ("stage2_start_step", *(f"{guidance}_type" for _, guidance in STAGE_SLOTS))}
    used = {system[f"{guidance}_type"] for _, guidance in STAGE_SLOTS}
    if not USES_REAL_THREESTUDIO and used & THREESTUDIO_GUIDANCES:
        pytest.skip(f"{sorted(used & THREESTUDIO_GUIDANCES)} exists only in real threestudio (THREESTUDIO_ROOT)")
    stage2_start_step = system["stage2_start_step"]
    if stage2_start_step:
        stage2_start_step = SWITCH_STEP
    outputs = user_dir / "outputs" / f"{name}{tag}"
    run = [
        'system.prompt_processor.prompt="a hamburger"',
        f"trainer.max_steps={STEPS}",
        f"trainer.val_check_interval={STEPS}",
        f"checkpoint.every_n_train_steps={STEPS}",
        override("system.stage2_start_step", stage2_start_step),
        f"data.resolution_milestones=[{SWITCH_STEP}]",
        f"data.n_test_views={TEST_VIEWS}",
        f"exp_root_dir={outputs}",
        *extra,
    ]
    if used & VSD_GUIDANCES:
        # VSD's gradient (CFG 7.5, against the LoRA's estimate) is far weaker than SDS's at
        # CFG 100 on the tiny models: the sparsity loss alone would lower every opacity
        # below the CPU config's pruning threshold (0.098, just under the initial 0.1).
        run.append("system.geometry.prune_opacity=0.05")
    given = {item.split("=", 1)[0] for item in run}
    overrides = cpu_size_overrides(given) + tiny_model_overrides(config, tiny_models) + run

    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "--config", str(config_path), "--train", *overrides],
        cwd=user_dir,
        env={**os.environ, "STABLEDREAMER_TINY_MODELS": str(tiny_models["clip"].parent)},
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    (trial,) = (outputs / name).iterdir()
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

    if used & VSD_GUIDANCES:
        # ProlificDreamer's LoRA layers (zero-initialised output projections) trained:
        # threestudio's LoRAAttnProcessor "up" and peft's "lora_B" matrices
        lora_up = [v for k, v in last["state_dict"].items() if k.startswith("guidance_stage2.") and "lora" in k
                   and k.endswith(("up.weight", "lora_B.default.weight"))]
        assert lora_up and any(v.abs().max() > 0 for v in lora_up)

"""``stabledreamer-system`` in process: stage switching with trainable guidances (the path
threestudio's VSD guidance takes), optimizer groups across the switch, and resume.

Both stages use the test double ``test-trainable-guidance`` (tests/e2e_components), whose
``offset`` parameter is trained through ``optimizer.params.<guidance attribute>``. The
Trainer runs on ``--device``.
"""
import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

import e2e_components  # noqa: F401  (registers test-trainable-guidance)
import threestudio
import threestudio_stabledreamer.exporters  # noqa: F401
import threestudio_stabledreamer.geometry  # noqa: F401
import threestudio_stabledreamer.renderers  # noqa: F401
import threestudio_stabledreamer.systems  # noqa: F401
from threestudio.utils.config import load_config

from conftest import REPO_ROOT

pytestmark = pytest.mark.device

GUIDANCE = "system.guidance_type=test-trainable-guidance"
OVERRIDES = [
    "system.prompt_processor.prompt=a hamburger",
    GUIDANCE,
    "system.guidance_stage2_type=test-trainable-guidance",
    "system.optimizer.params.guidance.lr=0.1",
    "system.optimizer.params.guidance_stage2.lr=0.1",
    "system.loss.lambda_lora=1.0",
    "system.stage2_start_step=3",
    "system.vis_interval=0",
    "system.export_on_fit_end=false",
    "system.geometry.init.num_points=100",
    "system.geometry.densify_from=2",
    "system.geometry.densify_interval=2",
    "data.width=[16,16]",
    "data.height=[16,16]",
    "data.batch_size=[1,1]",
    "trainer.val_check_interval=100",
]


def build(workdir, tiny_models, *overrides, base=tuple(OVERRIDES)):
    """Data module and system as the launcher builds them; the trial lands under ``workdir``."""
    os.environ["STABLEDREAMER_TINY_MODELS"] = str(tiny_models["deepfloyd-if"].parent)
    overrides = [*base, f"exp_root_dir={workdir / 'outputs'}", *overrides]
    cfg = load_config(str(REPO_ROOT / "configs" / "stabledreamer-cpu.yaml"), cli_args=overrides)
    pl.seed_everything(0)
    dm = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system, resumed=cfg.resume is not None)
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))
    return cfg, dm, system


def fit(cfg, dm, system, device, ckpt_path=None):
    accelerator = {"cpu": ("cpu", 1), "cuda": ("gpu", [device.index])}[device.type]
    trainer = pl.Trainer(
        max_steps=cfg.trainer.max_steps, accelerator=accelerator[0], devices=accelerator[1], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        val_check_interval=cfg.trainer.val_check_interval,
        callbacks=[ModelCheckpoint(dirpath=os.path.join(cfg.trial_dir, "ckpts"), save_top_k=-1,
                                   every_n_train_steps=1)],
    )
    trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def group_names(optimizer):
    return [group.get("name") for group in optimizer.param_groups]


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory, tiny_models, device):
    """Five steps, stage 2 from step 3; records what each training step saw."""
    workdir = tmp_path_factory.mktemp("stages")
    previous = os.getcwd()
    os.chdir(workdir)  # prompt embeddings are cached relative to the working directory
    try:
        cfg, dm, system = build(workdir, tiny_models, "trainer.max_steps=5")
        seen = {}
        original = system.training_step

        def spy(batch, batch_idx):
            seen[system.true_global_step] = (
                system._active_stage,
                group_names(system.optimizers().optimizer),
                system.guidance is not None,
                system.guidance_stage2 is not None,
            )
            devices[system.true_global_step] = {
                "geometry": system.geometry.means.device,
                "guidance": system._active_guidance().offset.device,
                "batch": batch["c2w"].device,
            }
            return original(batch, batch_idx)

        devices = {}
        system.training_step = spy
        trainer = fit(cfg, dm, system, device)
    finally:
        os.chdir(previous)
    return workdir, cfg, trainer, seen, devices


def test_stage_switch_releases_stage1_and_moves_the_trainable_groups(two_stage_run, device):
    _, cfg, trainer, seen, devices = two_stage_run
    assert trainer.global_step == 5
    geometry_groups = ["means", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest"]
    for step in (0, 1, 2):
        assert seen[step] == (1, geometry_groups + ["guidance"], True, False)
    for step in (3, 4):
        assert seen[step] == (2, geometry_groups + ["guidance_stage2"], False, True)
    # each stage's guidance (built after the Trainer placed the system) is on its device
    for step in range(5):
        assert devices[step] == {"geometry": device, "guidance": device, "batch": device}, step

    stage1 = torch.load(os.path.join(cfg.trial_dir, "ckpts", "epoch=0-step=3.ckpt"), weights_only=False)
    stage2 = torch.load(os.path.join(cfg.trial_dir, "ckpts", "epoch=0-step=5.ckpt"), weights_only=False)
    # Adam (lr 0.1) moved each stage's offset from 0 towards 1, three and two steps.
    assert float(stage1["state_dict"]["guidance.offset"]) == pytest.approx(0.3, abs=0.02)
    assert float(stage2["state_dict"]["guidance_stage2.offset"]) == pytest.approx(0.2, abs=0.02)
    assert "guidance.offset" not in stage2["state_dict"]


def test_resume_in_stage2_restores_the_trainable_guidance_and_its_optimizer_state(
    two_stage_run, tiny_models, monkeypatch, device
):
    workdir, cfg, _, _, _ = two_stage_run
    monkeypatch.chdir(workdir)
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "epoch=0-step=4.ckpt")
    saved = torch.load(ckpt, weights_only=False)

    cfg2, dm2, resumed = build(workdir, tiny_models, "trainer.max_steps=6", f"resume={ckpt}")
    seen = {}
    original = resumed.training_step

    def spy(batch, batch_idx):
        offset = resumed.guidance_stage2.offset
        adam = resumed.optimizers().optimizer.state.get(offset, {})
        seen[resumed.true_global_step] = (
            resumed._active_stage, float(offset.detach()), int(adam.get("step", 0)), resumed.geometry.num_gaussians,
            resumed.guidance is None,
        )
        return original(batch, batch_idx)

    resumed.training_step = spy
    fit(cfg2, dm2, resumed, device, ckpt_path=ckpt)
    n_saved = saved["state_dict"]["geometry._means"].shape[0]
    offset_saved = float(saved["state_dict"]["guidance_stage2.offset"])
    # ckpt at step 4: steps 0-2 in stage 1, step 3 in stage 2 -> one Adam step on offset
    assert seen[4] == (2, pytest.approx(offset_saved), 1, n_saved, True)
    assert seen[5][0] == 2 and seen[5][2] == 2 and seen[5][1] > offset_saved


# Stage 1 without optimizer groups (as the IF guidance: nothing of it trains).
WITHOUT_STAGE1_GROUPS = tuple(o for o in OVERRIDES if not o.startswith("system.optimizer.params.guidance."))


def _resume_at_the_switch(workdir, tiny_models, device, base):
    """Run 3 steps (stage 1) with ``base``, resume from the checkpoint at step 3 =
    stage2_start_step for 2 steps; return (stages built by the resumed run, what each of
    its steps saw)."""
    cfg, dm, system = build(workdir, tiny_models, "trainer.max_steps=3", base=base)
    fit(cfg, dm, system, device)
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "epoch=0-step=3.ckpt")
    assert torch.load(ckpt, weights_only=False)["stabledreamer"]["active_stage"] == 1
    cfg2, dm2, resumed = build(workdir, tiny_models, "trainer.max_steps=5", f"resume={ckpt}", base=base)
    built, seen = [], {}
    activate, step = resumed._activate_stage, resumed.training_step

    def record_activation(stage, *args, **kwargs):
        if resumed._active_stage != stage:
            built.append(stage)
        return activate(stage, *args, **kwargs)

    def spy(batch, batch_idx):
        optimizer = resumed.optimizers().optimizer
        offset = resumed.guidance_stage2.offset
        seen[resumed.true_global_step] = (
            resumed._active_stage, group_names(optimizer)[-1], int(optimizer.state.get(offset, {}).get("step", 0)),
        )
        return step(batch, batch_idx)

    resumed._activate_stage, resumed.training_step = record_activation, spy
    fit(cfg2, dm2, resumed, device, ckpt_path=ckpt)
    return built, seen


def test_resume_at_the_switch_builds_only_stage2_when_stage1_has_no_groups(
    tmp_path, tiny_models, monkeypatch, device
):
    monkeypatch.chdir(tmp_path)
    built, seen = _resume_at_the_switch(tmp_path, tiny_models, device, WITHOUT_STAGE1_GROUPS)
    assert built == [2]
    # stage 2's groups joined after the optimizer state was restored, and train from step 3
    assert seen == {3: (2, "guidance_stage2", 0), 4: (2, "guidance_stage2", 1)}


def test_resume_at_the_switch_rebuilds_stage1_when_its_groups_are_in_the_checkpoint(
    tmp_path, tiny_models, monkeypatch, device
):
    monkeypatch.chdir(tmp_path)
    built, seen = _resume_at_the_switch(tmp_path, tiny_models, device, tuple(OVERRIDES))
    # the checkpointed optimizer holds stage 1's group: stage 1 is built so its state loads
    assert built == [1, 2]
    assert seen == {3: (2, "guidance_stage2", 0), 4: (2, "guidance_stage2", 1)}

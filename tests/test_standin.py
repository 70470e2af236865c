"""threestudio API semantics the extension relies on.

These run against the stand-in in tests/threestudio_standin, or against real threestudio
with THREESTUDIO_ROOT set (see conftest.py): they check threestudio's behaviour, not
stand-in internals, so a difference between the two fails here.
"""
import importlib.util
import json
import math
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image

import threestudio
from threestudio.utils.base import BaseModule, Updateable
from threestudio.utils.config import load_config, parse_structured
from threestudio.utils.misc import C, get_device
from threestudio.utils.saving import SaverMixin
from conftest import LAUNCHER

# A tiny extension in threestudio's layout: a learnable colour as geometry, a renderer
# that paints it everywhere, a system that fits it to a target colour, and an exporter.
# It is loaded by file path, in-process and by launch.py from a custom/ folder.
TINY_EXTENSION = '''
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.models.exporters.base import Exporter, ExporterOutput
from threestudio.models.geometry.base import BaseGeometry
from threestudio.models.renderers.base import Rasterizer
from threestudio.systems.base import BaseLift3DSystem


@threestudio.register("test-standin-colour-geometry")
class ColourGeometry(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        init_logit: float = 0.0

    def configure(self):
        self.logit = nn.Parameter(torch.full((3,), self.cfg.init_logit))
        self.updated_at = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.updated_at.append(global_step)


@threestudio.register("test-standin-paint-renderer")
class PaintRenderer(Rasterizer):
    def forward(self, rays_d, height, width, **kwargs):
        B = rays_d.shape[0]
        fg = torch.sigmoid(self.geometry.logit).expand(B, height, width, 3)
        bg = self.background(rays_d)
        return {"comp_rgb": 0.75 * fg + 0.25 * bg, "comp_rgb_fg": fg, "comp_rgb_bg": bg}


@threestudio.register("test-standin-fit-colour-system")
class FitColourSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        target: tuple = (1.0, 0.0, 0.5)

    def configure(self):
        super().configure()
        self.losses = []
        self.probe = []
        self.batch_sizes = []

    def training_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        target = torch.as_tensor(self.cfg.target).to(out["comp_rgb_fg"])
        loss = F.mse_loss(out["comp_rgb_fg"], target.expand_as(out["comp_rgb_fg"]))
        self.losses.append(loss.item())
        self.probe.append((self.true_global_step, self.C(self.cfg.loss.lambda_probe)))
        self.batch_sizes.append(batch["rays_d"].shape[0])
        return {"loss": loss * self.C(self.cfg.loss.lambda_mse)}

    def validation_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        self.save_image_grid(
            f"it{self.true_global_step}-val/{batch['index'][0]}.png",
            [{"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}}],
        )

    def on_validation_epoch_end(self):
        pass

    def test_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        self.save_image_grid(
            f"it{self.true_global_step}-test/{batch['index'][0]}.png",
            [{"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}}],
        )

    def on_test_epoch_end(self):
        self.save_img_sequence(
            f"it{self.true_global_step}-test",
            f"it{self.true_global_step}-test",
            r"(\\d+)\\.png",
            save_format="mp4",
            fps=5,
        )


@threestudio.register("test-standin-colour-exporter")
class ColourExporter(Exporter):
    def __call__(self):
        colour = torch.sigmoid(self.geometry.logit).tolist()
        return [ExporterOutput("colour.json", "json", {"payload": {"colour": colour}})]
'''

SYSTEM_CONFIG = """
name: standin-test
tag: "${rmspace:${system.prompt_processor.prompt},_}"
exp_root_dir: outputs
seed: 0
data_type: random-camera-datamodule
data:
  batch_size: [2, 1]
  width: [8, 12]
  height: [8, 12]
  resolution_milestones: [3]
  eval_width: 16
  eval_height: 16
  n_val_views: 2
  n_test_views: 4  # threestudio 0.2.3's torch.cross picks the wrong dimension for 3
system_type: test-standin-fit-colour-system
system:
  prompt_processor:
    prompt: a red cube
  geometry_type: test-standin-colour-geometry
  geometry:
    init_logit: 0.0
  material_type: no-material
  material:
    n_output_dims: 3
  background_type: solid-color-background
  background:
    color: [0.0, 0.0, 1.0]
  renderer_type: test-standin-paint-renderer
  renderer: {}
  exporter_type: test-standin-colour-exporter
  loss:
    lambda_mse: 1.0
    lambda_probe: [0, 0.0, 100.0, 100]
  optimizer:
    name: Adam
    args:
      betas: [0.9, 0.99]
    params:
      geometry:
        lr: 0.2
  scheduler:
    name: ExponentialLR
    interval: step
    args:
      gamma: 0.9
trainer:
  max_steps: 6
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  val_check_interval: 3
checkpoint:
  save_last: true
  save_top_k: -1
  every_n_train_steps: 3
"""


def at(value, global_step, epoch=0, **kwargs):
    """C() of a schedule given as a YAML list would be: an OmegaConf list."""
    return C(OmegaConf.create(value), epoch, global_step, **kwargs)


def test_schedule_three_entries_start_at_step_zero():
    schedule = [1.0, 0.0, 100]
    assert [at(schedule, s) for s in (0, 25, 100, 500)] == pytest.approx([1.0, 0.75, 0.0, 0.0])


def test_schedule_int_end_uses_global_step_and_clamps():
    schedule = [10, 1.0, 3.0, 20]
    assert at(schedule, 5, epoch=99) == pytest.approx(1.0)
    assert at(schedule, 15, epoch=99) == pytest.approx(2.0)
    assert at(schedule, 40, epoch=0) == pytest.approx(3.0)
    assert at([5000, 0.98, 0.5, 5001], 4999) == pytest.approx(0.98)
    assert at([5000, 0.98, 0.5, 5001], 5001) == pytest.approx(0.5)


def test_schedule_float_end_uses_epoch():
    schedule = [0, 1.0, 3.0, 4.0]
    assert at(schedule, global_step=10_000, epoch=2) == pytest.approx(2.0)
    assert at(schedule, global_step=0, epoch=8) == pytest.approx(3.0)


def test_schedule_exp_interpolation_is_geometric():
    assert at([0, 1.0, 100.0, 10], 5, interpolation="exp") == pytest.approx(10.0)
    assert at([0, 1.0, 100.0, 10], 5) == pytest.approx(50.5)


def test_schedule_piecewise_segments_by_global_step():
    schedule = [0, 0.0, 1.0, 10, 3.0, 20, 4.0, 30]
    steps = (0, 5, 10, 15, 20, 25, 100)
    assert [at(schedule, s) for s in steps] == pytest.approx([0.0, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0])


def test_scalar_is_returned_unchanged():
    assert C(0.25, 3, 1000) == 0.25
    assert C(7, 3, 1000) == 7


@dataclass
class _SmallConfig:
    lr: float = 0.1
    name: str = "x"


def test_parse_structured_rejects_unknown_key_and_accepts_schedule_list():
    with pytest.raises(TypeError, match="bogus"):
        parse_structured(_SmallConfig, {"lr": 0.5, "bogus": 1})
    cfg = parse_structured(_SmallConfig, OmegaConf.create({"lr": [0, 0.1, 0.2, 10]}))
    assert C(cfg.lr, 0, 5) == pytest.approx(0.15)
    assert cfg.name == "x"


def test_register_rejects_duplicate_name_and_find_returns_class():
    name = f"test-standin-dup-{uuid.uuid4().hex}"

    @threestudio.register(name)
    class First:
        pass

    try:
        assert threestudio.find(name) is First
        with pytest.raises(ValueError, match="already exists"):
            threestudio.register(name)(type("Second", (), {}))
        assert threestudio.find(name) is First
    finally:
        threestudio.__modules__.pop(name)


def test_find_with_mixins_builds_subclass_of_all():
    main, mixin = (f"test-standin-{k}-{uuid.uuid4().hex}" for k in ("main", "mixin"))
    threestudio.register(main)(type("Main", (), {"who": lambda self: "main"}))
    threestudio.register(mixin)(type("Mixin", (), {"who": lambda self: "mixin"}))
    try:
        cls = threestudio.find(f"{main}:{mixin}")
        assert issubclass(cls, threestudio.find(main)) and issubclass(cls, threestudio.find(mixin))
        assert cls().who() == "mixin"  # mixins come first in the MRO
    finally:
        threestudio.__modules__.pop(main)
        threestudio.__modules__.pop(mixin)


def test_load_config_applies_cli_override_resolvers_and_trial_dir(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"""
name: demo
tag: "${{rmspace:${{system.prompt}},_}}"
exp_root_dir: {tmp_path / "outputs"}
system:
  prompt: a cat
  steps: ${{add:3,4}}
  half: ${{idiv:${{system.steps}},2}}
  decay: ${{calc_exp_lr_decay_rate:0.01,2}}
  lambda_x: [0, 0.0, 2.0, 10]
  use_x: ${{cmaxgt0:${{system.lambda_x}}}}
  no_x: ${{not:${{system.use_x}}}}
"""
    )
    cfg = load_config(str(path), cli_args=["system.prompt=a hamburger", "seed=3"])
    assert cfg.seed == 3
    assert cfg.system.prompt == "a hamburger"
    assert (cfg.system.steps, cfg.system.half) == (7, 3)
    assert cfg.system.decay == pytest.approx(0.1)
    assert cfg.system.use_x is True and cfg.system.no_x is False
    assert re.fullmatch(r"a_hamburger@\d{8}-\d{6}", cfg.trial_name)
    assert Path(cfg.trial_dir) == tmp_path / "outputs" / "demo" / cfg.trial_name
    assert Path(cfg.trial_dir).is_dir()


def test_updateable_walks_public_attributes_before_itself():
    calls = []

    class Leaf(Updateable):
        def __init__(self, tag):
            self.tag = tag

        def update_step(self, epoch, global_step, on_load_weights=False):
            calls.append((self.tag, epoch, global_step))

    class Root(Leaf):
        def __init__(self):
            super().__init__("root")
            self.child = Leaf("child")
            self._private = Leaf("private")

    Root().do_update_step(2, 11)
    assert calls == [("child", 2, 11), ("root", 2, 11)]


def test_base_module_parses_config_and_calls_configure():
    class Scaled(BaseModule):
        @dataclass
        class Config(BaseModule.Config):
            scale: float = 2.0

        def configure(self, offset):
            self.offset = offset

    module = Scaled({"scale": 3.0}, offset=1.5)
    assert (module.cfg.scale, module.cfg.weights, module.offset) == (3.0, None, 1.5)
    with pytest.raises(TypeError, match="colour"):
        Scaled({"colour": 1}, offset=0.0)


def test_get_device_prefers_cuda_else_cpu():
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def _datamodule(**overrides):
    cfg = {
        "batch_size": 2,
        "height": 8,
        "width": 12,
        "eval_height": 6,
        "eval_width": 10,
        "camera_perturb": 0.0,
        "center_perturb": 0.0,
        "up_perturb": 0.0,
        **overrides,
    }
    dm = threestudio.find("random-camera-datamodule")(cfg)
    dm.setup(None)
    return dm


def _train_batch(dm):
    return next(iter(dm.train_dataloader()))


def test_train_batch_keys_and_shapes():
    batch = _train_batch(_datamodule())
    expected = {
        "rays_o", "rays_d", "mvp_mtx", "proj_mtx", "c2w", "camera_positions",
        "light_positions", "elevation", "azimuth", "camera_distances", "fovy",
        "height", "width",
    }
    assert set(batch) == expected
    for key in ("rays_o", "rays_d"):
        assert batch[key].shape == (2, 8, 12, 3)
    for key in ("mvp_mtx", "proj_mtx", "c2w"):
        assert batch[key].shape == (2, 4, 4)
    for key in ("camera_positions", "light_positions"):
        assert batch[key].shape == (2, 3)
    for key in ("elevation", "azimuth", "camera_distances", "fovy"):
        assert batch[key].shape == (2,)
    assert (batch["height"], batch["width"]) == (8, 12)
    assert torch.allclose(batch["rays_d"].norm(dim=-1), torch.ones(2, 8, 12), atol=1e-5)


def test_camera_at_elevation_zero_azimuth_zero_looks_down_minus_x():
    dm = _datamodule(
        elevation_range=[0.0, 0.0],
        azimuth_range=[0.0, 0.0],
        camera_distance_range=[2.0, 2.0],
        fovy_range=[60.0, 60.0],
    )
    batch = _train_batch(dm)
    c2w = batch["c2w"][0]
    # z-up world, OpenGL camera: columns right, up, -lookat (= backwards), position
    assert torch.allclose(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 3], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(batch["camera_positions"][0], c2w[:3, 3])
    assert batch["fovy"][0].item() == pytest.approx(math.radians(60.0))
    assert batch["elevation"][0].item() == pytest.approx(0.0)
    # top-left pixel ray points left (-y) and up (+z) while looking along -x
    top_left = batch["rays_d"][0, 0, 0]
    assert top_left[0] < 0 and top_left[1] < 0 and top_left[2] > 0
    assert torch.allclose(batch["rays_o"][0], c2w[:3, 3].expand(8, 12, 3))


def test_mvp_projects_origin_to_centre_and_scales_by_fovy():
    dm = _datamodule(
        elevation_range=[0.0, 0.0],
        azimuth_range=[0.0, 0.0],
        camera_distance_range=[2.0, 2.0],
        fovy_range=[60.0, 60.0],
    )
    mvp = _train_batch(dm)["mvp_mtx"][0]

    def ndc(point):
        clip = mvp @ torch.tensor([*point, 1.0])
        return clip[:3] / clip[3]

    assert torch.allclose(ndc((0.0, 0.0, 0.0))[:2], torch.zeros(2), atol=1e-6)
    # 0.1 to the camera's right at depth 2: x_ndc = 0.1 / (2 tan(fovy/2) * W/H)
    expected_x = 0.1 / (2.0 * math.tan(math.radians(30.0)) * 12 / 8)
    assert ndc((0.0, 0.1, 0.0))[0].item() == pytest.approx(expected_x, rel=1e-5)
    # threestudio flips y in proj_mtx (image rows grow downwards): world up -> negative y
    expected_y = -0.1 / (2.0 * math.tan(math.radians(30.0)))
    assert ndc((0.0, 0.0, 0.1))[1].item() == pytest.approx(expected_y, rel=1e-5)


def test_elevation_and_azimuth_are_degrees():
    dm = _datamodule(
        elevation_range=[30.0, 30.0],
        azimuth_range=[90.0, 90.0],
        camera_distance_range=[1.5, 1.5],
    )
    batch = _train_batch(dm)
    assert batch["elevation"] == pytest.approx([30.0, 30.0])
    assert batch["azimuth"] == pytest.approx([90.0, 90.0])
    expected = torch.tensor([0.0, 1.5 * math.cos(math.radians(30)), 1.5 * math.sin(math.radians(30))])
    assert torch.allclose(batch["camera_positions"], expected.expand(2, 3), atol=1e-6)


def test_resolution_and_batch_size_milestones():
    dm = _datamodule(height=[8, 16], width=[8, 20], batch_size=[4, 1], resolution_milestones=[5])
    dataset = dm.train_dataset
    dataset.update_step(0, 4)
    assert dataset.collate(None)["rays_d"].shape == (4, 8, 8, 3)
    dataset.update_step(0, 5)
    batch = dataset.collate(None)
    assert batch["rays_d"].shape == (1, 16, 20, 3)
    assert (batch["height"], batch["width"]) == (16, 20)


def test_validation_and_test_orbits():
    dm = _datamodule(n_val_views=4, eval_elevation_deg=15.0, eval_camera_distance=1.5)
    assert len(dm.test_dataset) == 120  # threestudio's default
    assert [dm.val_dataset[i]["azimuth"].item() for i in range(4)] == pytest.approx([0, 90, 180, 270])
    assert dm.test_dataset[0]["azimuth"].item() == pytest.approx(0.0)
    assert dm.test_dataset[119]["azimuth"].item() == pytest.approx(360.0)
    batch = next(iter(dm.test_dataloader()))
    assert batch["index"].tolist() == [0]
    assert batch["rays_d"].shape == (1, 6, 10, 3)
    assert (batch["height"], batch["width"]) == (6, 10)
    assert batch["elevation"].item() == pytest.approx(15.0)
    assert batch["camera_distances"].item() == pytest.approx(1.5)


class _Saver(SaverMixin):
    pass


def test_save_image_grid_rgb_and_grayscale(tmp_path):
    saver = _Saver()
    saver.set_save_dir(str(tmp_path))
    rgb_hwc = torch.tensor([1.0, 0.5, 0.0]).expand(4, 5, 3)
    rgb_chw = torch.zeros(3, 4, 5)  # 0 in data_range (-1, 1) is mid-grey
    grey = torch.ones(4, 5)
    path = saver.save_image_grid(
        "grid/a.png",
        [
            {"type": "rgb", "img": rgb_hwc, "kwargs": {"data_format": "HWC"}},
            {"type": "rgb", "img": rgb_chw, "kwargs": {"data_format": "CHW", "data_range": (-1, 1)}},
            {"type": "grayscale", "img": grey, "kwargs": {"cmap": None, "data_range": (0, 1)}},
        ],
    )
    assert Path(path) == tmp_path / "grid" / "a.png"
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (4, 15, 3)
    assert img[2, 2].tolist() == [255, 127, 0]
    assert img[2, 7].tolist() == [127, 127, 127]
    assert img[2, 12].tolist() == [255, 255, 255]


def test_save_img_sequence_writes_mp4_in_index_order(tmp_path):
    import imageio

    saver = _Saver()
    saver.set_save_dir(str(tmp_path))
    for i in (2, 0, 10, 1):
        frame = torch.full((16, 16, 3), i / 10.0)
        saver.save_image_grid(f"seq/{i}.png", [{"type": "rgb", "img": frame, "kwargs": {}}])
    path = saver.save_img_sequence("video", "seq", r"(\d+)\.png", save_format="mp4", fps=5)
    assert Path(path) == tmp_path / "video.mp4"
    with imageio.get_reader(path, "ffmpeg") as reader:
        means = [frame.mean() for frame in reader]
    assert len(means) == 4
    assert means == sorted(means)  # 0, 1, 2, 10: ordered by the number, not the name


@pytest.fixture(scope="module")
def tiny_extension(tmp_path_factory):
    """The tiny extension written to ``<tmp>/custom/tiny_ext`` and imported by file path."""
    root = tmp_path_factory.mktemp("tiny-extension")
    ext = root / "custom" / "tiny_ext"
    ext.mkdir(parents=True)
    (ext / "__init__.py").write_text(TINY_EXTENSION)
    spec = importlib.util.spec_from_file_location("tiny_ext", ext / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return root


def test_lift3d_system_trains_through_lightning(tiny_extension, tmp_path):
    config_path = tmp_path / "fit.yaml"
    config_path.write_text(SYSTEM_CONFIG)
    cfg = load_config(str(config_path), cli_args=[f"exp_root_dir={tmp_path / 'outputs'}"])
    dm = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system)
    system.set_save_dir(str(tmp_path / "save"))
    assert isinstance(system.renderer.background, threestudio.find("solid-color-background"))
    initial = torch.sigmoid(system.geometry.logit.detach().clone())

    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=3,
    )
    trainer.fit(system, datamodule=dm)

    assert len(system.losses) == 6
    assert system.losses[-1] < system.losses[0]
    final = torch.sigmoid(system.geometry.logit.detach())
    target = torch.tensor([1.0, 0.0, 0.5])
    assert (final - target).abs().sum() < (initial - target).abs().sum()
    # batch hooks ran do_update_step with the global step before every training batch
    assert {0, 1, 2, 3, 4, 5} <= set(system.geometry.updated_at)
    # system.C uses the true step; schedule [0, 0, 100, 100] equals the step
    assert [value for _, value in system.probe] == pytest.approx([s for s, _ in system.probe])
    assert [s for s, _ in system.probe] == [0, 1, 2, 3, 4, 5]
    # batch size 2 before the milestone at step 3, then 1 (Lightning collates batches
    # ahead of the step hooks, so the switch shows up a step or two late)
    assert system.batch_sizes[:3] == [2, 2, 2] and system.batch_sizes[-1] == 1
    # named param group with its own lr, decayed by the per-step scheduler
    (group,) = trainer.optimizers[0].param_groups
    assert group["name"] == "geometry"
    assert group["lr"] == pytest.approx(0.2 * 0.9**6)
    assert (tmp_path / "save" / "it3-val" / "0.png").is_file()


def test_module_weights_load_from_a_checkpoint_and_replay_its_step(tiny_extension, tmp_path):
    ckpt = tmp_path / "stage.ckpt"
    logit = torch.tensor([0.5, -1.0, 2.0])
    state = {"geometry.logit": logit, "renderer.bbox": torch.zeros(2, 3)}
    torch.save({"state_dict": state, "epoch": 1, "global_step": 42}, ckpt)

    geometry = threestudio.find("test-standin-colour-geometry")({"weights": f"{ckpt}:geometry"})

    assert torch.equal(geometry.logit.detach(), logit)
    assert geometry.updated_at == [42]


def _run_launch(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_launch_train_then_export_from_checkpoint(tiny_extension):
    cwd = tiny_extension
    (cwd / "custom" / "broken_ext").mkdir()
    (cwd / "custom" / "broken_ext" / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    (cwd / "custom" / "skipped_disabled").mkdir()
    (cwd / "custom" / "skipped_disabled" / "__init__.py").write_text("raise RuntimeError('loaded a _disabled folder')\n")
    (cwd / "configs").mkdir()
    config = cwd / "configs" / "fit.yaml"
    config.write_text(SYSTEM_CONFIG)

    train = _run_launch(cwd, "--config", str(config), "--train", "--gpu", "0", "system.prompt_processor.prompt=a blue cube")
    assert "broken on purpose" in train.stdout + train.stderr
    assert "loaded a _disabled folder" not in train.stdout + train.stderr

    (trial,) = (cwd / "outputs" / "standin-test").iterdir()
    assert re.fullmatch(r"a_blue_cube@\d{8}-\d{6}", trial.name)
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (trial / "cmd.txt").is_file()
    assert (trial / "configs" / "raw.yaml").read_text() == SYSTEM_CONFIG
    parsed = OmegaConf.load(trial / "configs" / "parsed.yaml")
    assert parsed.system.prompt_processor.prompt == "a blue cube"
    assert parsed.trial_dir == str(Path("outputs") / "standin-test" / trial.name)
    saved = sorted(p.name for p in (trial / "save" / "it6-test").iterdir())
    assert saved == ["0.png", "1.png", "2.png", "3.png"]
    assert (trial / "save" / "it6-test.mp4").stat().st_size > 0
    assert (trial / "save" / "it3-val" / "1.png").is_file()

    _run_launch(
        cwd,
        "--config", str(trial / "configs" / "parsed.yaml"),
        "--export",
        f"resume={trial / 'ckpts' / 'last.ckpt'}",
    )
    # parsed.yaml keeps its timestamp: the export lands in the same trial, at the
    # checkpoint's step
    exported = json.loads((trial / "save" / "it6-export" / "colour.json").read_text())
    colour = torch.tensor(exported["colour"])
    state = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert torch.allclose(colour, torch.sigmoid(state["state_dict"]["geometry.logit"]), atol=1e-6)

"""``stabledreamer-system``: StableDreamer's two-stage text-to-3D training on 3D Gaussians.

Stage 1 (steps ``[0, stage2_start_step)``) distils ``guidance`` (DeepFloyd IF, pixel
space) with the embeddings of ``prompt_processor``; stage 2 (from ``stage2_start_step``
on) distils ``guidance_stage2`` (Stable Diffusion, latent space) with
``prompt_processor_stage2``. The stage is a function of the global step only, so a run
resumed from any checkpoint continues in the right stage. Only the running stage's
models are held: at the switch the stage-1 guidance is released and its prompt processor
dropped before the stage-2 models load, so peak GPU memory is the larger stage's, not
the sum. Without ``guidance_stage2_type`` the run is stage 1 only;
``stage2_start_step: 0`` runs stage 2 only.

Optimisation is manual (as threestudio-3dgs): density control needs the view-space
gradients after ``backward`` and changes the parameter tensors after the optimizer
step. One optimizer holds the geometry's ``param_groups()`` and the groups named in
``optimizer.params`` (threestudio's convention: ``{attribute.path: {lr: ...}}``), so a
guidance with trainable parameters, such as threestudio's ``stable-diffusion-vsd-guidance``
(LoRA), trains through the same optimizer. Groups of a stage's guidance or prompt
processor are added when that stage starts and removed when it ends.

Step (global step ``s``, 0-based): geometry learning rates at ``s``; render; guidance;
``loss = sum_X C(lambda_X) loss_X`` over the guidance's ``loss_*`` terms and the
regularizers below; backward; view-space gradient statistics; optimizer step; density
control after step ``s + 1`` (the number of completed steps, 3DGS's 1-based iteration).

Regularizers (each off when its lambda is 0):
- ``lambda_sparsity``: mean of sqrt(opacity^2 + 0.01) over rendered pixels
  (threestudio's DreamFusion): keeps the background empty, where SDS at high noise
  levels otherwise grows floaters.
- ``lambda_opaque``: binary entropy of the rendered opacity (threestudio): pushes pixels
  to fully opaque or empty, which gives solid surfaces and a clean iso-surface for the
  mesh export.
- ``lambda_scale``: mean over Gaussians of (largest scale / scene extent); stops single
  Gaussians from growing into view-filling blobs, which the blurry early SDS targets
  favour.

Outputs under the trial's ``save/``: ``recon/stage<k>-it<step>-t<t>.png`` (the
reconstruction view, rows per view: render | noisy input | x0_hat; t is the diffusion
timestep, or threestudio guidances' noise level; also logged to TensorBoard),
``it<step>-<index>.png`` (validation: rgb | opacity | depth | normal),
``it<step>-test/`` and ``it<step>-test.mp4`` (turntable: rgb | opacity | depth),
``it<step>-export/`` (exporter output, at the end of training and on ``--export``) and
``metrics.json`` (see ``run_metrics``; written at the end of fit and of test).

Resume: a checkpoint stores the running stage, per-stage metrics and, for guidances that
are modules with weights (e.g. LoRA), their weights under ``guidance.`` /
``guidance_stage2.``; the stage's models are rebuilt (and those weights loaded) before
the optimizer state is restored, so optimizer groups match the checkpoint's. A checkpoint
taken at ``stage2_start_step`` builds only stage 2 when stage 1 had no optimizer groups
(``_starting_stage``), so IF and T5 are not loaded just to be released.
"""
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import imageio.v2 as imageio
import torch
import torch.nn as nn

import threestudio
from threestudio.systems.base import BaseLift3DSystem
from threestudio.utils.misc import cleanup

from .run_metrics import RunMetrics

STAGE_MODULES = {
    1: ("prompt_processor", "guidance"),
    2: ("prompt_processor_stage2", "guidance_stage2"),
}
REGULARIZERS = ("sparsity", "opaque", "scale")
CHECKPOINT_KEY = "stabledreamer"

# Recent Lightning warns that step-interval checkpoints of manually optimised modules hold
# the state after the optimizer step. That is the state we want: a checkpoint at global
# step s holds the Gaussians after s completed steps, and training resumes with step s.
warnings.filterwarnings(
    "ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps", category=UserWarning
)


@threestudio.register("stabledreamer-system")
class StableDreamerSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        stage2_start_step: Optional[int] = None
        """First global step of stage 2; None = no stage 2. Needs ``guidance_stage2_type``."""
        prompt_processor_stage2_type: str = ""
        prompt_processor_stage2: dict = field(default_factory=dict)
        guidance_stage2_type: str = ""
        guidance_stage2: dict = field(default_factory=dict)
        loss_stage2: dict = field(default_factory=dict)
        """``lambda_*`` values that replace those of ``loss`` during stage 2."""
        vis_interval: int = 100
        """Every this many steps save the reconstruction view [render | noisy input |
        x0_hat] (``guidance_eval``); 0 disables."""
        export_on_fit_end: bool = True
        """Run the exporter (PLY and mesh) when training ends."""
        exporter_type: str = "stabledreamer-gaussian-exporter"
        test_video_fps: int = 30

    cfg: Config

    # ------------------------------------------------------------------ set-up

    def configure(self) -> None:
        check_config(self.cfg)
        super().configure()
        self.automatic_optimization = False
        self.prompt_processor = None
        self.guidance = None
        self.prompt_processor_stage2 = None
        self.guidance_stage2 = None
        self.prompt_utils = None
        self._active_stage: Optional[int] = None
        self._resumed_stage: Optional[int] = None
        self._resumed_step = 0
        self._resumed_group_names: Optional[List[str]] = None
        self._deferred_group_stage: Optional[int] = None
        self._pending_module_states: Dict[str, Dict[str, torch.Tensor]] = {}
        self._stage_param_groups: Dict[int, List[Dict[str, Any]]] = {1: [], 2: []}
        self._run_metrics = RunMetrics()
        self._test_started: Optional[float] = None

    @property
    def has_stage2(self) -> bool:
        return self.cfg.stage2_start_step is not None

    def stage_at(self, global_step: int) -> int:
        """1 or 2: the training stage that global step ``global_step`` belongs to."""
        if self.has_stage2 and global_step >= self.cfg.stage2_start_step:
            return 2
        return 1

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return self.renderer(**batch)

    # ------------------------------------------------------------------ stages

    def _activate_stage(self, stage: int, attach_groups: bool = True) -> None:
        """Hold exactly the models of ``stage``: release the other stage's, then build these
        (and add their optimizer groups unless ``attach_groups`` is False)."""
        if self._active_stage == stage:
            return
        if self._active_stage is not None:
            self._release_stage(self._active_stage)
        started = time.perf_counter()
        processor_name, guidance_name = STAGE_MODULES[stage]
        processor_type = getattr(self.cfg, f"{processor_name}_type")
        guidance_type = getattr(self.cfg, f"{guidance_name}_type")
        step = max(self.true_global_step, self._resumed_step)
        threestudio.info(f"stabledreamer-system: stage {stage} ({guidance_type}) from step {step}")
        processor = threestudio.find(processor_type)(getattr(self.cfg, processor_name))
        guidance = threestudio.find(guidance_type)(getattr(self.cfg, guidance_name))
        if isinstance(guidance, nn.Module):
            # Built after the Trainer placed the system, so not moved with it: a module
            # guidance's trainable parts (e.g. VSD's LoRA) join the system's device here.
            guidance.to(self.device)
        pending = self._pending_module_states.pop(guidance_name, None)
        if pending:
            guidance.load_state_dict(pending)
        setattr(self, processor_name, processor)
        setattr(self, guidance_name, guidance)
        self.prompt_utils = processor()
        self._active_stage = stage
        self._run_metrics.stage_loaded(
            f"stage{stage}", guidance_type, time.perf_counter() - started, self.device
        )
        if attach_groups:
            self._attach_stage_param_groups(stage)
        else:
            self._deferred_group_stage = stage

    def _release_stage(self, stage: int) -> None:
        processor_name, guidance_name = STAGE_MODULES[stage]
        self._detach_stage_param_groups(stage)
        guidance = getattr(self, guidance_name)
        release = getattr(guidance, "release", None)
        if callable(release):
            release()
        setattr(self, guidance_name, None)
        setattr(self, processor_name, None)
        self.prompt_utils = None
        self._active_stage = None
        del guidance
        cleanup()

    def _active_guidance(self):
        return getattr(self, STAGE_MODULES[self._active_stage][1])

    # ------------------------------------------------------------------ optimizer

    def configure_optimizers(self):
        """One optimizer: the geometry's groups, then static ``optimizer.params`` groups,
        then the running stage's groups (its guidance / prompt processor)."""
        cfg = self.cfg.optimizer
        name = cfg.get("name", None)
        if not isinstance(name, str) or not hasattr(torch.optim, name):
            raise ValueError(f"system.optimizer.name must name a torch.optim optimizer, got {name!r}")
        args = dict(cfg.get("args", None) or {})
        optimizer = getattr(torch.optim, name)(self.geometry.param_groups(), **args)
        for group in self._config_param_groups(stage=None):
            optimizer.add_param_group(group)
        self._optimizer = optimizer
        self._activate_stage(*self._starting_stage())
        return optimizer

    def _starting_stage(self):
        """(stage to build first, whether its groups join the optimizer now).

        A fresh run starts in the stage of its step. A resumed run's optimizer state must
        match the checkpoint's groups, which include those of the stage that was running
        when it was taken. A checkpoint taken at ``stage2_start_step`` was taken in stage
        1 but resumes in stage 2: when it holds no stage-1 groups, only stage 2 is built
        and its groups join after the optimizer state is restored (the first training
        step); otherwise stage 1 is rebuilt so the state loads, and the step switches.
        """
        step = max(self.true_global_step, self._resumed_step)
        stage = self.stage_at(step)
        resumed = self._resumed_stage
        if resumed is None or resumed == stage:
            return stage, True
        if self._resumed_group_names is not None and not self._holds_stage_groups(resumed):
            return stage, False
        return resumed, True

    def _holds_stage_groups(self, stage: int) -> bool:
        roots = {name.split(".")[0] for name in self._resumed_group_names or () if name}
        return any(root in STAGE_MODULES[stage] for root in roots)

    def _config_param_groups(self, stage: Optional[int]) -> List[Dict[str, Any]]:
        """Groups of ``optimizer.params`` belonging to ``stage`` (None: to no stage)."""
        groups = []
        for path, group_args in (self.cfg.optimizer.get("params", None) or {}).items():
            root = path.split(".")[0]
            if root == "geometry":
                raise ValueError(
                    f"system.optimizer.params.{path}: the Gaussians' groups and learning rates come from "
                    "the geometry (lr_* in system.geometry); remove this entry"
                )
            owner = next((s for s, names in STAGE_MODULES.items() if root in names), None)
            if owner != stage:
                continue
            params = self._parameters_at(path)
            if params:
                groups.append({"params": params, "name": path, **dict(group_args)})
        return groups

    def _parameters_at(self, path: str) -> List[nn.Parameter]:
        """threestudio's rule: a module's parameters, a parameter, or nothing."""
        target: Any = self
        for part in path.split("."):
            if not hasattr(target, part):
                raise ValueError(f"system.optimizer.params.{path}: the system has no attribute path {path!r}")
            target = getattr(target, part)
        if isinstance(target, nn.Parameter):
            return [target]
        if isinstance(target, nn.Module):
            return [p for p in target.parameters() if p.requires_grad]
        return []

    def _attach_stage_param_groups(self, stage: int) -> None:
        optimizer = getattr(self, "_optimizer", None)
        if optimizer is None:
            return
        groups = self._config_param_groups(stage)
        for group in groups:
            optimizer.add_param_group(group)
        self._stage_param_groups[stage] = [optimizer.param_groups[-1 - i] for i in range(len(groups))][::-1]

    def _detach_stage_param_groups(self, stage: int) -> None:
        optimizer = getattr(self, "_optimizer", None)
        groups = self._stage_param_groups[stage]
        if optimizer is None or not groups:
            return
        for group in groups:
            for param in group["params"]:
                optimizer.state.pop(param, None)
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if all(g is not x for x in groups)]
        self._stage_param_groups[stage] = []

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "metrics": self._run_metrics.state_dict(),
            "num_gaussians": self.geometry.num_gaussians,
            "active_stage": self._active_stage,
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Runs before the weights load: note the stage that was running (its optimizer
        groups are in the checkpoint) and set aside the weights of stage models, loaded
        when their stage starts."""
        self._resumed_step = int(checkpoint.get("global_step", 0))
        optimizer_states = checkpoint.get("optimizer_states") or []
        if optimizer_states:
            self._resumed_group_names = [
                group.get("name") for group in optimizer_states[0].get("param_groups", [])
            ]
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            self._run_metrics.load_state_dict(state["metrics"])
            self._resumed_stage = state["active_stage"]
        state_dict = checkpoint.get("state_dict", {})
        for stage_names in STAGE_MODULES.values():
            for name in stage_names:
                prefix = f"{name}."
                own = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
                if own:
                    self._pending_module_states[name] = own

    # ------------------------------------------------------------------ training

    def on_train_batch_start(self, batch, batch_idx, unused=0):
        self._activate_stage(self.stage_at(self.true_global_step))
        if self._deferred_group_stage == self._active_stage:
            self._attach_stage_param_groups(self._active_stage)
        self._deferred_group_stage = None
        self._run_metrics.step_started()
        return super().on_train_batch_start(batch, batch_idx, unused)

    def training_step(self, batch, batch_idx):
        step = self.true_global_step
        stage = self._active_stage
        optimizer = self.optimizers()
        self.geometry.update_learning_rates(optimizer.optimizer, step)

        out = self(batch)
        guidance_eval = self.cfg.vis_interval > 0 and step % self.cfg.vis_interval == 0
        guidance_out = self._active_guidance()(
            out["comp_rgb"], self.prompt_utils, **batch, rgb_as_latents=False, guidance_eval=guidance_eval
        )

        terms = [name for name in guidance_out if name.startswith("loss_")]
        if not terms:
            raise ValueError(
                f"the stage-{stage} guidance returned no loss_* terms (keys: {sorted(guidance_out)}); "
                "a threestudio guidance must return at least one"
            )
        loss = out["comp_rgb"].new_zeros(())
        for name, value in guidance_out.items():
            if name.startswith("loss_"):
                loss = loss + value * self._loss_weight(name[len("loss_"):], stage)
            if _is_scalar(value):
                # Tensors are logged as tensors: Lightning reads them when it writes the logs,
                # so the step does not wait for the device.
                self.log(f"train/{name}", value.detach().float() if torch.is_tensor(value) else float(value))
        for name in REGULARIZERS:
            weight = self._loss_weight(name, stage, required=False)
            if weight > 0:
                value = self._regularizer(name, out)
                self.log(f"train/loss_{name}", value.detach())
                loss = loss + weight * value
        self.log("train/loss", loss.detach())

        self.manual_backward(loss)
        viewspace = out["viewspace_points"]
        grad = viewspace.grad if viewspace.grad is not None else torch.zeros_like(viewspace)
        self.geometry.add_densification_stats(grad, out["radii"], out["visibility_filter"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        summary = self.geometry.density_control(step + 1, optimizer.optimizer)
        self._run_metrics.density_changed(summary)
        self.log("train/num_gaussians", float(self.geometry.num_gaussians), prog_bar=True)
        self.log("train/stage", float(stage))

        if guidance_eval:
            if "eval" in guidance_out:
                self._save_reconstruction_view(out["comp_rgb"], guidance_out["eval"], step, stage)
            else:
                threestudio.warn(f"step {step}: the stage-{stage} guidance returned no 'eval' for guidance_eval=True")
        self._run_metrics.step_finished(f"stage{stage}", step, self.device)
        return {"loss": loss.detach()}

    def _loss_weight(self, term: str, stage: int, required: bool = True) -> float:
        key = f"lambda_{term}"
        if stage == 2 and key in self.cfg.loss_stage2:
            return float(self.C(self.cfg.loss_stage2[key]))
        if key in self.cfg.loss:
            return float(self.C(self.cfg.loss[key]))
        if required:
            raise ValueError(
                f"system.loss.{key} is missing: the stage-{stage} guidance returns loss_{term}; "
                "give its weight (0 to ignore it)"
            )
        return 0.0

    def _regularizer(self, name: str, out: Dict[str, torch.Tensor]) -> torch.Tensor:
        if name == "sparsity":
            return (out["opacity"] ** 2 + 0.01).sqrt().mean()
        if name == "opaque":
            opacity = out["opacity"].clamp(1e-3, 1 - 1e-3)
            return -(opacity * opacity.log() + (1 - opacity) * (1 - opacity).log()).mean()
        scales = self.geometry.scales
        return (scales.max(dim=-1).values / self.geometry.scene_extent).mean()

    def _save_reconstruction_view(self, render: torch.Tensor, evaluation: Dict[str, Any], step: int, stage: int) -> None:
        """Save [render | noisy input | x0_hat] per view, as ``recon/stage<k>-it<step>-t<t>.png``,
        with VSD's LoRA estimate ``x0_lora`` as a fourth column when the guidance gives it."""
        noisy, x0, levels = _reconstruction_images(evaluation)
        columns = [render.detach(), noisy.clamp(0, 1), x0.clamp(0, 1)]
        if "x0_lora" in evaluation:
            columns.append(evaluation["x0_lora"].clamp(0, 1))
        rows = [
            [{"type": "rgb", "img": column[i], "kwargs": {"data_format": "HWC"}} for column in columns]
            for i in range(render.shape[0])
        ]
        label = "-".join(levels)
        path = self.save_image_grid(
            f"recon/stage{stage}-it{step:06d}-t{label}.png", rows, name="reconstruction_view", step=step
        )
        self._log_image_to_tensorboard(f"reconstruction/stage{stage}", path, step)

    def _log_image_to_tensorboard(self, tag: str, path: str, step: int) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, imageio.imread(path)[..., :3], step, dataformats="HWC")

    def on_fit_end(self) -> None:
        if self._active_stage is not None:
            self._release_stage(self._active_stage)
        if self.cfg.export_on_fit_end and self._save_dir is not None and self.global_rank == 0:
            self.export_assets()
        self._write_metrics()

    # ------------------------------------------------------------------ evaluation

    def _visual_columns(self, out: Dict[str, torch.Tensor], normal: bool) -> List[Dict[str, Any]]:
        columns = [
            {"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}},
            {"type": "grayscale", "img": out["opacity"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": (0, 1)}},
            {"type": "grayscale", "img": out["depth"][0, :, :, 0], "kwargs": {"cmap": "jet", "data_range": None}},
        ]
        if normal and "comp_normal" in out:
            columns.append(
                {"type": "rgb", "img": out["comp_normal"][0], "kwargs": {"data_format": "HWC", "data_range": (0, 1)}}
            )
        return columns

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        self.save_image_grid(
            f"it{self.true_global_step}-{batch['index'][0]}.png",
            self._visual_columns(out, normal=True),
            name="validation_step",
            step=self.true_global_step,
        )

    def on_validation_epoch_end(self):
        """Nothing to aggregate (threestudio's base class raises NotImplementedError)."""

    def on_test_start(self) -> None:
        self._test_started = time.perf_counter()

    def test_step(self, batch, batch_idx):
        out = self(batch)
        self.save_image_grid(
            f"it{self.true_global_step}-test/{batch['index'][0]}.png",
            self._visual_columns(out, normal=False),
            name="test_step",
            step=self.true_global_step,
        )

    def on_test_epoch_end(self):
        self.save_img_sequence(
            f"it{self.true_global_step}-test",
            f"it{self.true_global_step}-test",
            r"(\d+)\.png",
            save_format="mp4",
            fps=self.cfg.test_video_fps,
            name="test",
            step=self.true_global_step,
        )

    def on_test_end(self) -> None:
        super().on_test_end()
        frames_dir = self.get_save_path(f"it{self.true_global_step}-test")
        test = {
            "frames": len([f for f in os.listdir(frames_dir) if f.endswith(".png")]),
            "video": f"it{self.true_global_step}-test.mp4",
            "wall_time_s": time.perf_counter() - self._test_started if self._test_started else None,
        }
        self._write_metrics(test=test)

    def export_assets(self) -> List[str]:
        """Run ``exporter_type`` and save its outputs under ``it<step>-export/``."""
        exporter = threestudio.find(self.cfg.exporter_type)(
            self.cfg.exporter, geometry=self.geometry, material=self.material, background=self.background
        )
        saved = []
        for output in exporter():
            save = getattr(self, f"save_{output.save_type}", None)
            if save is None:
                raise ValueError(f"save_{output.save_type} not supported by the SaverMixin")
            saved.append(save(f"it{self.true_global_step}-export/{output.save_name}", **output.params))
        return saved

    def _write_metrics(self, test: Optional[Dict[str, Any]] = None) -> None:
        if self._save_dir is None or self.global_rank != 0:
            return
        path = self.get_save_path("metrics.json")
        metrics: Dict[str, Any] = {}
        if os.path.exists(path):
            with open(path) as f:
                metrics = json.load(f)
        metrics.update(self._run_metrics.summary(self.geometry.num_gaussians, self.device))
        metrics["global_step"] = self.true_global_step
        if self.has_stage2:
            metrics["stage2_start_step"] = self.cfg.stage2_start_step
        if test is not None:
            metrics["test"] = test
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2)


def check_config(cfg: "StableDreamerSystem.Config") -> None:
    """Raise ValueError, naming the field, for an inconsistent stage set-up, a missing
    prompt or an unsupported option."""
    if cfg.stage2_start_step is not None:
        if cfg.stage2_start_step < 0:
            raise ValueError(f"system.stage2_start_step must be >= 0 or null, got {cfg.stage2_start_step}")
        for name in ("guidance_stage2_type", "prompt_processor_stage2_type"):
            if not getattr(cfg, name):
                raise ValueError(
                    f"system.{name} is empty but system.stage2_start_step={cfg.stage2_start_step}: "
                    "stage 2 needs a guidance and a prompt processor"
                )
    elif cfg.guidance_stage2_type:
        raise ValueError(
            f"system.guidance_stage2_type={cfg.guidance_stage2_type!r} is set but system.stage2_start_step "
            "is null: give the first step of stage 2"
        )
    if cfg.stage2_start_step != 0:
        _check_stage_config(cfg, 1)
    if cfg.stage2_start_step is not None:
        _check_stage_config(cfg, 2)
    if cfg.vis_interval < 0:
        raise ValueError(f"system.vis_interval must be >= 0, got {cfg.vis_interval}")
    if cfg.scheduler is not None:
        raise ValueError(
            "system.scheduler is not supported by stabledreamer-system (manual optimisation); "
            "the Gaussians' learning-rate schedules are the geometry's lr_* values"
        )


def _check_stage_config(cfg: "StableDreamerSystem.Config", stage: int) -> None:
    processor, guidance = STAGE_MODULES[stage]
    for name in (f"{processor}_type", f"{guidance}_type"):
        if not getattr(cfg, name):
            raise ValueError(f"system.{name} is empty; stage {stage} needs it")
    prompt = getattr(cfg, processor).get("prompt", None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            f"system.{processor}.prompt is {prompt!r}: give the text prompt, e.g. "
            'system.prompt_processor.prompt="a zoomed out DSLR photo of a corgi wearing a top hat"'
        )


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float))


def _reconstruction_images(evaluation: Dict[str, Any]):
    """(noisy [B,H,W,3], x0_hat [B,H,W,3], noise-level labels) from a guidance's ``eval``.

    Our guidances give ``noisy``, ``x0`` and integer timesteps ``t``; threestudio's give
    ``imgs_noisy``, ``imgs_1orig`` and ``noise_levels`` (fractions of the schedule).
    """
    if "x0" in evaluation:
        labels = [f"{int(t):04d}" for t in torch.as_tensor(evaluation["t"]).reshape(-1).tolist()]
        return evaluation["noisy"], evaluation["x0"], labels
    if "imgs_1orig" in evaluation:
        labels = [f"{float(t):.3f}" for t in evaluation["noise_levels"]]
        return evaluation["imgs_noisy"], evaluation["imgs_1orig"], labels
    raise ValueError(
        f"guidance_eval output has keys {sorted(evaluation)}; expected noisy/x0/t "
        "(stabledreamer guidances) or imgs_noisy/imgs_1orig/noise_levels (threestudio guidances)"
    )

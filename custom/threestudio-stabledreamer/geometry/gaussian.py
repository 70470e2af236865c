"""``stabledreamer-gaussian``: anisotropic 3D Gaussians as a threestudio geometry.

A thin threestudio layer over ``core``: the per-Gaussian tensors are ``nn.Parameter``s
(state dict keys ``_means``, ``_log_scales``, ``_rotations``, ``_opacity_logits``,
``_sh_dc``, ``_sh_rest``), stored pre-activation as 3DGS stores them; renderers read the
activated views (``means``, ``scales``, ``rotations``, ``opacities``,
``sh_coefficients``, ...).

Training loop contract (the system's):
1. render, ``loss.backward()``;
2. ``add_densification_stats(viewspace_points.grad, radii, visibility_filter)``;
3. ``update_learning_rates(optimizer, step)``, ``optimizer.step()``, ``optimizer.zero_grad()``;
4. ``density_control(step, optimizer)``: checks for non-finite parameters every step and
   densifies, prunes and resets opacities on the configured steps, keeping the
   optimizer's state consistent (whichever optimizer holds the parameters).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.models.geometry.base import BaseGeometry
from threestudio.utils.config import parse_structured
from threestudio.utils.misc import C

from ..core.densification import (
    DensityPlan,
    accumulate_screen_statistics,
    apply_plan,
    average_gradients,
    limit_growth,
    plan_density_step,
    removal_plan,
    select_clone_and_split,
    select_prune,
)
from ..core.gaussians import covariance_from_scale_rotation, shortest_axis_normals
from ..core.initialization import (
    GAUSSIAN_PARAMETER_NAMES,
    constant_colours,
    gaussians_from_points,
    opacity_logit,
    random_colours,
    sample_points_in_ball,
    sample_points_in_box,
)
from ..core.optimizer_surgery import rebuild_parameter, replace_parameter_values
from ..core.ply import read_gaussian_ply, write_gaussian_ply
from ..core.sh import MAX_SH_DEGREE, num_sh_coefficients

LEARNING_RATE_FIELDS = {
    "means": "lr_means",
    "log_scales": "lr_scales",
    "rotations": "lr_rotations",
    "opacity_logits": "lr_opacity",
    "sh_dc": "lr_sh_dc",
    "sh_rest": "lr_sh_rest",
}


@dataclass
class GaussianInitConfig:
    """How the Gaussians are created (the geometry's ``init`` dict)."""

    type: str = "random"
    """``random`` (points in a ball or box), ``ply`` (a standard 3DGS PLY at ``path``) or
    ``checkpoint`` (a Lightning checkpoint or state dict of this geometry at ``path``)."""
    shape: str = "ball"
    """``ball`` (radius ``radius``) or ``box`` (half side ``radius``), centred at the origin."""
    num_points: int = 5000
    """5000 as DreamGaussian (threestudio-3dgs: 4096): enough to cover the object's volume
    from the start, while density control adds detail where SDS asks for it."""
    radius: float = 0.5
    """World units. threestudio's random cameras sit 1.5-2.0 from the origin with a 40-70
    degree vertical field of view, so the half-height seen at the closest distance is
    1.5 tan(20 deg) = 0.55: a ball of 0.5 stays in every view (threestudio-3dgs: 0.8,
    DreamGaussian: 0.5)."""
    opacity: float = 0.1
    """Initial opacity (after sigmoid), as threestudio-3dgs and DreamGaussian: low enough
    for SDS to carve the shape, high enough for gradients to reach every Gaussian."""
    colour: str = "constant"
    """``constant`` (``constant_colour``) or ``random`` (uniform RGB). A neutral grey start
    lets SDS choose colours instead of first removing per-point noise; peers start
    near grey as well."""
    constant_colour: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    path: str = ""
    checkpoint_prefix: str = "geometry."
    """Key prefix of this geometry in a Lightning checkpoint's ``state_dict``."""
    seed: Optional[int] = None
    """Seed of the random points and colours; None uses torch's global generator (seeded
    by the launcher)."""


@threestudio.register("stabledreamer-gaussian")
class StableDreamerGaussian(BaseGeometry):
    """Anisotropic 3D Gaussians with 3DGS-style adaptive density control.

    Steps are optimizer steps (threestudio's ``global_step``). Scales and positions are
    in world units; the scene extent scales the split and world-size prune thresholds.
    """

    @dataclass
    class Config(BaseGeometry.Config):
        sh_degree: int = 0
        """Stored SH degree (0-3). 0 as DreamGaussian and threestudio-3dgs: with SDS,
        view-dependent colour lets each view paint its own appearance, which feeds
        multi-face artefacts; raise it for glossy objects."""
        sh_increase_interval: int = 1000
        """One more SH band every this many steps (3DGS); 0 = all bands from the start."""
        isotropic: bool = False
        """One scale per Gaussian instead of three (log-scale parameter [N, 1])."""
        init: dict = field(default_factory=dict)
        """See :class:`GaussianInitConfig`."""
        scene_extent: float = 0.0
        """World size of the scene for the relative thresholds; 0 = the init radius for
        random init, the radius of the point set around its centroid for PLY init, the
        stored value for checkpoint init."""

        # Learning rates: threestudio C() values (number or schedule) at the global step.
        lr_means: Any = field(default_factory=lambda: [0, 1e-3, 1e-5, 10000])
        """Log-linear decay as 3DGS (lr_means_interpolation = exp). 3DGS uses 1.6e-4
        times a scene extent of a few units, DreamGaussian 1e-3 -> 2e-5; 1e-3 moves a
        Gaussian about its own size (~0.01-0.02 at init) in ten steps."""
        lr_means_interpolation: str = "exp"
        lr_scales: Any = 0.005
        """3DGS, gsplat, DreamGaussian."""
        lr_rotations: Any = 0.001
        """3DGS, gsplat."""
        lr_opacity: Any = 0.05
        """3DGS (original), DreamGaussian, threestudio-3dgs."""
        lr_sh_dc: Any = 0.01
        """DreamGaussian and threestudio-3dgs (3DGS: 0.0025): SDS colour gradients are weak
        and noisy, so colour needs a faster rate than photometric fitting."""
        lr_sh_rest: Any = 0.0005
        """lr_sh_dc / 20 as 3DGS."""

        # Density control (3DGS rules, see core.densification).
        densify_from: int = 500
        """3DGS, gsplat, threestudio-3dgs: let the initial Gaussians settle first."""
        densify_until: int = 5000
        """About half of a 10k-step run, as 3DGS (15k of 30k): late steps refine colour."""
        densify_interval: int = 100
        """3DGS and gsplat; statistics are averaged over this many steps."""
        grad_threshold: float = 0.01
        """Averaged screen-space gradient norm, in the reference rasterizer's units (3DGS
        0.0002 for a mean L1 photometric loss). threestudio's SDS loss is a sum over
        pixels, with far larger gradients; threestudio-3dgs uses 0.01 with it. The value
        scales with lambda_sds."""
        split_threshold: float = 0.01
        """Largest scale, as a fraction of the scene extent, above which a Gaussian is
        split instead of cloned (3DGS percent_dense, gsplat grow_scale3d)."""
        n_split: int = 2
        """3DGS."""
        prune_opacity: float = 0.005
        """3DGS and gsplat."""
        prune_world_size: float = 0.2
        """Largest scale, as a fraction of the scene extent, above which a Gaussian is
        pruned; 0 disables. 3DGS uses 0.1 of an extent measured around the cameras (larger
        than the object); here the extent is the object's init radius, and the default
        init's neighbour scales reach 0.16 of it, so 0.2 only prunes Gaussians that grew."""
        prune_screen_radius: float = 0.0
        """Max 2D radius (pixels) above which a Gaussian is pruned; 0 disables. Off by
        default: the render resolution changes between stages (64 px for DeepFloyd IF,
        512 px for Stable Diffusion), so a pixel threshold has no single meaning."""
        opacity_reset_interval: int = 0
        """Every this many steps (until densify_until) opacities are clipped to
        opacity_reset_value; 0 disables. Off by default as in threestudio-3dgs: SDS has
        no photometric loss that quickly restores the opacities after a reset."""
        opacity_reset_value: float = 0.01
        """3DGS."""
        max_num_gaussians: int = 500000
        """Hard cap (threestudio-3dgs: 500k); when growth would exceed it, the candidates
        with the largest gradients are kept and a warning is logged."""
        nonfinite: str = "raise"
        """Non-finite parameters after a step: ``raise`` an error or ``prune`` those
        Gaussians (with a warning)."""

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self._validate_config()
        self.init_cfg: GaussianInitConfig = parse_structured(GaussianInitConfig, self.cfg.init)
        self.active_sh_degree = self.cfg.sh_degree if self.cfg.sh_increase_interval == 0 else 0
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._finite_flag: Optional[torch.Tensor] = None
        self._finite_flag_copied: Optional[torch.cuda.Event] = None
        self.register_buffer("_scene_extent", torch.tensor(1.0))
        self._set_parameters(self._initial_tensors(0))
        if self.init_cfg.type == "random":
            self._init_random()
        elif self.init_cfg.type == "ply":
            self._init_from_ply(self.init_cfg.path)
        elif self.init_cfg.type == "checkpoint":
            self._init_from_checkpoint(self.init_cfg.path)
        else:
            raise ValueError(f"init.type must be 'random', 'ply' or 'checkpoint', got {self.init_cfg.type!r}")
        if self.cfg.scene_extent > 0:
            self._scene_extent.fill_(self.cfg.scene_extent)
        threestudio.info(f"stabledreamer-gaussian: {self.num_gaussians} Gaussians, scene extent {self.scene_extent:g}")

    def _validate_config(self) -> None:
        cfg = self.cfg
        if not 0 <= cfg.sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {cfg.sh_degree}")
        for name in ("sh_increase_interval", "opacity_reset_interval", "densify_from", "densify_until",
                     "scene_extent", "grad_threshold", "split_threshold", "prune_world_size",
                     "prune_screen_radius"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
        for name in ("densify_interval", "max_num_gaussians"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
        if not 0 <= cfg.prune_opacity < 1:
            raise ValueError(f"prune_opacity must be in [0, 1), got {cfg.prune_opacity}")
        if not 0 < cfg.opacity_reset_value < 1:
            raise ValueError(f"opacity_reset_value must be in (0, 1), got {cfg.opacity_reset_value}")
        if cfg.n_split < 2:
            raise ValueError(f"n_split must be at least 2, got {cfg.n_split}")
        if cfg.nonfinite not in ("raise", "prune"):
            raise ValueError(f"nonfinite must be 'raise' or 'prune', got {cfg.nonfinite!r}")
        if cfg.lr_means_interpolation not in ("linear", "exp"):
            raise ValueError(f"lr_means_interpolation must be 'linear' or 'exp', got {cfg.lr_means_interpolation!r}")
        for field_name in LEARNING_RATE_FIELDS.values():
            value = getattr(cfg, field_name)
            if not isinstance(value, (int, float)) and not isinstance(list(value)[-1], int):
                raise ValueError(
                    f"{field_name}: schedules must end with an integer step (global steps), got {list(value)}"
                )

    # ----------------------------------------------------------------- parameters
    def _initial_tensors(self, n: int) -> Dict[str, torch.Tensor]:
        k = num_sh_coefficients(self.cfg.sh_degree)
        return {
            "means": torch.zeros(n, 3),
            "log_scales": torch.zeros(n, 1 if self.cfg.isotropic else 3),
            "rotations": torch.zeros(n, 4),
            "opacity_logits": torch.zeros(n, 1),
            "sh_dc": torch.zeros(n, 1, 3),
            "sh_rest": torch.zeros(n, k - 1, 3),
        }

    def _set_parameters(self, tensors: Dict[str, torch.Tensor]) -> None:
        for name in GAUSSIAN_PARAMETER_NAMES:
            setattr(self, f"_{name}", nn.Parameter(tensors[name].float().contiguous()))
        self._reset_statistics()

    def _reset_statistics(self) -> None:
        n, device = self._means.shape[0], self._means.device
        self.register_buffer("grad_norm_sum", torch.zeros(n, device=device), persistent=False)
        self.register_buffer("visible_count", torch.zeros(n, device=device), persistent=False)
        self.register_buffer("max_radii", torch.zeros(n, device=device), persistent=False)

    def _tensors(self) -> Dict[str, torch.Tensor]:
        return {name: getattr(self, f"_{name}").detach() for name in GAUSSIAN_PARAMETER_NAMES}

    # ----------------------------------------------------------------- initialization
    def _init_random(self) -> None:
        init = self.init_cfg
        generator = None if init.seed is None else torch.Generator().manual_seed(init.seed)
        if init.shape == "ball":
            points = sample_points_in_ball(init.num_points, init.radius, generator)
        elif init.shape == "box":
            points = sample_points_in_box(init.num_points, init.radius, generator)
        else:
            raise ValueError(f"init.shape must be 'ball' or 'box', got {init.shape!r}")
        if init.colour == "random":
            colours = random_colours(init.num_points, generator)
        elif init.colour == "constant":
            colours = constant_colours(init.num_points, list(init.constant_colour))
        else:
            raise ValueError(f"init.colour must be 'random' or 'constant', got {init.colour!r}")
        self._set_parameters(
            gaussians_from_points(points, colours, init.opacity, self.cfg.sh_degree, self.cfg.isotropic)
        )
        self._scene_extent.fill_(init.radius)

    def _init_from_ply(self, path: str) -> None:
        tensors = read_gaussian_ply(path, self.cfg.sh_degree)
        if self.cfg.isotropic:
            scales = tensors["log_scales"]
            if not torch.equal(scales, scales[:, :1].expand_as(scales)):
                raise ValueError(f"{path}: fields scale_0..2 differ, but the geometry is isotropic (isotropic=true)")
            tensors["log_scales"] = scales[:, :1]
        self._set_parameters(tensors)
        means = tensors["means"]
        radius = (means - means.mean(0)).norm(dim=-1).max() if means.shape[0] > 0 else torch.tensor(0.0)
        if not radius > 0 and self.cfg.scene_extent <= 0:
            raise ValueError(f"{path}: cannot compute a scene extent from the points; set scene_extent")
        self._scene_extent.fill_(float(radius))

    def _init_from_checkpoint(self, path: str) -> None:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state_dict = checkpoint.get("state_dict", checkpoint)
        prefix = self.init_cfg.checkpoint_prefix
        own = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        if not own:
            raise ValueError(f"{path}: no keys start with init.checkpoint_prefix={prefix!r}")
        self.load_state_dict(own)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Resize the parameters to the checkpoint's number of Gaussians before loading.

        Parameters are replaced by new objects: build optimizers after loading.
        """
        counts = {
            name: state_dict[f"{prefix}_{name}"].shape[0]
            for name in GAUSSIAN_PARAMETER_NAMES
            if f"{prefix}_{name}" in state_dict
        }
        if len(set(counts.values())) > 1:
            error_msgs.append(f"Gaussian parameters have different numbers of rows in the checkpoint: {counts}")
        elif counts:
            n = next(iter(counts.values()))
            if n != self.num_gaussians:
                self._set_parameters(
                    {name: tensor.new_zeros(n, *tensor.shape[1:]) for name, tensor in self._tensors().items()}
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ----------------------------------------------------------------- activated views
    @property
    def num_gaussians(self) -> int:
        return self._means.shape[0]

    @property
    def scene_extent(self) -> float:
        return float(self._scene_extent)

    @property
    def means(self) -> torch.Tensor:
        """Centres [N, 3], world units."""
        return self._means

    @property
    def scales(self) -> torch.Tensor:
        """Per-axis standard deviations [N, 3], world units."""
        return self._log_scales.exp().expand(-1, 3)

    @property
    def rotations(self) -> torch.Tensor:
        """Unit quaternions [N, 4], wxyz."""
        return F.normalize(self._rotations, dim=-1)

    @property
    def opacities(self) -> torch.Tensor:
        """Opacities [N, 1] in (0, 1)."""
        return torch.sigmoid(self._opacity_logits)

    @property
    def sh_coefficients(self) -> torch.Tensor:
        """SH coefficients [N, (sh_degree + 1)^2, 3], DC first; use the first
        (active_sh_degree + 1)^2."""
        return torch.cat([self._sh_dc, self._sh_rest], dim=1)

    @property
    def covariances(self) -> torch.Tensor:
        """World-space covariances [N, 3, 3]."""
        return covariance_from_scale_rotation(self.scales, self._rotations)

    @property
    def normals(self) -> torch.Tensor:
        """Unit shortest-axis directions [N, 3] (sign arbitrary)."""
        return shortest_axis_normals(self.scales, self._rotations)

    # ----------------------------------------------------------------- schedules
    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Only ``update_step``: the geometry holds no ``Updateable`` children, and
        threestudio's attribute walk would evaluate every activated property (covariances,
        normals, ...) on each step for nothing (~58 ms at 100k Gaussians on a CPU)."""
        self.update_step(epoch, global_step, on_load_weights)

    def do_update_step_end(self, epoch: int, global_step: int) -> None:
        self.update_step_end(epoch, global_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.cfg.sh_increase_interval == 0:
            self.active_sh_degree = self.cfg.sh_degree
        else:
            self.active_sh_degree = min(self.cfg.sh_degree, global_step // self.cfg.sh_increase_interval)

    def learning_rate(self, name: str, global_step: int) -> float:
        """Learning rate of the parameter ``name`` (a ``GAUSSIAN_PARAMETER_NAMES`` entry) at ``global_step``."""
        value = getattr(self.cfg, LEARNING_RATE_FIELDS[name])
        interpolation = self.cfg.lr_means_interpolation if name == "means" else "linear"
        return float(C(value, 0, global_step, interpolation=interpolation))

    def param_groups(self) -> List[Dict[str, Any]]:
        """One optimizer group per parameter, named after it, with the learning rate at step 0."""
        return [
            {"params": [getattr(self, f"_{name}")], "name": name, "lr": self.learning_rate(name, 0)}
            for name in GAUSSIAN_PARAMETER_NAMES
        ]

    def update_learning_rates(self, optimizer: torch.optim.Optimizer, global_step: int) -> None:
        """Set the lr of every group of ``optimizer`` holding one of this geometry's parameters.

        Groups are matched by parameter identity; a group mixing several of them (e.g.
        one group for the whole geometry) is an error: build groups with ``param_groups()``.
        """
        own = {id(getattr(self, f"_{name}")): name for name in GAUSSIAN_PARAMETER_NAMES}
        if not any(id(param) in own for group in optimizer.param_groups for param in group["params"]):
            raise ValueError("update_learning_rates: the optimizer holds none of the Gaussian parameters")
        for group in optimizer.param_groups:
            names = {own[id(param)] for param in group["params"] if id(param) in own}
            if len(names) > 1:
                raise ValueError(
                    f"optimizer group {group.get('name', '?')!r} holds several Gaussian parameters "
                    f"({sorted(names)}); build the groups with param_groups()"
                )
            if names:
                group["lr"] = self.learning_rate(names.pop(), global_step)

    def create_optimizer(self, **adam_kwargs: Any) -> torch.optim.Optimizer:
        """An Adam over ``param_groups()`` (eps 1e-15 as 3DGS unless given), kept as ``self.optimizer``."""
        self.optimizer = torch.optim.Adam(self.param_groups(), **{"lr": 0.0, "eps": 1e-15, **adam_kwargs})
        return self.optimizer

    # ----------------------------------------------------------------- density control
    def add_densification_stats(self, viewspace_grad: torch.Tensor, radii: torch.Tensor, visibility: torch.Tensor) -> None:
        """Accumulate screen-space gradient norms [B, N, 2] (reference rasterizer units), 2D radii
        [B, N] (pixels) and visibility [B, N] of one rendered batch."""
        if viewspace_grad is None:
            raise ValueError("viewspace_grad is None: pass viewspace_points.grad after loss.backward()")
        self.grad_norm_sum, self.visible_count, self.max_radii = accumulate_screen_statistics(
            self.grad_norm_sum, self.visible_count, self.max_radii, viewspace_grad, radii, visibility
        )

    def density_control(self, global_step: int, optimizer: Optional[torch.optim.Optimizer] = None) -> Dict[str, Any]:
        """Run the checks and density-control operations due after the optimizer step ``global_step``.

        ``optimizer`` holds the parameters (default: the one made by ``create_optimizer``);
        its groups and state are updated in place. Returns ``step``, ``cloned`` (copies
        added), ``split`` (parents replaced by ``n_split`` samples), ``pruned``,
        ``nonfinite`` (Gaussians with non-finite parameters removed), ``opacity_reset``,
        ``capped`` (growth limited by ``max_num_gaussians``) and ``num_gaussians``.
        """
        optimizer = optimizer if optimizer is not None else self.optimizer
        if optimizer is None:
            raise ValueError("density_control needs the optimizer holding the parameters (none given or created)")
        cfg = self.cfg
        summary = {"step": global_step, "cloned": 0, "split": 0, "pruned": 0, "nonfinite": 0,
                   "opacity_reset": False, "capped": False}
        summary["nonfinite"] = self._handle_nonfinite(global_step, optimizer)
        if cfg.densify_from <= global_step <= cfg.densify_until and global_step % cfg.densify_interval == 0:
            plan, capped = self._plan_densification(global_step)
            self._apply_density_plan(plan, optimizer)
            self._reset_statistics()
            summary.update(cloned=plan.num_cloned, split=plan.num_split, pruned=plan.num_pruned, capped=capped)
        if (cfg.opacity_reset_interval > 0 and 0 < global_step <= cfg.densify_until
                and global_step % cfg.opacity_reset_interval == 0):
            self._reset_opacities(optimizer)
            summary["opacity_reset"] = True
        summary["num_gaussians"] = self.num_gaussians
        return summary

    def _plan_densification(self, global_step: int):
        cfg, extent = self.cfg, self.scene_extent
        max_scales = self.scales.detach().max(dim=-1).values
        prune = select_prune(
            self.opacities.detach().squeeze(-1),
            max_scales,
            self.max_radii,
            cfg.prune_opacity,
            cfg.prune_world_size * extent if cfg.prune_world_size > 0 else None,
            cfg.prune_screen_radius if cfg.prune_screen_radius > 0 else None,
        )
        avg_grad = average_gradients(self.grad_norm_sum, self.visible_count)
        clone, split = select_clone_and_split(avg_grad, max_scales, cfg.grad_threshold, cfg.split_threshold * extent, ~prune)
        budget = cfg.max_num_gaussians - (self.num_gaussians - int(prune.sum()))
        wanted = int(clone.sum()) + (cfg.n_split - 1) * int(split.sum())
        capped = wanted > max(budget, 0)
        if capped:
            clone, split = limit_growth(clone, split, avg_grad, cfg.n_split, budget)
            threestudio.warn(
                f"stabledreamer-gaussian: max_num_gaussians={cfg.max_num_gaussians} reached at step {global_step}: "
                f"densification wanted {wanted} new Gaussians, {max(budget, 0)} allowed; "
                f"kept {int(clone.sum())} clones and {int(split.sum())} splits with the largest gradients"
            )
        return plan_density_step(self._tensors(), clone, split, prune, cfg.n_split), capped

    def _apply_density_plan(self, plan: DensityPlan, optimizer: torch.optim.Optimizer) -> None:
        held = []
        for name in GAUSSIAN_PARAMETER_NAMES:
            old = getattr(self, f"_{name}")
            new = nn.Parameter(apply_plan(old.detach(), plan, plan.appended[name]), requires_grad=old.requires_grad)
            held.append(rebuild_parameter(optimizer, old, new, plan.source_index, plan.appended[name].shape[0]))
            setattr(self, f"_{name}", new)
        if not any(held):
            raise ValueError("the optimizer given to density_control holds none of the Gaussian parameters")
        n_appended = plan.appended["means"].shape[0]
        for buffer in ("grad_norm_sum", "visible_count", "max_radii"):
            old = getattr(self, buffer)
            setattr(self, buffer, torch.cat([old[plan.source_index], old.new_zeros(n_appended)]))

    def _nonfinite_suspected(self, tensors: Dict[str, torch.Tensor]) -> bool:
        """Whether a parameter may be non-finite: any NaN or infinity makes a sum non-finite.

        On a CPU the flag is read at once. On CUDA reading it would wait for the step's
        kernels, a host synchronisation every step: the flag is copied to pinned host memory
        without waiting instead, and a flag is read once its copy has landed (a later step),
        so a non-finite parameter is found a step or two after it appears."""
        finite = torch.stack([tensor.sum() for tensor in tensors.values()]).isfinite().all()
        if finite.device.type != "cuda":
            return not bool(finite)
        suspected = False
        if self._finite_flag is not None and self._finite_flag_copied.query():
            suspected = not bool(self._finite_flag)  # a host tensor whose copy has landed: no wait
            self._finite_flag = None
        if self._finite_flag is None:
            self._finite_flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self._finite_flag.copy_(finite, non_blocking=True)
            self._finite_flag_copied = torch.cuda.Event()
            self._finite_flag_copied.record()
        return suspected

    def _handle_nonfinite(self, global_step: int, optimizer: torch.optim.Optimizer) -> int:
        tensors = self._tensors()
        # the exact row check, which reads values on the host, runs only on suspicion
        if not self._nonfinite_suspected(tensors):
            return 0
        bad = torch.zeros(self.num_gaussians, dtype=torch.bool, device=self._means.device)
        fields = []
        for name, tensor in tensors.items():
            rows = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=-1)
            if bool(rows.any()):
                fields.append(name)
                bad |= rows
        count = int(bad.sum())
        if count == 0:
            return 0
        message = (f"stabledreamer-gaussian: non-finite parameters after step {global_step}: "
                   f"{count} of {self.num_gaussians} Gaussians (in {', '.join(fields)})")
        if self.cfg.nonfinite == "raise":
            raise FloatingPointError(message + "; set nonfinite=prune to remove them instead")
        threestudio.warn(message + "; pruning them")
        self._apply_density_plan(removal_plan(self._tensors(), bad), optimizer)
        return count

    def _reset_opacities(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip opacities to ``opacity_reset_value`` (3DGS); the optimizer state of opacity is zeroed."""
        old = self._opacity_logits
        ceiling = opacity_logit(self.cfg.opacity_reset_value)
        new = nn.Parameter(old.detach().clamp_max(ceiling), requires_grad=old.requires_grad)
        replace_parameter_values(optimizer, old, new)
        self._opacity_logits = new

    # ----------------------------------------------------------------- export
    def export_ply(self, path: str) -> None:
        """Write the Gaussians as a standard 3DGS PLY (pre-activation values)."""
        write_gaussian_ply(Path(path), self._tensors())

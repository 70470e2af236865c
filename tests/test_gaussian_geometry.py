"""The threestudio geometry ``stabledreamer-gaussian``; density control, PLY export and
resume run on ``--device`` (tests marked ``device``)."""
import numpy as np
import pytest
import torch
from plyfile import PlyData

import threestudio
import threestudio_stabledreamer.geometry.gaussian  # noqa: F401  (registers the geometry)
from threestudio_stabledreamer.core.ply import write_gaussian_ply

Geometry = threestudio.find("stabledreamer-gaussian")
NAMES = ("means", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest")


def brute_force_mean_neighbour_distance(points: torch.Tensor) -> torch.Tensor:
    distances = (points.double()[:, None] - points.double()[None]).norm(dim=-1)
    distances.fill_diagonal_(float("inf"))
    return distances.sort(dim=-1).values[:, :3].mean(dim=-1).float()


def make(device="cpu", **cfg):
    """The geometry built as threestudio builds it (on the CPU), then moved to ``device``."""
    cfg.setdefault("init", {"num_points": 64, "seed": 0})
    return Geometry(cfg).to(device)


def constructed_state(sh_degree: int = 0):
    """State dict of 4 Gaussians: 0 small (clone), 1 large (split), 2 transparent (prune), 3 quiet (keep)."""
    k = (sh_degree + 1) ** 2
    return {
        "_means": torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [0.0, 0.2, 0], [0.0, 0, 0.2]]),
        "_log_scales": torch.tensor([[0.002] * 3, [0.05] * 3, [0.002] * 3, [0.002] * 3]).log(),
        "_rotations": torch.tensor([[1.0, 0, 0, 0]] * 4),
        "_opacity_logits": torch.tensor([[1.0], [1.0], [-9.0], [1.0]]),
        "_sh_dc": torch.zeros(4, 1, 3),
        "_sh_rest": torch.zeros(4, k - 1, 3),
        "_scene_extent": torch.tensor(1.0),
    }


def densify_cfg(**overrides):
    cfg = dict(densify_from=10, densify_until=100, densify_interval=10, grad_threshold=0.1,
               split_threshold=0.01, prune_opacity=0.005, prune_world_size=0.5)
    cfg.update(overrides)
    return cfg


def take_step(geometry, optimizer):
    optimizer.zero_grad()
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], device=geometry.means.device)
    loss = ((geometry.means**2).sum() + geometry.opacities.sum() + geometry.scales.sum()
            + geometry.sh_coefficients.sum() + (geometry.rotations * weights).sum())
    loss.backward()
    optimizer.step()


def high_gradient_stats(geometry, rows):
    n, device = geometry.num_gaussians, geometry.means.device
    grad = torch.zeros(1, n, 2, device=device)
    grad[0, rows, 0] = 1.0
    geometry.add_densification_stats(grad, torch.full((1, n), 3, device=device),
                                     torch.ones(1, n, dtype=torch.bool, device=device))


# ----------------------------------------------------------------------------- initialization
def test_random_ball_init_statistics():
    geometry = make(init={"num_points": 400, "radius": 0.6, "opacity": 0.2, "seed": 3}, sh_degree=2)
    assert geometry.num_gaussians == 400
    assert float(geometry.means.detach().norm(dim=-1).max()) <= 0.6 + 1e-6
    assert torch.allclose(geometry.opacities, torch.full((400, 1), 0.2))
    expected = brute_force_mean_neighbour_distance(geometry.means.detach())
    assert torch.allclose(geometry.scales, expected[:, None].expand(400, 3), rtol=1e-5)
    assert torch.allclose(geometry.sh_coefficients[:, 0], torch.zeros(400, 3))  # grey 0.5
    assert geometry.sh_coefficients.shape == (400, 9, 3)
    assert geometry.scene_extent == pytest.approx(0.6)
    assert torch.allclose(geometry.rotations, torch.tensor([1.0, 0, 0, 0]).expand(400, 4))
    assert torch.allclose(geometry.covariances, torch.diag_embed(geometry.scales**2))
    assert torch.allclose(geometry.normals.abs().sum(-1), torch.ones(400))


def test_random_box_isotropic_init():
    geometry = make(init={"num_points": 100, "shape": "box", "radius": 0.3, "colour": "random", "seed": 1},
                    isotropic=True)
    assert float(geometry.means.detach().abs().max()) <= 0.3
    assert geometry._log_scales.shape == (100, 1)
    assert geometry.scales.shape == (100, 3)
    assert torch.equal(geometry.scales[:, 0], geometry.scales[:, 2])
    assert float(geometry.sh_coefficients.detach()[:, 0].std()) > 0.1


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="init.type"):
        make(init={"type": "mesh"})
    with pytest.raises(ValueError, match="sh_degree"):
        make(sh_degree=4)
    with pytest.raises(ValueError, match="nonfinite"):
        make(nonfinite="ignore")
    with pytest.raises(ValueError, match="lr_opacity"):
        make(lr_opacity=[0, 0.05, 0.01, 1.5])
    with pytest.raises(ValueError, match="max_num_gaussians must be positive, got 0"):
        make(max_num_gaussians=0)
    with pytest.raises(ValueError, match="opacity_reset_value"):
        make(opacity_reset_value=0.0)
    with pytest.raises(ValueError, match="scene_extent must be >= 0, got -1.0"):
        make(scene_extent=-1.0)
    with pytest.raises(ValueError, match="prune_world_size must be >= 0, got -0.2"):
        make(prune_world_size=-0.2)
    with pytest.raises(Exception, match="num_pointz"):
        make(init={"num_pointz": 3})


# ----------------------------------------------------------------------------- schedules
def test_learning_rate_schedules_at_given_steps():
    geometry = make(lr_opacity=[0, 0.05, 0.01, 100])
    optimizer = torch.optim.Adam(geometry.param_groups(), eps=1e-15)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates == pytest.approx({"means": 1e-3, "log_scales": 0.005, "rotations": 0.001,
                                   "opacity_logits": 0.05, "sh_dc": 0.01, "sh_rest": 0.0005})
    expected_means = {0: 1e-3, 2500: 1e-3 * 0.01**0.25, 5000: 1e-4, 10000: 1e-5, 20000: 1e-5}
    for step, lr in expected_means.items():
        geometry.update_learning_rates(optimizer, step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-9)
    geometry.update_learning_rates(optimizer, 50)
    assert optimizer.param_groups[3]["lr"] == pytest.approx(0.03)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.005)


def test_learning_rates_need_one_parameter_per_group():
    geometry = make()
    optimizer = torch.optim.Adam([{"params": list(geometry.parameters()), "name": "geometry"}])
    with pytest.raises(ValueError, match="param_groups"):
        geometry.update_learning_rates(optimizer, 0)
    with pytest.raises(ValueError, match="none of the Gaussian parameters"):
        geometry.update_learning_rates(torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]), 0)
    with pytest.raises(ValueError, match="viewspace_grad is None"):
        geometry.add_densification_stats(None, torch.zeros(1, 64), torch.ones(1, 64, dtype=torch.bool))


def test_sh_degree_increase_schedule():
    geometry = make(sh_degree=3, sh_increase_interval=100)
    degrees = []
    for step in (0, 99, 100, 250, 300, 1000):
        geometry.do_update_step(0, step)
        degrees.append(geometry.active_sh_degree)
    assert degrees == [0, 0, 1, 2, 3, 3]
    assert make(sh_degree=2, sh_increase_interval=0).active_sh_degree == 2


# ----------------------------------------------------------------------------- density control
@pytest.mark.device
@pytest.mark.parametrize("owner", ["system", "geometry"])
def test_density_control_counts_and_adam_moments(owner, device):
    torch.manual_seed(0)
    geometry = make(device, **densify_cfg())
    geometry.load_state_dict(constructed_state())
    if owner == "system":
        optimizer = torch.optim.Adam(geometry.param_groups(), eps=1e-15)
    else:
        optimizer = geometry.create_optimizer()
    take_step(geometry, optimizer)
    moments = {name: {key: value.clone() for key, value in optimizer.state[getattr(geometry, f"_{name}")].items()}
               for name in NAMES}
    old = {name: getattr(geometry, f"_{name}").detach().clone() for name in NAMES}
    high_gradient_stats(geometry, [0, 1, 2])

    summary = geometry.density_control(10, optimizer if owner == "system" else None)

    assert (summary["cloned"], summary["split"], summary["pruned"], summary["num_gaussians"]) == (1, 1, 1, 5)
    assert not summary["capped"]
    # Rows: survivors 0 and 3, the clone of 0, then the two samples of 1.
    assert torch.equal(geometry.means[:3], old["means"][[0, 3, 0]])
    assert torch.allclose(geometry.scales[3:], old["log_scales"][[1, 1]].exp() / 1.6)
    assert float((geometry.means.detach()[3:] - old["means"][1]).norm(dim=-1).max()) < 0.05 * 6
    params = {name: getattr(geometry, f"_{name}") for name in NAMES}
    for name, param in params.items():
        state = optimizer.state[param]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key][:3], moments[name][key][[0, 3, 0]]), (name, key)
            assert torch.equal(state[key][3:], torch.zeros_like(state[key][3:])), (name, key)
        assert torch.equal(state["step"], moments[name]["step"])
        assert any(param is p for group in optimizer.param_groups for p in group["params"])
    assert geometry.grad_norm_sum.shape == (5,) and float(geometry.grad_norm_sum.sum()) == 0
    assert all(getattr(geometry, name).device == device
               for name in ("_means", "_sh_rest", "grad_norm_sum", "visible_count", "max_radii"))
    before = geometry.means.detach().clone()
    take_step(geometry, optimizer)
    assert not torch.equal(geometry.means.detach(), before)


@pytest.mark.device
def test_density_control_only_on_its_steps(device):
    geometry = make(device, **densify_cfg())
    geometry.load_state_dict(constructed_state())
    geometry.create_optimizer()
    for step in (5, 11, 110):
        high_gradient_stats(geometry, [0, 1, 2])
        summary = geometry.density_control(step)
        assert (summary["cloned"], summary["split"], summary["pruned"]) == (0, 0, 0)
    assert geometry.num_gaussians == 4
    with pytest.raises(ValueError, match="optimizer"):
        make().density_control(10)


@pytest.mark.device
def test_max_num_gaussians_is_enforced_and_logged(monkeypatch, device):
    warnings = []
    monkeypatch.setattr(threestudio, "warn", lambda message, *args: warnings.append(message))
    geometry = make(device, **densify_cfg(max_num_gaussians=4))
    geometry.load_state_dict(constructed_state())
    geometry.create_optimizer()
    grad = torch.zeros(1, 4, 2, device=device)
    grad[0, :, 0] = torch.tensor([2.0, 1.0, 0.0, 0.5])  # 3 is quiet: below the threshold
    geometry.add_densification_stats(grad, torch.ones(1, 4, device=device),
                                     torch.ones(1, 4, dtype=torch.bool, device=device))
    summary = geometry.density_control(10)
    # 3 survive pruning; budget 1: the clone of 0 (largest gradient) fits, the split of 1 does not.
    assert summary["capped"] and summary["cloned"] == 1 and summary["split"] == 0
    assert geometry.num_gaussians == 4
    assert len(warnings) == 1 and "max_num_gaussians=4" in warnings[0] and "step 10" in warnings[0]


@pytest.mark.device
def test_opacity_reset(device):
    geometry = make(device, **densify_cfg(opacity_reset_interval=30, opacity_reset_value=0.01, densify_interval=1000))
    geometry.load_state_dict(constructed_state())
    optimizer = geometry.create_optimizer()
    take_step(geometry, optimizer)
    opacities = geometry.opacities.detach().clone()
    assert not geometry.density_control(20)["opacity_reset"]
    assert geometry.density_control(30)["opacity_reset"]
    assert torch.allclose(geometry.opacities, opacities.clamp_max(0.01))
    assert torch.equal(optimizer.state[geometry._opacity_logits]["exp_avg"], torch.zeros(4, 1, device=device))
    assert optimizer.param_groups[3]["params"][0] is geometry._opacity_logits
    take_step(geometry, optimizer)


def density_control_at(geometry, step):
    """``density_control(step)``; on CUDA, where the non-finite flag is read a step late
    (``_nonfinite_suspected``), after the step before it and a synchronisation."""
    if geometry.means.device.type == "cuda":
        geometry.density_control(step - 1)
        torch.cuda.synchronize()
    return geometry.density_control(step)


@pytest.mark.device
def test_nonfinite_parameters_raise_with_the_step(device):
    geometry = make(device, **densify_cfg())
    geometry.create_optimizer()
    with torch.no_grad():
        geometry._means[5, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"after step 7: 1 of 64 Gaussians \(in means\)"):
        density_control_at(geometry, 7)


@pytest.mark.device
def test_steps_without_density_control_do_not_synchronise_cuda(device):
    if device.type != "cuda":
        pytest.skip("CUDA's sync debug mode needs a CUDA device (run with --device cuda); on a CPU the "
                    "non-finite flag is read at once, which waits for nothing")
    geometry = make(device, **densify_cfg())
    geometry.create_optimizer()
    geometry.density_control(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        summaries = [geometry.density_control(step) for step in range(2, 6)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [s["nonfinite"] for s in summaries] == [0, 0, 0, 0]


@pytest.mark.device
def test_nonfinite_parameters_pruned_on_request(monkeypatch, device):
    warnings = []
    monkeypatch.setattr(threestudio, "warn", lambda message, *args: warnings.append(message))
    geometry = make(device, **densify_cfg(nonfinite="prune"))
    optimizer = geometry.create_optimizer()
    take_step(geometry, optimizer)
    with torch.no_grad():
        geometry._sh_dc[3, 0, 2] = float("inf")
        geometry._log_scales[9, 0] = float("nan")
    kept = [i for i in range(64) if i not in (3, 9)]
    means = geometry.means.detach()[kept]
    exp_avg = optimizer.state[geometry._means]["exp_avg"][kept]
    summary = density_control_at(geometry, 7)
    assert summary["nonfinite"] == 2 and geometry.num_gaussians == 62
    assert torch.equal(geometry.means, means)
    assert torch.equal(optimizer.state[geometry._means]["exp_avg"], exp_avg)
    assert "step 7" in warnings[0] and "log_scales" in warnings[0] and "sh_dc" in warnings[0]
    take_step(geometry, optimizer)


# ----------------------------------------------------------------------------- PLY and checkpoints
@pytest.mark.device
def test_ply_geometry_ply_round_trip_is_exact(tmp_path, device):
    g = torch.Generator().manual_seed(5)
    tensors = {
        "means": torch.randn(20, 3, generator=g),
        "log_scales": torch.randn(20, 3, generator=g) - 3,
        "rotations": torch.randn(20, 4, generator=g),  # not normalised: stored as is
        "opacity_logits": torch.randn(20, 1, generator=g),
        "sh_dc": torch.randn(20, 1, 3, generator=g),
        "sh_rest": torch.randn(20, 15, 3, generator=g),
    }
    source = tmp_path / "in.ply"
    write_gaussian_ply(source, tensors)
    geometry = make(device, init={"type": "ply", "path": str(source)}, sh_degree=3)
    assert geometry.num_gaussians == 20
    assert torch.allclose(geometry.rotations.norm(dim=-1), torch.ones(20, device=device))
    exported = tmp_path / "out.ply"
    geometry.export_ply(str(exported))
    original, again = PlyData.read(str(source))["vertex"].data, PlyData.read(str(exported))["vertex"].data
    assert original.dtype == again.dtype
    for name in original.dtype.names:
        assert np.array_equal(original[name], again[name]), name
    assert source.read_bytes() == exported.read_bytes()


def test_ply_init_errors(tmp_path):
    path = tmp_path / "degree1.ply"
    g = torch.Generator().manual_seed(0)
    write_gaussian_ply(path, {"means": torch.randn(5, 3, generator=g), "log_scales": torch.randn(5, 3, generator=g),
                              "rotations": torch.randn(5, 4, generator=g), "opacity_logits": torch.zeros(5, 1),
                              "sh_dc": torch.zeros(5, 1, 3), "sh_rest": torch.zeros(5, 3, 3)})
    with pytest.raises(ValueError, match=r"f_rest_\*.*sh_degree=0"):
        make(init={"type": "ply", "path": str(path)}, sh_degree=0)
    with pytest.raises(ValueError, match="scale_0..2 differ"):
        make(init={"type": "ply", "path": str(path)}, sh_degree=1, isotropic=True)


@pytest.mark.device
def test_resume_with_a_different_number_of_gaussians(tmp_path, device):
    torch.manual_seed(0)
    trained = make(device, **densify_cfg(), init={"num_points": 30, "seed": 0})
    optimizer = trained.create_optimizer()
    high_gradient_stats(trained, list(range(10)))
    trained.density_control(10)
    take_step(trained, optimizer)
    assert trained.num_gaussians != 30
    state = trained.state_dict()

    fresh = make(device, init={"num_points": 8, "seed": 1})
    fresh.load_state_dict(state)
    assert fresh.num_gaussians == trained.num_gaussians
    for name in NAMES:
        assert torch.equal(getattr(fresh, f"_{name}"), getattr(trained, f"_{name}")), name
    assert fresh.grad_norm_sum.shape == (trained.num_gaussians,) and fresh.grad_norm_sum.device == device
    optimizer = fresh.create_optimizer()
    take_step(fresh, optimizer)

    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"geometry.{key}": value for key, value in state.items()},
                "epoch": 0, "global_step": 250}, checkpoint)
    from_checkpoint = make(device, init={"type": "checkpoint", "path": str(checkpoint)})
    assert torch.equal(from_checkpoint.means, trained.means)
    assert from_checkpoint.scene_extent == pytest.approx(0.5)
    via_weights = make(device, weights=f"{checkpoint}:geometry", sh_degree=0)
    assert torch.equal(via_weights.sh_coefficients, trained.sh_coefficients)
    with pytest.raises(ValueError, match="checkpoint_prefix"):
        make(init={"type": "checkpoint", "path": str(checkpoint), "checkpoint_prefix": "system.geometry."})


def test_state_dict_with_other_sh_degree_is_rejected():
    source = make(sh_degree=1)
    with pytest.raises(RuntimeError, match="_sh_rest"):
        make(sh_degree=2).load_state_dict(source.state_dict())

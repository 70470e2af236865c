"""Pure-PyTorch Gaussian core: initialization, density control, optimizer surgery, PLY files."""
import math

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from threestudio_stabledreamer.core.densification import (
    accumulate_screen_statistics,
    apply_plan,
    average_gradients,
    limit_growth,
    plan_density_step,
    sample_split_children,
    select_clone_and_split,
    select_prune,
)
from threestudio_stabledreamer.core.initialization import (
    MIN_NEIGHBOUR_DISTANCE,
    constant_colours,
    gaussians_from_points,
    mean_neighbour_distance,
    neighbour_log_scales,
    sample_points_in_ball,
    sample_points_in_box,
)
from threestudio_stabledreamer.core.optimizer_surgery import rebuild_parameter, replace_parameter_values
from threestudio_stabledreamer.core.ply import read_gaussian_ply, write_gaussian_ply
from threestudio_stabledreamer.core.sh import sh_dc_to_rgb


def brute_force_mean_neighbour_distance(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    differences = points.double()[:, None, :] - points.double()[None, :, :]
    distances = differences.norm(dim=-1)
    distances.fill_diagonal_(float("inf"))
    return distances.sort(dim=-1).values[:, :k].mean(dim=-1)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- initialization
def test_ball_points_are_uniform_in_the_ball():
    points = sample_points_in_ball(20000, 0.7, generator())
    radii = points.norm(dim=-1)
    assert points.shape == (20000, 3)
    assert float(radii.max()) <= 0.7 + 1e-6
    # Uniform by volume: P(r < R/2) = 1/8, and the mean is the centre.
    assert abs(float((radii < 0.35).float().mean()) - 0.125) < 0.01
    assert torch.allclose(points.mean(0), torch.zeros(3), atol=0.01)


def test_box_points_fill_the_box():
    points = sample_points_in_box(20000, 0.4, generator())
    assert float(points.abs().max()) <= 0.4
    assert abs(float((points[:, 0] > 0.2).float().mean()) - 0.25) < 0.015


def test_neighbour_distance_on_a_lattice_is_the_spacing():
    axis = torch.arange(4, dtype=torch.float32) * 0.5
    lattice = torch.cartesian_prod(axis, axis, axis)
    # Every lattice point, corners included, has at least 3 neighbours at the spacing.
    for method in ("kdtree", "torch"):
        distances = mean_neighbour_distance(lattice, 3, method)
        assert torch.allclose(distances, torch.full((64,), 0.5), atol=1e-6)


@pytest.mark.parametrize("method", ["kdtree", "torch"])
def test_neighbour_distance_matches_brute_force(method):
    points = torch.randn(300, 3, generator=generator(1))
    expected = brute_force_mean_neighbour_distance(points).float()
    # A tiny chunk size makes the torch path loop over many chunks.
    got = mean_neighbour_distance(points, 3, method, chunk_elements=1000)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_neighbour_distance_edge_cases():
    coincident = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # Fewer than 4 points: every other point is used.
    assert torch.allclose(mean_neighbour_distance(coincident), torch.tensor([0.5, 0.5, 1.0]))
    pair = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(mean_neighbour_distance(pair), torch.full((2,), MIN_NEIGHBOUR_DISTANCE))
    with pytest.raises(ValueError, match="at least 2 points"):
        mean_neighbour_distance(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="method"):
        mean_neighbour_distance(coincident, method="faiss")


def test_gaussians_from_points():
    points = torch.randn(50, 3, generator=generator(2))
    colours = torch.rand(50, 3, generator=generator(3))
    tensors = gaussians_from_points(points, colours, opacity=0.1, sh_degree=2)
    assert torch.equal(tensors["means"], points)
    assert torch.allclose(torch.sigmoid(tensors["opacity_logits"]), torch.full((50, 1), 0.1))
    assert torch.equal(tensors["rotations"], torch.tensor([1.0, 0, 0, 0]).expand(50, 4))
    assert torch.allclose(sh_dc_to_rgb(tensors["sh_dc"][:, 0]), colours, atol=1e-6)
    assert torch.equal(tensors["sh_rest"], torch.zeros(50, 8, 3))
    expected_scale = brute_force_mean_neighbour_distance(points).float()
    assert torch.allclose(tensors["log_scales"].exp(), expected_scale[:, None].expand(50, 3), rtol=1e-5)
    assert neighbour_log_scales(points, isotropic=True).shape == (50, 1)


def test_bad_initialization_inputs():
    with pytest.raises(ValueError, match="radius"):
        sample_points_in_ball(10, 0.0)
    with pytest.raises(ValueError, match="constant colour"):
        constant_colours(3, [0.5, 2.0, 0.5])
    with pytest.raises(ValueError, match="opacity"):
        gaussians_from_points(torch.randn(5, 3), torch.rand(5, 3), opacity=1.0, sh_degree=0)


# ----------------------------------------------------------------------------- density control
def test_screen_statistics_accumulate_visible_views_only():
    grad = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]],
                         [[0.0, 1.0], [6.0, 8.0], [0.0, 0.0]]])
    radii = torch.tensor([[5, 2, 9], [7, 4, 0]])
    visible = torch.tensor([[True, True, False], [True, False, False]])
    sums, counts, max_radii = accumulate_screen_statistics(
        torch.zeros(3), torch.zeros(3), torch.zeros(3), grad, radii, visible
    )
    assert torch.equal(sums, torch.tensor([6.0, 1.0, 0.0]))
    assert torch.equal(counts, torch.tensor([2.0, 1.0, 0.0]))
    assert torch.equal(max_radii, torch.tensor([7.0, 2.0, 0.0]))
    assert torch.equal(average_gradients(sums, counts), torch.tensor([3.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="radii must have shape"):
        accumulate_screen_statistics(torch.zeros(3), torch.zeros(3), torch.zeros(3), grad, radii[:, :2], visible)


def constructed_gaussians():
    """Six Gaussians: 0 clone, 1 split, 2 low opacity, 3 kept, 4 too big in the world, 5 too big on screen."""
    quarter_turn_z = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]
    tensors = {
        "means": torch.arange(18, dtype=torch.float32).reshape(6, 3),
        "log_scales": torch.tensor([0.01, 0.3, 0.01, 0.01, 2.0, 0.01]).log()[:, None]
        * torch.tensor([[1.0, 1.0, 1.0]]),
        "rotations": torch.tensor([[1.0, 0, 0, 0]] * 6),
        "opacity_logits": torch.tensor([[2.0], [1.0], [-8.0], [0.5], [0.0], [0.0]]),
        "sh_dc": torch.arange(18, dtype=torch.float32).reshape(6, 1, 3) / 10,
        "sh_rest": torch.arange(6 * 3 * 3, dtype=torch.float32).reshape(6, 3, 3) / 100,
    }
    # Gaussian 1 is elongated along its local x axis, turned to the world y axis.
    tensors["log_scales"][1] = torch.tensor([0.3, 0.01, 0.02]).log()
    tensors["rotations"][1] = torch.tensor(quarter_turn_z)
    avg_grad = torch.tensor([0.5, 0.5, 0.5, 0.001, 0.5, 0.5])
    max_radii = torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0, 500.0])
    return tensors, avg_grad, max_radii


def select_constructed(tensors, avg_grad, max_radii):
    max_scales = tensors["log_scales"].exp().max(-1).values
    prune = select_prune(torch.sigmoid(tensors["opacity_logits"][:, 0]), max_scales, max_radii, 0.005, 1.0, 100.0)
    clone, split = select_clone_and_split(avg_grad, max_scales, 0.1, 0.05, ~prune)
    return clone, split, prune


def test_clone_split_prune_counts_positions_and_scales():
    tensors, avg_grad, max_radii = constructed_gaussians()
    clone, split, prune = select_constructed(tensors, avg_grad, max_radii)
    assert clone.tolist() == [True, False, False, False, False, False]
    assert split.tolist() == [False, True, False, False, False, False]
    assert prune.tolist() == [False, False, True, False, True, True]

    plan = plan_density_step(tensors, clone, split, prune, n_split=2, generator=generator(7))
    new = {name: apply_plan(tensor, plan, plan.appended[name]) for name, tensor in tensors.items()}
    assert (plan.num_cloned, plan.num_split, plan.num_pruned) == (1, 1, 3)
    assert plan.source_index.tolist() == [0, 3, 0]
    assert new["means"].shape == (5, 3)
    # Survivors and the clone are exact copies.
    for name in tensors:
        assert torch.equal(new[name][:3], tensors[name][[0, 3, 0]])
    # Split samples: parent's mean + R (z * s), with R the quarter turn about z, scales / 1.6.
    z = torch.randn(2, 3, generator=generator(7))
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected_means = tensors["means"][1] + (z * torch.tensor([0.3, 0.01, 0.02])) @ rotation.T
    assert torch.allclose(new["means"][3:], expected_means, atol=1e-6)
    assert torch.allclose(new["log_scales"][3:].exp(), torch.tensor([[0.3, 0.01, 0.02]] * 2) / 1.6)
    for name in ("rotations", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(new[name][3:], tensors[name][[1, 1]])


def test_split_into_three_divides_scales_by_2_4():
    tensors, _, _ = constructed_gaussians()
    split = torch.tensor([False, True, False, False, True, False])
    children = sample_split_children(tensors, split, 3, generator(0))
    assert children["means"].shape == (6, 3)
    parents = tensors["log_scales"][[1, 4, 1, 4, 1, 4]].exp()
    assert torch.allclose(children["log_scales"].exp(), parents / 2.4)
    with pytest.raises(ValueError, match="n_split"):
        sample_split_children(tensors, split, 1)


def test_limit_growth_keeps_the_largest_gradients():
    clone = torch.tensor([True, False, True, False, True])
    split = torch.tensor([False, True, False, True, False])
    avg_grad = torch.tensor([0.5, 0.9, 0.1, 0.3, 0.7])
    # Growth: clone 1 each, split (n_split=3) 2 each. By gradient: 1 (2), 4 (1), 0 (1), 3 (2), 2 (1).
    kept_clone, kept_split = limit_growth(clone, split, avg_grad, 3, budget=4)
    assert kept_clone.tolist() == [True, False, False, False, True]
    assert kept_split.tolist() == [False, True, False, False, False]
    kept_clone, kept_split = limit_growth(clone, split, avg_grad, 3, budget=0)
    assert not kept_clone.any() and not kept_split.any()
    assert limit_growth(clone, split, avg_grad, 3, budget=100) == (clone, split)


# ----------------------------------------------------------------------------- optimizer surgery
def stepped_optimizer(kind: str):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 2))
    other = torch.nn.Parameter(torch.randn(3))
    if kind == "adam":
        optimizer = torch.optim.Adam([{"params": [weight], "lr": 0.1, "name": "w"}, {"params": [other]}])
    else:
        optimizer = torch.optim.SGD([{"params": [weight], "lr": 0.1}, {"params": [other]}], lr=0.1, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        ((weight**2).sum() * torch.arange(1.0, 6.0)[:, None]).sum().backward()
        (other**2).sum().backward()
        optimizer.step()
    return weight, other, optimizer


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_rebuild_parameter_keeps_and_zeroes_state_rows(kind):
    weight, other, optimizer = stepped_optimizer(kind)
    old_state = {key: value.clone() for key, value in optimizer.state[weight].items()}
    source_index = torch.tensor([0, 2, 4, 0])
    new = torch.nn.Parameter(torch.cat([weight.detach()[source_index], torch.ones(2, 2)]))
    assert rebuild_parameter(optimizer, weight, new, source_index, 2)
    assert optimizer.param_groups[0]["params"][0] is new
    assert weight not in optimizer.state
    for key, value in old_state.items():
        if value.ndim == 0:
            assert torch.equal(optimizer.state[new][key], value)
        else:
            assert torch.equal(optimizer.state[new][key][:4], value[source_index])
            assert torch.equal(optimizer.state[new][key][4:], torch.zeros(2, 2))
    optimizer.zero_grad()
    (new**2).sum().backward()
    before = new.detach().clone()
    optimizer.step()
    assert not torch.equal(new.detach(), before)


def test_replace_values_zeroes_state_and_missing_parameter_is_reported():
    weight, other, optimizer = stepped_optimizer("adam")
    step = optimizer.state[weight]["step"].clone()
    new = torch.nn.Parameter(weight.detach() * 0)
    assert replace_parameter_values(optimizer, weight, new)
    assert torch.equal(optimizer.state[new]["exp_avg"], torch.zeros(5, 2))
    assert torch.equal(optimizer.state[new]["step"], step)
    assert optimizer.param_groups[0]["name"] == "w"
    stranger = torch.nn.Parameter(torch.zeros(5, 2))
    assert not replace_parameter_values(optimizer, stranger, torch.nn.Parameter(torch.zeros(5, 2)))
    with pytest.raises(ValueError, match="shape"):
        rebuild_parameter(optimizer, new, torch.nn.Parameter(torch.zeros(3, 2)), torch.tensor([0]), 1)


# ----------------------------------------------------------------------------- PLY
def random_tensors(n: int, sh_degree: int):
    g = generator(11)
    k = (sh_degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=g),
        "log_scales": torch.randn(n, 3, generator=g),
        "rotations": torch.randn(n, 4, generator=g),
        "opacity_logits": torch.randn(n, 1, generator=g),
        "sh_dc": torch.randn(n, 1, 3, generator=g),
        "sh_rest": torch.randn(n, k - 1, 3, generator=g),
    }


def test_ply_round_trip_and_3dgs_field_layout(tmp_path):
    tensors = random_tensors(7, 2)
    path = tmp_path / "gaussians.ply"
    write_gaussian_ply(path, tensors)
    back = read_gaussian_ply(path, 2)
    for name in tensors:
        assert torch.equal(back[name], tensors[name]), name
    vertex = PlyData.read(str(path))["vertex"]
    names = [prop.name for prop in vertex.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:33] == [f"f_rest_{i}" for i in range(24)]
    assert names[33:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # Channel-major: f_rest_{c * 8 + k} is coefficient k + 1 of channel c (green is c = 1).
    assert np.array_equal(vertex["f_rest_10"], tensors["sh_rest"][:, 2, 1].numpy())
    assert np.array_equal(vertex["f_rest_0"], tensors["sh_rest"][:, 0, 0].numpy())
    assert np.array_equal(vertex["rot_0"], tensors["rotations"][:, 0].numpy())


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_ply_of_zero_gaussians_round_trips(tmp_path, sh_degree):
    """A run whose Gaussians were all pruned still exports a valid, empty PLY."""
    tensors = random_tensors(0, sh_degree)
    path = tmp_path / "empty.ply"
    write_gaussian_ply(path, tensors)
    assert PlyData.read(str(path))["vertex"].count == 0
    back = read_gaussian_ply(path, sh_degree)
    for name in tensors:
        assert back[name].shape == tensors[name].shape, name


def write_vertices(path, names, n=3):
    records = np.zeros(n, dtype=[(name, "f4") for name in names])
    PlyData([PlyElement.describe(records, "vertex")]).write(str(path))


def test_malformed_ply_errors_name_the_problem(tmp_path):
    full = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = tmp_path / "missing.ply"
    write_vertices(missing, [name for name in full if name != "scale_1"])
    with pytest.raises(ValueError, match="scale_1"):
        read_gaussian_ply(missing, 0)
    degree_zero = tmp_path / "degree0.ply"
    write_vertices(degree_zero, full)
    assert read_gaussian_ply(degree_zero, 0)["sh_rest"].shape == (3, 0, 3)
    with pytest.raises(ValueError, match=r"f_rest_\*.*has 0 entries.*needs 9"):
        read_gaussian_ply(degree_zero, 1)
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"this is not a ply file\n")
    with pytest.raises(ValueError, match="not a readable PLY"):
        read_gaussian_ply(garbage, 0)
    faces = tmp_path / "faces.ply"
    records = np.zeros(2, dtype=[("x", "f4")])
    PlyData([PlyElement.describe(records, "face")]).write(str(faces))
    with pytest.raises(ValueError, match="no 'vertex' element"):
        read_gaussian_ply(faces, 0)

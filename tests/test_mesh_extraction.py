"""Marching cubes on the Gaussians' opacity field (core.mesh_extraction), checked against
closed forms and a brute-force evaluation."""
import math

import numpy as np
import pytest
import torch
import trimesh

from threestudio_stabledreamer.core.gaussians import covariance_from_scale_rotation
from threestudio_stabledreamer.core.mesh_extraction import (
    extract_mesh,
    gaussian_bounds,
    opacity_field,
    save_mesh,
)
from threestudio_stabledreamer.core.sh import rgb_to_sh_dc


def isotropic(centre, sigma, opacity, rgb=(0.5, 0.5, 0.5)):
    means = torch.tensor([centre], dtype=torch.float32)
    covariances = torch.eye(3)[None] * sigma**2
    return means, covariances, torch.tensor([[opacity]]), rgb_to_sh_dc(torch.tensor([[rgb]]))


def test_single_isotropic_gaussian_gives_the_analytic_sphere():
    sigma, opacity, level, resolution = 0.2, 0.9, 0.3, 64
    means, covariances, opacities, dc = isotropic((0.1, -0.2, 0.3), sigma, opacity)
    mesh = extract_mesh(means, covariances, opacities, dc, resolution=resolution, level=level)
    expected = sigma * math.sqrt(2 * math.log(opacity / level))
    radii = np.linalg.norm(mesh.vertices - means.numpy(), axis=1)
    lo, hi = gaussian_bounds(means, covariances)
    spacing = float((hi - lo).max()) * 1.1 / (resolution - 1)
    assert len(mesh.faces) > 100
    assert np.abs(radii - expected).max() < 0.1 * spacing
    closed = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    assert closed.is_watertight
    assert closed.volume == pytest.approx(4 / 3 * math.pi * expected**3, rel=0.02)


def test_faces_point_outwards():
    means, covariances, opacities, dc = isotropic((0.0, 0.0, 0.0), 0.1, 0.8)
    mesh = extract_mesh(means, covariances, opacities, dc, resolution=32, level=0.2)
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    normals = np.cross(b - a, c - a)
    outward = np.einsum("fi,fi->f", normals, (a + b + c) / 3)
    assert (outward > 0).all()


def test_field_matches_brute_force_evaluation_of_anisotropic_gaussians():
    generator = torch.Generator().manual_seed(0)
    n = 12
    means = torch.rand(n, 3, generator=generator) - 0.5
    scales = 0.03 + 0.1 * torch.rand(n, 3, generator=generator)
    quats = torch.randn(n, 4, generator=generator)
    covariances = covariance_from_scale_rotation(scales, quats)
    opacities = torch.rand(n, 1, generator=generator)
    lo, hi, resolution, cutoff = torch.full((3,), -0.8), torch.full((3,), 0.7), 20, 3.0

    field = opacity_field(means, covariances, opacities, lo, hi, resolution, cutoff).numpy()

    axis = [np.linspace(lo[k].item(), hi[k].item(), resolution) for k in range(3)]
    points = np.stack(np.meshgrid(*axis, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    expected = np.zeros(len(points))
    for i in range(n):
        d = points - means[i].double().numpy()
        m = np.einsum("pi,ij,pj->p", d, np.linalg.inv(covariances[i].double().numpy()), d)
        expected += np.where(m <= cutoff**2, opacities[i].item() * np.exp(-0.5 * m), 0.0)
    np.testing.assert_allclose(field.reshape(-1), expected, rtol=1e-4, atol=1e-6)
    # tiny chunks (many windows of mixed sizes) give the same field
    chunked = opacity_field(means, covariances, opacities, lo, hi, resolution, cutoff, max_samples_per_chunk=64)
    np.testing.assert_allclose(chunked.numpy(), field, rtol=1e-5, atol=1e-7)


def test_contribution_stops_at_the_cutoff_radius():
    means, covariances, opacities, _ = isotropic((0.0, 0.0, 0.0), 0.1, 1.0)
    # Lattice spacing 0.01 along x: samples at 0.29 and 0.31 straddle 3 sigma = 0.3.
    lo, hi = torch.tensor([-0.5, -0.5, -0.5]), torch.tensor([0.5, 0.5, 0.5])
    field = opacity_field(means, covariances, opacities, lo, hi, 101, cutoff_sigma=3.0)
    centre = 50
    assert field[centre + 29, centre, centre] == pytest.approx(math.exp(-0.5 * 2.9**2), rel=1e-4)
    assert field[centre + 31, centre, centre] == 0.0


def test_vertex_colours_come_from_the_nearby_gaussians():
    red = isotropic((-0.5, 0.0, 0.0), 0.1, 0.9, rgb=(1.0, 0.0, 0.0))
    blue = isotropic((0.5, 0.0, 0.0), 0.1, 0.9, rgb=(0.0, 0.0, 1.0))
    means, covariances, opacities, dc = (torch.cat([r, b]) for r, b in zip(red, blue))
    mesh = extract_mesh(means, covariances, opacities, dc, resolution=48, level=0.3)
    left = mesh.vertices[:, 0] < 0
    assert left.any() and (~left).any()
    np.testing.assert_allclose(mesh.colors[left], [[1.0, 0.0, 0.0]] * int(left.sum()), atol=1e-5)
    np.testing.assert_allclose(mesh.colors[~left], [[0.0, 0.0, 1.0]] * int((~left).sum()), atol=1e-5)


def test_level_above_the_field_gives_an_empty_mesh():
    means, covariances, opacities, dc = isotropic((0.0, 0.0, 0.0), 0.1, 0.4)
    mesh = extract_mesh(means, covariances, opacities, dc, resolution=16, level=0.5)
    assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3)


def test_bad_inputs_are_named():
    means, covariances, opacities, dc = isotropic((0.0, 0.0, 0.0), 0.1, 0.9)
    with pytest.raises(ValueError, match="resolution"):
        opacity_field(means, covariances, opacities, torch.zeros(3) - 1, torch.ones(3), 1)
    with pytest.raises(ValueError, match="bbox_max"):
        opacity_field(means, covariances, opacities, torch.ones(3), torch.zeros(3), 8)
    with pytest.raises(ValueError, match="zero Gaussians"):
        extract_mesh(means[:0], covariances[:0], opacities[:0], dc[:0])


@pytest.mark.parametrize("suffix", [".obj", ".glb"])
def test_mesh_files_round_trip_with_vertex_colours(tmp_path, suffix):
    means, covariances, opacities, dc = isotropic((0.0, 0.0, 0.0), 0.1, 0.9, rgb=(0.2, 0.6, 1.0))
    mesh = extract_mesh(means, covariances, opacities, dc, resolution=24, level=0.3)
    loaded = trimesh.load(save_mesh(tmp_path / f"mesh{suffix}", mesh), force="mesh", process=False)
    assert len(loaded.faces) == len(mesh.faces)
    assert len(loaded.vertices) == len(mesh.vertices)
    colours = np.asarray(loaded.visual.vertex_colors)[:, :3]
    np.testing.assert_allclose(colours / 255.0, np.tile([0.2, 0.6, 1.0], (len(colours), 1)), atol=1 / 255)

"""Quaternion, covariance and spherical-harmonic conventions against independent computations."""
import math

import pytest
import torch

from threestudio_stabledreamer.core.gaussians import (
    covariance_from_scale_rotation,
    quaternion_to_rotation_matrix,
    shortest_axis_normals,
)
from threestudio_stabledreamer.core.sh import (
    eval_sh,
    num_sh_coefficients,
    rgb_to_sh_dc,
    sh_basis,
    sh_dc_to_rgb,
)


def rodrigues(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotation by ``angle`` radians about ``axis`` (right-handed), via Rodrigues' formula."""
    k = axis / axis.norm()
    K = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_wxyz_quaternion_matches_axis_angle_rotation():
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    angle = 1.1
    unit = axis / axis.norm()
    q = torch.cat([torch.tensor([math.cos(angle / 2)], dtype=torch.float64), math.sin(angle / 2) * unit])
    torch.testing.assert_close(quaternion_to_rotation_matrix(q), rodrigues(axis, angle))


def test_quaternion_is_normalised_and_rotation_is_proper():
    q = torch.randn(64, 4, dtype=torch.float64) * 3
    R = quaternion_to_rotation_matrix(q)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(64, dtype=torch.float64))


def test_covariance_has_scales_squared_along_rotated_axes():
    scales = torch.tensor([[0.1, 0.5, 2.0]], dtype=torch.float64)
    q = torch.randn(1, 4, dtype=torch.float64)
    cov = covariance_from_scale_rotation(scales, q)[0]
    R = quaternion_to_rotation_matrix(q)[0]
    for axis in range(3):
        direction = R[:, axis]
        torch.testing.assert_close(direction @ cov @ direction, scales[0, axis] ** 2)
    eigenvalues = torch.linalg.eigvalsh(cov)
    torch.testing.assert_close(eigenvalues, (scales[0] ** 2).sort().values)


def test_shortest_axis_normal_is_the_flat_direction():
    angle = 0.7
    q = torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]])  # about +z
    scales = torch.tensor([[1.0, 0.01, 1.0]])  # flat along the local y axis
    normal = shortest_axis_normals(scales, q)[0]
    expected = torch.tensor([-math.sin(angle), math.cos(angle), 0.0])
    torch.testing.assert_close(normal, expected)


def fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


def test_sh_basis_is_orthonormal_over_the_sphere():
    dirs = fibonacci_sphere(40000)
    Y = sh_basis(dirs, 3)
    assert Y.shape == (40000, num_sh_coefficients(3))
    gram = 4 * math.pi * Y.T @ Y / dirs.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "index, direction, value",
    [
        (1, (0.0, 1.0, 0.0), -0.4886025119029199),  # -C1 * y
        (2, (0.0, 0.0, 1.0), 0.4886025119029199),  # C1 * z
        (3, (1.0, 0.0, 0.0), -0.4886025119029199),  # -C1 * x
        (6, (0.0, 0.0, 1.0), 2 * 0.31539156525252005),  # C2[2] * (2z^2 - x^2 - y^2)
    ],
)
def test_sh_signs_follow_3dgs(index, direction, value):
    Y = sh_basis(torch.tensor(direction, dtype=torch.float64), 3)
    assert Y[index].item() == pytest.approx(value)


def test_eval_sh_uses_only_active_bands_and_dc_round_trips():
    coeffs = torch.randn(5, 16, 3)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    degree0 = eval_sh(coeffs, dirs, 0)
    torch.testing.assert_close(degree0, 0.28209479177387814 * coeffs[:, 0])
    truncated = coeffs.clone()
    truncated[:, 4:] = 0
    torch.testing.assert_close(eval_sh(coeffs, dirs, 1), eval_sh(truncated, dirs, 3))
    rgb = torch.rand(7, 3)
    torch.testing.assert_close(sh_dc_to_rgb(rgb_to_sh_dc(rgb)), rgb)


def test_sh_degree_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="sh degree must be in 0..3, got 4"):
        sh_basis(torch.zeros(3), 4)

"""Geometric quantities of anisotropic 3D Gaussians.

Conventions used throughout the extension:
- quaternions are stored in (w, x, y, z) order, as the reference 3DGS rasterizer expects;
- a Gaussian's 3D covariance is ``R diag(s)^2 R^T`` with ``R`` the rotation of its
  (normalised) quaternion and ``s`` its per-axis standard deviations (world units);
- the columns of ``R`` are the Gaussian's local axes expressed in world coordinates.
"""
import torch
import torch.nn.functional as F


def quaternion_to_rotation_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] in (w, x, y, z) order.

    The quaternions are normalised first, so any non-zero quaternion is accepted.
    """
    w, x, y, z = F.normalize(quaternions, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quaternions.shape[:-1], 3, 3)


def covariance_from_scale_rotation(scales: torch.Tensor, quaternions: torch.Tensor) -> torch.Tensor:
    """3D covariances [..., 3, 3] from per-axis scales [..., 3] and wxyz quaternions [..., 4]."""
    axes = quaternion_to_rotation_matrix(quaternions) * scales.unsqueeze(-2)
    return axes @ axes.transpose(-1, -2)


def shortest_axis_normals(scales: torch.Tensor, quaternions: torch.Tensor) -> torch.Tensor:
    """Unit normals [..., 3]: the world direction of each Gaussian's shortest axis.

    The sign is arbitrary (a flat Gaussian has two faces); renderers orient it towards
    the camera.
    """
    rotation = quaternion_to_rotation_matrix(quaternions)
    shortest = scales.argmin(dim=-1)
    index = shortest[..., None, None].expand(*shortest.shape, 3, 1)
    return rotation.gather(-1, index).squeeze(-1)

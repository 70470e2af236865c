"""Real spherical harmonics up to degree 3, in the basis and sign convention of 3DGS.

Colour from SH coefficients ``c`` [..., K, 3] (K = (degree + 1)^2) seen along the unit
direction ``d`` from the camera centre to the Gaussian is ``sum_k Y_k(d) c_k + 0.5``,
clamped at 0 by the rasterizer. The DC coefficient of an RGB colour ``rgb`` is
``(rgb - 0.5) / Y_0``.
"""
import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
         -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3


def num_sh_coefficients(degree: int) -> int:
    """Number of coefficients per colour channel for bands 0..degree."""
    return (degree + 1) ** 2


def sh_basis(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """SH basis values [..., (degree+1)^2] at unit directions [..., 3]."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    basis = [torch.full_like(directions[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = directions.unbind(-1)
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        basis += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        basis += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(basis, dim=-1)


def eval_sh(coefficients: torch.Tensor, directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Raw SH colour [..., 3] (before the +0.5 offset) of coefficients [..., K, 3].

    Only the first (degree+1)^2 coefficients are used, so a model can switch higher
    bands on progressively while storing all of them.
    """
    k = num_sh_coefficients(degree)
    basis = sh_basis(directions, degree)
    return torch.einsum("...k,...kc->...c", basis, coefficients[..., :k, :])


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient whose colour (after the +0.5 offset) is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_sh_dc`."""
    return dc * SH_C0 + 0.5

"""Camera and tensor helpers.

Camera conventions (threestudio's): camera space is OpenGL's (x right, y up, the camera
looks along -z); ``c2w`` maps camera to world coordinates; pixel (i, j) has its centre at
(i + 0.5, j + 0.5), i along the width, j along the height, j growing downwards.
"""
import torch
import torch.nn.functional as F

from threestudio.utils.typing import *


def get_activation(name) -> Callable:
    """Activation by name: None/"none" (identity), "exp", "shifted_exp" (exp(x - 1)),
    "sigmoid", "tanh", "shifted_softplus" (softplus(x - 1)), "scale_-11_01" (x / 2 + 0.5),
    or any function of ``torch.nn.functional``."""
    if name is None or name.lower() == "none":
        return lambda x: x
    name = name.lower()
    named = {
        "exp": torch.exp,
        "shifted_exp": lambda x: torch.exp(x - 1.0),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "shifted_softplus": lambda x: F.softplus(x - 1.0),
        "scale_-11_01": lambda x: x * 0.5 + 0.5,
    }
    if name in named:
        return named[name]
    if hasattr(F, name):
        return getattr(F, name)
    raise ValueError(f"Unknown activation function: {name}")


def get_ray_directions(
    H: int, W: int, focal: float, use_pixel_centers: bool = True
) -> Float[Tensor, "H W 3"]:
    """Camera-space direction through every pixel, ``((i - W/2) / focal, -(j - H/2) / focal,
    -1)`` with ``focal`` in pixels and the principal point at the image centre."""
    offset = 0.5 if use_pixel_centers else 0.0
    i, j = torch.meshgrid(
        torch.arange(W, dtype=torch.float32) + offset,
        torch.arange(H, dtype=torch.float32) + offset,
        indexing="xy",
    )
    return torch.stack(
        [(i - W / 2) / focal, -(j - H / 2) / focal, -torch.ones_like(i)], -1
    )


def get_rays(
    directions: Float[Tensor, "B H W 3"],
    c2w: Float[Tensor, "B 4 4"],
    keepdim=False,
    normalize=True,
) -> Tuple[Float[Tensor, "... 3"], Float[Tensor, "... 3"]]:
    """World-space ray origins and directions [B, H, W, 3] for camera-space ``directions``
    [B, H, W, 3] and ``c2w`` [B, 4, 4]; flattened to [-1, 3] without ``keepdim``."""
    if directions.ndim != 4 or directions.shape[-1] != 3 or c2w.ndim != 3:
        raise ValueError(
            "get_rays: expected directions [B, H, W, 3] and c2w [B, 4, 4], got "
            f"{tuple(directions.shape)} and {tuple(c2w.shape)}"
        )
    rot, pos = c2w[:, None, None, :3, :3], c2w[:, None, None, :3, 3]
    rays_d = (directions[..., None, :] * rot).sum(-1)
    rays_o = pos.expand(rays_d.shape)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    if not keepdim:
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    return rays_o, rays_d


def get_projection_matrix(
    fovy: Float[Tensor, "B"], aspect_wh: float, near: float, far: float
) -> Float[Tensor, "B 4 4"]:
    """OpenGL perspective projection (clip z in [-1, 1] between ``near`` and ``far``) with
    the y row negated, as threestudio does for nvdiffrast's flipped image rows.
    ``fovy`` is the vertical field of view in radians."""
    tan_half = torch.tan(fovy / 2.0)
    proj = torch.zeros(fovy.shape[0], 4, 4, dtype=torch.float32)
    proj[:, 0, 0] = 1.0 / (tan_half * aspect_wh)
    proj[:, 1, 1] = -1.0 / tan_half
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def get_mvp_matrix(
    c2w: Float[Tensor, "B 4 4"], proj_mtx: Float[Tensor, "B 4 4"]
) -> Float[Tensor, "B 4 4"]:
    """``proj_mtx @ w2c`` with w2c the rigid inverse of ``c2w``."""
    rot_t = c2w[:, :3, :3].transpose(1, 2)
    w2c = torch.zeros(c2w.shape[0], 4, 4).to(c2w)
    w2c[:, :3, :3] = rot_t
    w2c[:, :3, 3:] = -rot_t @ c2w[:, :3, 3:]
    w2c[:, 3, 3] = 1.0
    return proj_mtx @ w2c


def shifted_expotional_decay(a, b, c, r):
    """a exp(-b r) + c (threestudio's name, spelling included): Perp-Neg's weight curves."""
    return a * torch.exp(-b * r) + c

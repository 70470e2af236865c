"""Camera and tensor helpers.

Camera conventions (threestudio's): camera space is OpenGL's (x right, y up, the camera
looks along -z); ``c2w`` maps camera to world coordinates; pixel (i, j) has its centre at
(i + 0.5, j + 0.5), i along the width, j along the height, j growing downwards.
"""
import torch
import torch.nn.functional as F

from threestudio.utils.typing import *


def dot(x, y):
    return torch.sum(x * y, -1, keepdim=True)


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
    H: int,
    W: int,
    focal: Union[float, Tuple[float, float]],
    principal: Optional[Tuple[float, float]] = None,
    use_pixel_centers: bool = True,
) -> Float[Tensor, "H W 3"]:
    """Camera-space direction through every pixel, ``((i - cx) / fx, -(j - cy) / fy, -1)``.

    ``focal`` in pixels (one float, principal point at the image centre (W/2, H/2)) or
    ``(fx, fy)`` together with ``principal = (cx, cy)``.
    """
    offset = 0.5 if use_pixel_centers else 0.0
    if isinstance(focal, float):
        fx = fy = focal
        cx, cy = W / 2, H / 2
    else:
        if principal is None:
            raise ValueError("principal: required when focal is a pair (fx, fy)")
        fx, fy = focal
        cx, cy = principal
    i, j = torch.meshgrid(
        torch.arange(W, dtype=torch.float32) + offset,
        torch.arange(H, dtype=torch.float32) + offset,
        indexing="xy",
    )
    return torch.stack([(i - cx) / fx, -(j - cy) / fy, -torch.ones_like(i)], -1)


def get_rays(
    directions: Float[Tensor, "... 3"],
    c2w: Float[Tensor, "... 4 4"],
    keepdim=False,
    noise_scale=0.0,
    normalize=True,
) -> Tuple[Float[Tensor, "... 3"], Float[Tensor, "... 3"]]:
    """World-space ray origins and directions for camera-space ``directions``.

    Shapes: directions [N,3] with c2w [4,4] / [1,4,4] / [N,4,4]; [H,W,3] with [4,4]
    (-> [H,W,3]) or [B,4,4] (-> [B,H,W,3]); [B,H,W,3] with [B,4,4]. Without ``keepdim``
    the outputs are flattened to [-1, 3]. ``noise_scale`` adds one random offset.
    """
    if directions.shape[-1] != 3:
        raise ValueError(f"directions: last dim must be 3, got shape {tuple(directions.shape)}")
    rot, pos = c2w[..., :3, :3], c2w[..., :3, 3]
    if directions.ndim == 2:
        if c2w.ndim == 2:
            rot, pos = rot[None], pos[None]
        rays_d = (directions[:, None, :] * rot).sum(-1)
        rays_o = pos.expand(rays_d.shape)
    elif directions.ndim == 3 and c2w.ndim == 2:
        rays_d = (directions[:, :, None, :] * rot[None, None]).sum(-1)
        rays_o = pos[None, None].expand(rays_d.shape)
    elif directions.ndim == 3 and c2w.ndim == 3:
        rays_d = (directions[None, :, :, None, :] * rot[:, None, None]).sum(-1)
        rays_o = pos[:, None, None].expand(rays_d.shape)
    elif directions.ndim == 4 and c2w.ndim == 3:
        rays_d = (directions[:, :, :, None, :] * rot[:, None, None]).sum(-1)
        rays_o = pos[:, None, None].expand(rays_d.shape)
    else:
        raise ValueError(
            f"get_rays: unsupported shapes directions {tuple(directions.shape)}, c2w {tuple(c2w.shape)}"
        )
    if noise_scale > 0:
        rays_o = rays_o + torch.randn(3, device=rays_o.device) * noise_scale
        rays_d = rays_d + torch.randn(3, device=rays_d.device) * noise_scale
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


def binary_cross_entropy(input, target):
    """Mean binary cross-entropy of probabilities ``input``, computed directly (stable
    under mixed precision, unlike ``F.binary_cross_entropy``)."""
    return -(target * torch.log(input) + (1 - target) * torch.log(1 - input)).mean()


def shifted_expotional_decay(a, b, c, r):
    return a * torch.exp(-b * r) + c


def shifted_cosine_decay(a, b, c, r):
    return a * torch.cos(b * r + c) + a


def perpendicular_component(x: Float[Tensor, "B C H W"], y: Float[Tensor, "B C H W"]):
    """Component of ``x`` perpendicular to ``y``, per batch item."""
    eps = torch.ones_like(x[:, 0, 0, 0]) * 1e-6
    coef = (x * y).sum(dim=[1, 2, 3]) / torch.maximum((y * y).sum(dim=[1, 2, 3]), eps)
    return x - coef.view(-1, 1, 1, 1) * y

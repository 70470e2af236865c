"""Camera conversions from threestudio's batch to the rasterizer's conventions.

threestudio describes a view by an OpenGL camera-to-world matrix ``c2w`` [B,4,4] (columns:
right, up, backward, position; world z-up) and a vertical field of view ``fovy`` [B] in
radians. The rasterizer uses the OpenCV/COLMAP convention of the reference 3DGS
rasterizer and gsplat:

- ``viewmats`` [B,4,4] are world-to-camera matrices; the camera looks along +z, x points
  right and y points down in the image;
- ``Ks`` [B,3,3] are pinhole intrinsics in the continuous image convention of gsplat, where
  pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)`` and the principal point of a centred
  camera is ``(W/2, H/2)``; ``fx = fy = H / (2 tan(fovy/2))`` (square pixels, so the
  horizontal field of view follows from the aspect ratio);
- inside the rasterizer, pixel centres sit at integer coordinates (as in the reference
  rasterizer's ``ndc2Pix``), i.e. a camera-space point projects to
  ``(fx x/z + cx - 0.5, fy y/z + cy - 0.5)``. Row 0 is the top of the image, matching
  threestudio's ray directions and its (y-flipped) ``mvp_mtx``.
"""
import math

import torch

OPENGL_TO_OPENCV = (1.0, -1.0, -1.0, 1.0)


def opengl_c2w_to_viewmats(c2w: torch.Tensor) -> torch.Tensor:
    """OpenCV world-to-camera matrices [B,4,4] from OpenGL camera-to-world matrices [B,4,4]."""
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must have shape [B,4,4], got {tuple(c2w.shape)}")
    flip = c2w.new_tensor(OPENGL_TO_OPENCV)
    c2w_opencv = c2w * flip
    rotation = c2w_opencv[:, :3, :3]
    position = c2w_opencv[:, :3, 3:]
    rotation_t = rotation.transpose(1, 2)
    viewmats = torch.zeros_like(c2w)
    viewmats[:, :3, :3] = rotation_t
    viewmats[:, :3, 3:] = -rotation_t @ position
    viewmats[:, 3, 3] = 1.0
    return viewmats


def intrinsics_from_fovy(fovy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centred pinhole intrinsics [B,3,3] from vertical fields of view ``fovy`` [B] (radians)."""
    if fovy.ndim != 1:
        raise ValueError(f"fovy must have shape [B], got {tuple(fovy.shape)}")
    if not bool(((fovy > 0) & (fovy < math.pi)).all()):
        raise ValueError(f"fovy must be in (0, pi) radians, got {fovy.tolist()}")
    focal = height / (2.0 * torch.tan(fovy / 2.0))
    Ks = torch.zeros(fovy.shape[0], 3, 3, dtype=fovy.dtype, device=fovy.device)
    Ks[:, 0, 0] = focal
    Ks[:, 1, 1] = focal
    Ks[:, 0, 2] = width / 2.0
    Ks[:, 1, 2] = height / 2.0
    Ks[:, 2, 2] = 1.0
    return Ks


def camera_centers(viewmats: torch.Tensor) -> torch.Tensor:
    """World positions [B,3] of the cameras of world-to-camera matrices [B,4,4]."""
    rotation = viewmats[:, :3, :3]
    translation = viewmats[:, :3, 3:]
    return (-rotation.transpose(1, 2) @ translation).squeeze(-1)


def tan_half_fov(Ks: torch.Tensor, height: int, width: int):
    """(tan(fovx/2), tan(fovy/2)) [B] each, of centred intrinsics [B,3,3]."""
    return width / (2.0 * Ks[:, 0, 0]), height / (2.0 * Ks[:, 1, 1])


def reference_projection_matrix(tan_half_fovx: float, tan_half_fovy: float,
                                near: float, far: float) -> torch.Tensor:
    """The reference rasterizer's projection P [4,4] (OpenCV camera, column vectors).

    Maps camera space to clip space with x_ndc = x / (z tan(fovx/2)) and
    y_ndc = y / (z tan(fovy/2)) (+y down), z_ndc in [0, 1] between ``near`` and ``far``.
    """
    P = torch.zeros(4, 4)
    P[0, 0] = 1.0 / tan_half_fovx
    P[1, 1] = 1.0 / tan_half_fovy
    P[2, 2] = far / (far - near)
    P[2, 3] = -far * near / (far - near)
    P[3, 2] = 1.0
    return P

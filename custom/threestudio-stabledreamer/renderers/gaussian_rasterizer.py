"""threestudio renderer for the extension's 3D Gaussians, over ``core.rasterization``."""
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.renderers.base import Rasterizer
from threestudio.utils.typing import *

from ..core.rasterization import (DEFAULT_CHUNK_ELEMENTS, importable_cuda_backends,
                                  intrinsics_from_fovy, opengl_c2w_to_viewmats, rasterize_gaussians,
                                  rasterize_with_diff_gaussian_rasterization,
                                  rasterize_with_gsplat)

BACKENDS = {
    "torch": rasterize_gaussians,
    "diff-gaussian-rasterization": rasterize_with_diff_gaussian_rasterization,
    "gsplat": rasterize_with_gsplat,
}


@threestudio.register("stabledreamer-gaussian-rasterizer")
class GaussianRasterizer(Rasterizer):
    """Renders the geometry's Gaussians for every camera of a threestudio batch.

    Reads ``c2w`` [B,4,4] (OpenGL camera-to-world), ``fovy`` [B] (radians), ``height``,
    ``width`` and ``rays_d`` [B,H,W,3] (for the background). Returns ``comp_rgb``
    [B,H,W,3] (foreground over the background), ``comp_rgb_fg`` (alpha-premultiplied
    foreground), ``comp_rgb_bg``, ``opacity`` and ``depth`` [B,H,W,1] (alpha-weighted view
    depth, not normalised), ``comp_normal`` [B,H,W,3] (composited shortest-axis normals
    facing the camera, normalised and mapped to [0,1] as ``(n + 1) / 2 * opacity`` like
    threestudio's renderers), and for density control ``viewspace_points`` [B,N,2]
    (``.grad`` = dL/d(NDC) = dL/d(pixel) * (W/2, H/2), the reference rasterizer's units),
    ``radii`` [B,N] and ``visibility_filter`` [B,N] (radii > 0).

    ``backend``: ``torch`` (pure PyTorch, any device), ``diff-gaussian-rasterization`` or
    ``gsplat`` (CUDA), or ``auto`` (the first importable CUDA backend when the Gaussians
    are on CUDA, else ``torch``). In training, the background is replaced per view by a
    uniformly random colour with probability ``random_background_probability``, else
    inverted (1 - colour) with probability ``invert_background_probability``.
    ``scale_modifier`` multiplies the Gaussians' scales; ``near_plane`` (view-space z) culls
    Gaussians for the torch and gsplat backends (diff-gaussian-rasterization fixes it at
    0.2); ``tile_size``, ``block_size`` and ``chunk_elements`` tune the torch backend (see
    ``core.rasterization``).
    """

    @dataclass
    class Config(Rasterizer.Config):
        backend: str = "auto"
        scale_modifier: float = 1.0
        near_plane: float = 0.2
        tile_size: int = 16
        block_size: int = 8
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
        random_background_probability: float = 0.0
        invert_background_probability: float = 0.0

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        for name in ("random_background_probability", "invert_background_probability"):
            value = getattr(self.cfg, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"renderer.{name} must be in [0, 1], got {value}")
        total = self.cfg.random_background_probability + self.cfg.invert_background_probability
        if total > 1.0:
            raise ValueError("renderer.random_background_probability + "
                             f"invert_background_probability must be at most 1, got {total}")
        known = ("auto", *BACKENDS)
        if self.cfg.backend not in known:
            raise ValueError(f"renderer.backend must be one of {list(known)}, got "
                             f"{self.cfg.backend!r}; {self._available_text()}")
        if self.cfg.backend in importable_cuda_backends() or self.cfg.backend in ("auto", "torch"):
            return
        raise ValueError(f"renderer.backend {self.cfg.backend!r} is not importable here; "
                         f"{self._available_text()}")

    @staticmethod
    def _available_text() -> str:
        return f"available here: {['auto', 'torch', *importable_cuda_backends()]}"

    def backend_for(self, device: torch.device) -> str:
        """The backend used for Gaussians on ``device``."""
        if self.cfg.backend != "auto":
            if self.cfg.backend != "torch" and device.type != "cuda":
                raise ValueError(f"renderer.backend {self.cfg.backend!r} needs CUDA tensors, "
                                 f"got the Gaussians on {device}")
            return self.cfg.backend
        cuda_backends = importable_cuda_backends()
        return cuda_backends[0] if cuda_backends and device.type == "cuda" else "torch"

    def forward(self, c2w: Float[Tensor, "B 4 4"], fovy: Float[Tensor, "B"],
                rays_d: Float[Tensor, "B H W 3"], height: int, width: int,
                **batch) -> Dict[str, Any]:
        geometry = self.geometry
        means = geometry.means
        viewmats = opengl_c2w_to_viewmats(c2w.to(means))
        Ks = intrinsics_from_fovy(fovy.to(means), int(height), int(width))
        out = BACKENDS[self.backend_for(means.device)](
            means, geometry.rotations, geometry.scales, geometry.opacities, viewmats, Ks,
            int(width), int(height),
            sh_coefficients=geometry.sh_coefficients, sh_degree=geometry.active_sh_degree,
            normals=geometry.normals, scale_modifier=self.cfg.scale_modifier,
            near_plane=self.cfg.near_plane, tile_size=self.cfg.tile_size,
            block_size=self.cfg.block_size, chunk_elements=self.cfg.chunk_elements)

        comp_rgb_bg = self._augment_background(self.background(dirs=rays_d))
        opacity = out.alphas
        comp_normal = (F.normalize(out.normals, dim=-1) + 1.0) / 2.0 * opacity
        return {
            "comp_rgb": out.colors + (1.0 - opacity) * comp_rgb_bg,
            "comp_rgb_fg": out.colors,
            "comp_rgb_bg": comp_rgb_bg,
            "opacity": opacity,
            "depth": out.depths,
            "comp_normal": comp_normal,
            "viewspace_points": out.viewspace_points,
            "radii": out.radii,
            "visibility_filter": out.radii > 0,
        }

    def _augment_background(self, background: Tensor) -> Tensor:
        """Per-view random or inverted background in training (see the class docstring)."""
        if not self.training:
            return background
        views = []
        for view in background:
            draw = random.random()
            if draw < self.cfg.random_background_probability:
                view = view * 0 + torch.rand(view.shape[-1], dtype=view.dtype, device=view.device)
            elif draw < self.cfg.random_background_probability + self.cfg.invert_background_probability:
                view = 1.0 - view
            views.append(view)
        return torch.stack(views)

from dataclasses import dataclass

import torch

from threestudio.models.background.base import BaseBackground
from threestudio.models.geometry.base import BaseGeometry
from threestudio.models.materials.base import BaseMaterial
from threestudio.utils.base import BaseModule
from threestudio.utils.typing import *


class Renderer(BaseModule):
    """Renders a batch of cameras; ``forward(**batch)`` returns a dict (``comp_rgb``
    [B, H, W, 3], ...).

    geometry, material and background are held by reference, outside the module tree
    (they are the system's submodules, not the renderer's), and exposed as properties.
    ``bbox`` [2, 3] is the box ``[-radius, radius]^3``.
    """

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def configure(
        self,
        geometry: BaseGeometry,
        material: BaseMaterial,
        background: BaseBackground,
    ) -> None:
        @dataclass
        class SubModules:
            geometry: BaseGeometry
            material: BaseMaterial
            background: BaseBackground

        self.sub_modules = SubModules(geometry, material, background)
        self.bbox: Float[Tensor, "2 3"]
        r = self.cfg.radius
        self.register_buffer(
            "bbox", torch.as_tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32)
        )

    def forward(self, *args, **kwargs) -> Dict[str, Any]:
        raise NotImplementedError

    @property
    def geometry(self) -> BaseGeometry:
        return self.sub_modules.geometry

    @property
    def material(self) -> BaseMaterial:
        return self.sub_modules.material

    @property
    def background(self) -> BaseBackground:
        return self.sub_modules.background


class Rasterizer(Renderer):
    pass

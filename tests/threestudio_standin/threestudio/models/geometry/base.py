"""Geometry bases. threestudio's ``BaseImplicitGeometry`` (isosurface extraction) is not
part of the stand-in."""
from dataclasses import dataclass

import torch

from threestudio.utils.base import BaseModule
from threestudio.utils.typing import *


class BaseGeometry(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    @staticmethod
    def create_from(
        other: "BaseGeometry", cfg: Optional[Union[dict, DictConfig]] = None, **kwargs
    ) -> "BaseGeometry":
        """Build this geometry from another (e.g. a coarse stage's); override to support."""
        raise TypeError(
            f"Cannot create {BaseGeometry.__name__} from {other.__class__.__name__}"
        )

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {}


class BaseExplicitGeometry(BaseGeometry):
    """Geometry inside the axis-aligned box ``[-radius, radius]^3`` (buffer ``bbox`` [2, 3])."""

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self) -> None:
        self.bbox: Float[Tensor, "2 3"]
        r = self.cfg.radius
        self.register_buffer(
            "bbox", torch.as_tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32)
        )

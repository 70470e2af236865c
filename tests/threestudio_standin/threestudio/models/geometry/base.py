"""Geometry base. threestudio's ``BaseImplicitGeometry`` (isosurface extraction) and
``BaseExplicitGeometry`` are not part of the stand-in."""
from dataclasses import dataclass

from threestudio.utils.base import BaseModule
from threestudio.utils.typing import *


class BaseGeometry(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {}

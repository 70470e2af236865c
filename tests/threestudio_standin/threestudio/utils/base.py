"""Configurable base classes and the step-update protocol."""
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from threestudio.utils.config import parse_structured
from threestudio.utils.misc import get_device, load_module_weights
from threestudio.utils.typing import *


class Configurable:
    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)


def _public_updateables(obj) -> Iterator["Updateable"]:
    """Every ``Updateable`` reachable as a public attribute of ``obj`` (properties
    included; attributes whose lookup raises are skipped), looked up lazily."""
    for name in obj.__dir__():
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:
            continue
        if isinstance(value, Updateable):
            yield value


class Updateable:
    """Objects told the training epoch and global step before and after every batch.

    ``do_update_step`` first recurses into every public ``Updateable`` attribute (an
    object reachable by two attribute paths is updated twice), then calls the object's
    own ``update_step``.
    """

    def do_update_step(
        self, epoch: int, global_step: int, on_load_weights: bool = False
    ):
        for child in _public_updateables(self):
            child.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def do_update_step_end(self, epoch: int, global_step: int):
        for child in _public_updateables(self):
            child.do_update_step_end(epoch, global_step)
        self.update_step_end(epoch, global_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        """Override to update step-dependent state. With ``on_load_weights`` (restoring
        from a checkpoint) modules may not be on one device yet."""

    def update_step_end(self, epoch: int, global_step: int):
        """Override to act after the batch."""


def update_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step(epoch, global_step)


def update_end_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step_end(epoch, global_step)


class BaseObject(Updateable):
    """Configurable non-module object: ``cfg`` parsed from ``Config``, ``device``, then
    ``configure(*args, **kwargs)``."""

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(
        self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs
    ) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.device = get_device()
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs) -> None:
        pass


class BaseModule(nn.Module, Updateable):
    """Configurable ``nn.Module``; ``Config.weights = "path/to.ckpt:module_name"`` loads
    that sub-state-dict of a Lightning checkpoint after ``configure()`` and replays the
    checkpoint's step with ``do_update_step(..., on_load_weights=True)``."""

    @dataclass
    class Config:
        weights: Optional[str] = None

    cfg: Config

    def __init__(
        self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs
    ) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.device = get_device()
        self.configure(*args, **kwargs)
        if self.cfg.weights is not None:
            if ":" not in self.cfg.weights:
                raise ValueError(
                    f"weights: expected 'path/to/checkpoint:module_name', got {self.cfg.weights!r}"
                )
            weights_path, module_name = self.cfg.weights.split(":")
            state_dict, epoch, global_step = load_module_weights(
                weights_path, module_name=module_name, map_location="cpu"
            )
            self.load_state_dict(state_dict)
            self.do_update_step(epoch, global_step, on_load_weights=True)
        self._dummy: Float[Tensor, "..."]
        self.register_buffer("_dummy", torch.zeros(0).float(), persistent=False)

    def configure(self, *args, **kwargs) -> None:
        pass

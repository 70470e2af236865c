"""Type names threestudio exports: Python typing, jaxtyping tensor types, DictConfig, Tensor.

Like threestudio's, this module does not export ``dataclass``/``field``: import them from
``dataclasses``.
"""
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Literal,
    NamedTuple,
    NewType,
    Optional,
    Sized,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from jaxtyping import Bool, Complex, Float, Inexact, Int, Integer, Num, Shaped, UInt
from omegaconf import DictConfig
from torch import Tensor
from typeguard import typechecked as typechecker

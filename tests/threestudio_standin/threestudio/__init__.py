"""Test stand-in for threestudio 0.2.3.

Mirrors the module paths and the semantics, for what the StableDreamer extension uses,
of github.com/threestudio-project/threestudio at commit
28d9d80 ("add __init__.py in extern/ldm_zero123 ..."), version 0.2.3. It exists so the
extension's tests run on CPU machines, where real threestudio cannot be installed (it
imports CUDA-only packages). Differences kept on purpose: ``get_device()`` answers CPU
when CUDA is absent, and ``launch.py`` picks the CPU accelerator then.
"""
import logging

from pytorch_lightning.utilities.rank_zero import (
    rank_zero_debug,
    rank_zero_info,
    rank_zero_only,
)

__version__ = "0.2.3"

__modules__ = {}


def register(name):
    """Class decorator registering ``cls`` under ``name`` for :func:`find`."""

    def decorator(cls):
        if name in __modules__:
            raise ValueError(
                f"Module {name} already exists! Names of extensions conflict!"
            )
        __modules__[name] = cls
        return cls

    return decorator


def find(name):
    """The class registered as ``name``.

    ``"main:a,b"`` builds a new class deriving from the classes registered as ``a``,
    ``b`` and ``main``, in that order (mixins first).
    """
    if ":" not in name:
        return __modules__[name]
    main_name, mixin_names = name.split(":")
    bases = [__modules__[n] for n in [*mixin_names.split(","), main_name]]
    return type(f"{main_name}.{mixin_names}", tuple(bases), {})


logger = logging.getLogger("pytorch_lightning")

debug = rank_zero_debug
info = rank_zero_info


@rank_zero_only
def warn(*args, **kwargs):
    logger.warning(*args, **kwargs)


from . import data, models, systems  # noqa: E402  (registers the built-in classes)

"""Real threestudio 0.2.3 on a machine without CUDA, for the tests only.

threestudio 0.2.3 assumes a CUDA GPU in a few places (``SOURCE.md`` of the copy in
``shared/threestudio`` lists them). :func:`install` makes a checkout importable on a CPU
by changing exactly these and nothing else:

- ``tinycudann``, ``nvdiffrast.torch``, ``envlight`` (CUDA builds, imported when
  threestudio is) and ``controlnet_aux`` (imported by its ControlNet guidance) become stub
  modules, and so does ``torchvision`` when it is not importable (PyPI has only its CUDA
  build; threestudio imports it for zero123, CO3D data and a VGG loss). Their classes and
  functions raise when used, except ``controlnet_aux``'s detectors, which are no-op
  classes, and ``tinycudann.free_temporary_memory``, a no-op
  (``threestudio.utils.misc.cleanup`` calls it; there is no CUDA memory to free);
- ``threestudio.utils.misc.get_device()`` returns the CPU instead of ``cuda:<rank>``;
- ``deep-floyd-prompt-processor`` loads T5 without ``load_in_8bit`` and ``device_map``
  (bitsandbytes' 8-bit layers need CUDA); the weights file, dtype (float16) and everything
  else stay as threestudio asks;
- :func:`force_cpu_trainer` makes ``pytorch_lightning.Trainer`` run on the CPU
  accelerator, because ``launch.py`` asks for ``accelerator="gpu"``.

With a CUDA device nothing is changed but ``sys.path`` (and, where asked,
:func:`stub_missing_cuda_builds` stands in for CUDA builds that are not installed). The extension itself never
patches threestudio: only ``tests/conftest.py`` and ``tests/threestudio_cpu_launch.py``
call this module.
"""
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import torch

# threestudio's CUDA builds: {distribution's top-level module: the module threestudio imports}
CUDA_BUILDS = {"tinycudann": "tinycudann", "nvdiffrast": "nvdiffrast.torch", "envlight": "envlight"}


def install(threestudio_root: Path) -> None:
    """Put the checkout ``threestudio_root`` first on ``sys.path`` and, without CUDA, apply
    the CPU changes listed in the module docstring. Imports threestudio."""
    root = str(Path(threestudio_root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    if torch.cuda.is_available():
        return
    _install_stub_modules()
    import threestudio  # noqa: F401  (imports every threestudio module)

    _use_cpu_device()
    _load_t5_without_8bit()


def force_cpu_trainer() -> None:
    """Replace ``pytorch_lightning.Trainer`` by a subclass that runs on one CPU device,
    whatever ``accelerator`` and ``devices`` the caller asks for (without CUDA only)."""
    if torch.cuda.is_available():
        return
    import pytorch_lightning

    class CPUTrainer(pytorch_lightning.Trainer):
        def __init__(self, *args, **kwargs):
            kwargs.update(accelerator="cpu", devices=1)
            super().__init__(*args, **kwargs)

    pytorch_lightning.Trainer = CPUTrainer


def _unavailable(name: str):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{name} is not available here: tests/threestudio_cpu_shims.py stands in for it")

    return unavailable


def _unavailable_class(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (), {"__init__": _unavailable(name)})


class _NoOpDetector:
    """Stands for a ``controlnet_aux`` detector: accepts any arguments, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()

    def __call__(self, image, *args, **kwargs):
        return image


def _stub_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__file__ = __file__
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    return module


def stubbed_modules() -> dict:
    """{module name: stub module} for every module this file can stand in for."""
    stubs = {
        "tinycudann": _stub_module(
            "tinycudann",
            free_temporary_memory=lambda: None,
            **{c: _unavailable_class(f"tinycudann.{c}") for c in ("Encoding", "Network", "NetworkWithInputEncoding")},
        ),
        "nvdiffrast": _stub_module("nvdiffrast"),
        "nvdiffrast.torch": _stub_module(
            "nvdiffrast.torch",
            **{c: _unavailable_class(f"nvdiffrast.torch.{c}") for c in ("RasterizeGLContext", "RasterizeCudaContext")},
            **{f: _unavailable(f"nvdiffrast.torch.{f}") for f in ("rasterize", "interpolate", "antialias", "texture")},
        ),
        "envlight": _stub_module("envlight", EnvLight=_unavailable_class("envlight.EnvLight")),
        "controlnet_aux": _stub_module("controlnet_aux", CannyDetector=_NoOpDetector, NormalBaeDetector=_NoOpDetector),
    }
    stubs["nvdiffrast"].torch = stubs["nvdiffrast.torch"]
    functional = _stub_module(
        "torchvision.transforms.functional",
        **{f: _unavailable(f"torchvision.transforms.functional.{f}") for f in ("to_tensor", "to_pil_image")},
    )
    transforms = _stub_module("torchvision.transforms", functional=functional)
    models = _stub_module("torchvision.models", vgg16=_unavailable("torchvision.models.vgg16"))
    stubs.update({
        "torchvision": _stub_module("torchvision", transforms=transforms, models=models),
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
        "torchvision.models": models,
    })
    return stubs


def stub_missing_cuda_builds() -> list:
    """With CUDA: stand in for those of threestudio's CUDA builds (``CUDA_BUILDS``) that are
    not installed, so threestudio imports without them; returns their names. Only what
    uses them (threestudio's NeRF models and mesh rasterization) then fails."""
    stubs = stubbed_modules()
    missing = [name for name, module in CUDA_BUILDS.items() if not _importable(module)]
    for name in missing:
        for module in (name, CUDA_BUILDS[name]):
            sys.modules.setdefault(module, stubs[module])
    return missing


def _install_stub_modules() -> None:
    # torchmetrics (through pytorch_lightning) looks for torchvision as it is imported:
    # it must find none, not the stub.
    import pytorch_lightning  # noqa: F401

    stubs = stubbed_modules()
    installed = {name for name in ("controlnet_aux", "torchvision") if _importable(name)}
    for name, module in stubs.items():
        if name.split(".")[0] not in installed:
            sys.modules.setdefault(name, module)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def _use_cpu_device() -> None:
    """Rebind ``get_device`` in ``threestudio.utils.misc`` and in every threestudio module
    that imported it by name (``from threestudio.utils.misc import get_device``)."""
    misc = sys.modules["threestudio.utils.misc"]
    original = misc.get_device
    for name, module in list(sys.modules.items()):
        if name.startswith("threestudio") and getattr(module, "get_device", None) is original:
            module.get_device = _cpu_device


def _load_t5_without_8bit() -> None:
    import transformers

    processor_module = sys.modules["threestudio.models.prompt_processors.deepfloyd_prompt_processor"]

    class T5EncoderModelOnCPU(transformers.T5EncoderModel):
        """``T5EncoderModel`` whose ``from_pretrained`` drops the CUDA-only 8-bit loading."""

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            kwargs.pop("load_in_8bit", None)
            kwargs.pop("device_map", None)
            return transformers.T5EncoderModel.from_pretrained(*args, **kwargs)

    processor_module.T5EncoderModel = T5EncoderModelOnCPU

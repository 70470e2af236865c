"""Test set-up: which threestudio the tests run against, and the tiny models.

- ``THREESTUDIO_ROOT=DIR``: the real threestudio checkout in DIR (0.2.3). Without CUDA,
  ``tests/threestudio_cpu_shims.py`` makes it run on the CPU; launcher runs go through
  ``tests/threestudio_cpu_launch.py``, which applies the same shims around DIR's own
  ``launch.py``.
- Otherwise: the stand-in in ``tests/threestudio_standin`` (threestudio 0.2.3's API for what
  the extension uses) and its ``launch.py``.

Either is put on ``sys.path`` (and ``PYTHONPATH``, for subprocesses) before anything
imports the extension. ``LAUNCHER`` is the launcher script the end-to-end tests run.
"""
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = REPO_ROOT / "tests"
STANDIN_DIR = TESTS_DIR / "threestudio_standin"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _real_threestudio_root():
    value = os.environ.get("THREESTUDIO_ROOT")
    if not value:
        return None
    root = Path(value).resolve()
    if not (root / "launch.py").is_file() or not (root / "threestudio" / "__init__.py").is_file():
        raise pytest.UsageError(
            f"THREESTUDIO_ROOT='{value}' is not a threestudio checkout: expected launch.py and "
            "threestudio/__init__.py in it"
        )
    return root


THREESTUDIO_ROOT = _real_threestudio_root()
USES_REAL_THREESTUDIO = THREESTUDIO_ROOT is not None
THREESTUDIO_DIR = THREESTUDIO_ROOT if USES_REAL_THREESTUDIO else STANDIN_DIR
LAUNCHER = TESTS_DIR / "threestudio_cpu_launch.py" if USES_REAL_THREESTUDIO else STANDIN_DIR / "launch.py"

os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(THREESTUDIO_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
)
if USES_REAL_THREESTUDIO:
    import threestudio_cpu_shims

    threestudio_cpu_shims.install(THREESTUDIO_ROOT)
else:
    sys.path.insert(0, str(STANDIN_DIR))


def pytest_report_header(config):
    import threestudio

    import torch

    kind = "real" if USES_REAL_THREESTUDIO else "stand-in"
    header = f"threestudio: {kind} {threestudio.__version__} at {Path(threestudio.__file__).parent.parent}"
    if USES_REAL_THREESTUDIO and not torch.cuda.is_available():
        header += " (no CUDA: with tests/threestudio_cpu_shims.py)"
    return header


@pytest.fixture(scope="session")
def tiny_models():
    """Paths of tiny, randomly initialised models saved with the real on-disk layouts.

    Keys: "deepfloyd-if", "stable-diffusion" (epsilon prediction), "stable-diffusion-v"
    (the same weights with a v-prediction scheduler) and "clip".

    Built once into ``$STABLEDREAMER_TINY_MODELS`` (default ``<repo>/.cache/tiny-models``)
    and reused by later sessions.
    """
    from threestudio_stabledreamer.tiny_models import build_tiny_models

    root = Path(os.environ.get("STABLEDREAMER_TINY_MODELS", REPO_ROOT / ".cache" / "tiny-models"))
    return build_tiny_models(root)


@pytest.fixture(scope="session")
def lab_vae():
    """Folder of the lab's fitted AutoencoderKL (``vae/``) and SD's ``scheduler/``.

    Fitted once (about a minute and a half at one CPU thread) into
    ``$STABLEDREAMER_LAB_VAE`` (default ``<repo>/.cache/lab-vae``) and reused by later sessions.
    """
    from threestudio_stabledreamer.lab.latent_vae import fit_lab_vae

    return fit_lab_vae(Path(os.environ.get("STABLEDREAMER_LAB_VAE", REPO_ROOT / ".cache" / "lab-vae")))


# ---------------------------------------------------------------- device-sensitive tests
# `python -m pytest tests --device cuda` runs the tests marked `device` (they take the
# `device` fixture) on that device; everything else is unchanged.


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device of the device-sensitive tests (marker 'device'): cpu, cuda, cuda:1, ...")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: device-sensitive test; runs on --device (select with -m device)")


@pytest.fixture(scope="session")
def device(request):
    """The torch device given by ``--device``; threestudio's ``get_device()`` answers it too."""
    import torch

    name = request.config.getoption("--device")
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise pytest.UsageError(f"--device {name!r} is not a torch device ({error})") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name!r}: CUDA is not available on this machine")
    if chosen.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device {name!r}: expected cpu or cuda[:index]")
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", torch.cuda.current_device())
    with pytest.MonkeyPatch.context() as patch:
        _answer_get_device(patch, chosen)
        yield chosen


def _answer_get_device(patch, chosen) -> None:
    """Make every loaded ``threestudio`` module's ``get_device`` return ``chosen``, so that
    guidances and prompt processors (which place themselves with it) follow ``--device``."""
    import threestudio.utils.misc

    original = threestudio.utils.misc.get_device
    for name, module in list(sys.modules.items()):
        if (name == "threestudio" or name.startswith("threestudio.")) and \
                getattr(module, "get_device", None) is original:
            patch.setattr(module, "get_device", lambda: chosen)

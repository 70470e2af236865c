"""Test set-up: threestudio (real, or the stand-in in tests/threestudio_standin) and tiny models.

When ``import threestudio`` fails, the stand-in mirroring threestudio 0.2.3's API is put
on ``sys.path`` before anything imports the extension; when real threestudio is
importable, the same tests run against it.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STANDIN_DIR = REPO_ROOT / "tests" / "threestudio_standin"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if importlib.util.find_spec("threestudio") is None:
    sys.path.insert(0, str(STANDIN_DIR))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(STANDIN_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )


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

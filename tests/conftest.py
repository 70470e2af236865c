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

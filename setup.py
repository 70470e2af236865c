"""Installs the extension folder ``custom/threestudio-stabledreamer`` as ``threestudio_stabledreamer``."""
from pathlib import Path

from setuptools import find_packages, setup

EXTENSION_DIR = "custom/threestudio-stabledreamer"
PACKAGE = "threestudio_stabledreamer"

subpackages = [f"{PACKAGE}.{name}" for name in find_packages(EXTENSION_DIR)]

setup(
    name="threestudio-stabledreamer",
    version="0.1.0",
    description=(
        "StableDreamer (text-to-3D with anisotropic 3D Gaussians, score distillation as "
        "reconstruction, noise-level annealing, DeepFloyd IF -> Stable Diffusion) as a "
        "threestudio extension"
    ),
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[PACKAGE, *subpackages],
    package_dir={PACKAGE: EXTENSION_DIR},
    # Lower bounds only: a GPU user's CUDA build of torch must never be replaced.
    install_requires=[
        "torch>=2.0",
        "numpy",
        "pillow",
        "diffusers>=0.19.3",
        "transformers>=4.28.1",
        "pytorch-lightning>=2.0",
        "omegaconf>=2.3",
        "jaxtyping",
        "typeguard",
        "sentencepiece",
        "accelerate",
        # LoRA of stabledreamer-vsd-guidance; with threestudio's transformers 4.28.1 it
        # must be < 0.14 (0.14 imports transformers' Cache classes, added in 4.36).
        "peft>=0.10",
        "imageio[ffmpeg]>=2.28",
        "plyfile>=0.9",
        "trimesh>=3.20",
        "PyMCubes>=0.1.4",
        "scipy>=1.10",
        "tensorboard",
        "protobuf",
        "torchmetrics>=1.0",
        "matplotlib>=3.5",
        # requirement parsing of stabledreamer-setup-threestudio
        "packaging",
    ],
    extras_require={
        # the comparison runner's cluster executors
        "ray": ["ray>=2.9"],
        "slurm": ["submitit>=1.5"],
        # the tests drive both executors and open results.html in Chromium through Playwright
        "test": ["pytest>=7", "ray>=2.9", "submitit>=1.5", "playwright>=1.40"],
        "gsplat": ["gsplat>=1.0"],
    },
    entry_points={
        "console_scripts": [
            "stabledreamer-link=threestudio_stabledreamer.link:main",
            "stabledreamer-benchmark=threestudio_stabledreamer.benchmark.cli:main",
            "stabledreamer-lab=threestudio_stabledreamer.lab.cli:main",
            "stabledreamer-setup-threestudio=threestudio_stabledreamer.setup_threestudio:main",
        ]
    },
)

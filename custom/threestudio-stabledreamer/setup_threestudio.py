"""``stabledreamer-setup-threestudio DIR``: a working threestudio 0.2.3 with this extension.

Uses the threestudio checkout at DIR (or clones threestudio at commit 28d9d80 there when
DIR does not exist), then, in the Python environment it runs in:

1. refuses a folder that is not a threestudio 0.2.3 checkout, a missing torch, a torch
   without CUDA when CUDA is asked for (``--gpu``), and installed packages that violate
   ``constraints/threestudio-0.2.3.txt`` (naming the package, its version and the pin);
2. installs threestudio's ``requirements.txt`` (filtered: see :func:`filter_requirements`,
   every dropped or replaced line is printed with its reason) and this extension (editable)
   in one pip call under that constraints file plus a pin of the installed torch, so torch
   is never replaced; then pysdf on its own (its build downloads Eigen; a failure only
   warns); with CUDA, then threestudio's CUDA-only git packages (tiny-cuda-nn, nvdiffrast,
   envlight) without build isolation (they import torch to build);
3. links the extension into DIR (``stabledreamer-link``);
4. checks the result in a fresh interpreter: threestudio imports with every
   ``stabledreamer-*`` class registered (behind the stubs of
   ``tests/threestudio_cpu_shims.py`` for the CUDA builds that are not installed, and on a
   CPU), diffusers, transformers and peft import, and torch sees CUDA or says it does not;
   then prints the installed versions.

Re-running is safe: pip is skipped when every requirement is already satisfied and the
links are left alone when they are right.
"""
import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

THREESTUDIO_URL = "https://github.com/threestudio-project/threestudio"
THREESTUDIO_COMMIT = "28d9d80"
THREESTUDIO_VERSION = "0.2.3"
CONSTRAINTS_NAME = f"constraints/threestudio-{THREESTUDIO_VERSION}.txt"
EXTENSION_DIST = "threestudio-stabledreamer"
CHECKOUT_MARKERS = ("launch.py", "threestudio/__init__.py")
NERF_BASELINES = "dreamfusion-sd.yaml, prolificdreamer.yaml and hifa.yaml"
# threestudio's git requirements: (marker in the URL, distribution it installs, CUDA build)
GIT_PACKAGES = {
    "tiny-cuda-nn": ("tinycudann", True),
    "nvdiffrast": ("nvdiffrast", True),
    "envlight": ("envlight", True),
    "openai/CLIP": ("clip", False),
}
# Requirements that need torchvision, which PyPI has only as a CUDA build: on a CPU torch
# it would not load.
NEEDS_TORCHVISION = {"controlnet-aux", "taming-transformers-rom1504", "clip"}
# Requirements whose build downloads more source (pysdf fetches Eigen): installed in a pip
# call of their own whose failure is reported, not fatal. threestudio uses pysdf only to
# initialise an implicit SDF from a mesh.
BUILD_DOWNLOADS = {"pysdf"}
# Distributions whose versions the set-up prints at the end.
REPORTED = ("torch", "threestudio-stabledreamer", "diffusers", "transformers", "huggingface-hub", "tokenizers",
            "accelerate", "peft", "pytorch-lightning", "omegaconf", "numpy", "setuptools", "nerfacc", "libigl",
            "tinycudann", "nvdiffrast", "envlight", "bitsandbytes")


class SetupError(Exception):
    """A problem that stops the set-up; the message says what and how to fix it."""


# ---------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    reason: str  # the comment above the pin in the constraints file


def parse_constraints(text: str) -> Dict[str, Pin]:
    """{canonical name: Pin} of a constraints file; a pin's reason is the comment above it,
    shared by the pins that follow that comment directly."""
    pins: Dict[str, Pin] = {}
    comment: List[str] = []
    after_pin = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            comment, after_pin = [], False
        elif line.startswith("#"):
            comment = [] if after_pin else comment
            comment.append(line.lstrip("# "))
            after_pin = False
        else:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = Pin(requirement, " ".join(comment))
            after_pin = True
    return pins


def outside_pins(installed: Dict[str, str], pins: Dict[str, Pin]) -> List[Tuple[str, str, Pin]]:
    """(name, version, pin) of each installed distribution (``{name: version}``) outside its pin."""
    found = []
    for name, version in sorted(installed.items()):
        pin = pins.get(canonicalize_name(name))
        if pin is not None and not _version_in(version, pin.requirement):
            found.append((name, version, pin))
    return found


def constraint_violations(installed: Dict[str, str], pins: Dict[str, Pin], source: str) -> List[str]:
    """One message per installed distribution (``{name: version}``) outside its pin."""
    problems = []
    for name, version, pin in outside_pins(installed, pins):
        spec = f"{pin.requirement.name}{pin.requirement.specifier}"
        why = f" ({pin.reason.rstrip('.')})" if pin.reason else ""
        problems.append(
            f"{name} {version} is installed, but {source} pins {spec}{why}; "
            f'install an allowed version (pip install "{spec}") or use a fresh virtual environment'
        )
    return problems


def _version_in(version: str, requirement: Requirement) -> bool:
    try:
        return requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def installed_versions() -> Dict[str, str]:
    """{canonical name: version} of the distributions this interpreter sees."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


# ---------------------------------------------------------------- requirements


@dataclass(frozen=True)
class Filtered:
    kept: List[str]          # requirement lines for the main pip call
    cuda_git: List[str]      # CUDA-only git requirements, installed without build isolation
    optional: List[str]      # requirements whose build needs network (BUILD_DOWNLOADS): failure only warns
    notes: List[str]         # one line per dropped or replaced requirement, with its reason


def git_package(line: str) -> Optional[str]:
    """The key of ``GIT_PACKAGES`` a git requirement line installs (None if unknown)."""
    for marker in GIT_PACKAGES:
        if marker.lower() in line.lower():
            return marker
    return None


def requirement_name(line: str) -> Optional[str]:
    """Canonical distribution name of a requirement line (git lines: see GIT_PACKAGES)."""
    if line.startswith("git+"):
        marker = git_package(line)
        if marker is not None:
            return GIT_PACKAGES[marker][0]
        if "nerfacc" in line:
            return "nerfacc"
        return None
    try:
        return canonicalize_name(Requirement(line).name)
    except InvalidRequirement:
        return None


def filter_requirements(lines: Iterable[str], cuda: bool, offline: bool, torchvision_installed: bool) -> Filtered:
    """threestudio's ``requirements.txt`` as this set-up installs it.

    - ``lightning==V`` becomes ``pytorch-lightning==V``: threestudio imports only
      ``pytorch_lightning``, and ``lightning`` 2.0.0 needs pydantic 1 while gradio 4.11
      needs pydantic 2, which makes the file unresolvable as written;
    - gradio is dropped (threestudio's web app only; the package never imports it);
    - the nerfacc git tag becomes the same version from PyPI;
    - xformers is dropped (optional memory-efficient attention; each of its wheels pins
      one torch, which would replace the installed one);
    - without CUDA: tiny-cuda-nn, nvdiffrast and envlight (CUDA builds) and bitsandbytes
      (8-bit T5 on CUDA) are dropped, and so are the packages that need torchvision when
      torchvision is not installed;
    - pysdf, whose build downloads Eigen, goes to ``optional`` (a pip call whose failure
      only warns); offline (no GitHub) it is dropped, and so is every remaining git
      requirement.
    """
    kept, cuda_git, optional, notes = [], [], [], []
    for raw in lines:
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        name = requirement_name(line)
        if line.startswith("git+") and name == "nerfacc":
            version = re.search(r"@v?([\w.]+)$", line)
            replacement = f"nerfacc=={version.group(1)}" if version else "nerfacc"
            kept.append(replacement)
            notes.append(f"{line} -> {replacement}: the same release from PyPI (no git clone, no build)")
        elif name == "lightning":
            replacement = "pytorch-lightning" + line[len("lightning"):]
            kept.append(replacement)
            notes.append(
                f"{line} -> {replacement}: threestudio imports only pytorch_lightning, and lightning "
                "2.0.0 needs pydantic 1 while gradio 4.11 needs pydantic 2 (the file does not resolve as written)"
            )
        elif name == "gradio":
            notes.append(f"{line} dropped: only threestudio's gradio app uses it (the package never imports it), "
                         "and it conflicts with lightning 2.0.0 (pydantic 2 against 1)")
        elif name == "xformers":
            notes.append(f"{line} dropped: optional memory-efficient attention whose wheels each pin one torch "
                         "(install the build matching your torch yourself to use it)")
        elif line.startswith("git+") and name is not None and GIT_PACKAGES[git_package(line)][1]:
            if not cuda:
                notes.append(f"{line} dropped: a CUDA build; without it threestudio's NeRF baselines "
                             f"({NERF_BASELINES}) cannot run (the Gaussian configs of this extension can)")
            elif offline:
                notes.append(f"{line} dropped: offline (a git clone); the NeRF baselines ({NERF_BASELINES}) "
                             "need it: install it with network access")
            else:
                cuda_git.append(line)
        elif name == "bitsandbytes" and not cuda:
            notes.append(f"{line} dropped: CUDA only (8-bit T5 of deep-floyd-prompt-processor)")
        elif name in NEEDS_TORCHVISION and not cuda and not torchvision_installed:
            notes.append(f"{line} dropped: needs torchvision, whose PyPI build needs CUDA torch "
                         "(threestudio uses it for zero123 and ControlNet only)")
        elif line.startswith("git+") and offline:
            notes.append(f"{line} dropped: offline (a git clone)")
        elif name in BUILD_DOWNLOADS and offline:
            notes.append(f"{line} dropped: offline (its build downloads Eigen); threestudio uses it only to "
                         "initialise an implicit SDF from a mesh")
        elif name in BUILD_DOWNLOADS:
            optional.append(line)
        else:
            kept.append(line)
    return Filtered(kept, cuda_git, optional, notes)


def unsatisfied(lines: Iterable[str], installed: Dict[str, str]) -> List[str]:
    """The requirement lines that the installed distributions do not satisfy (git lines:
    their distribution is missing; markers that do not apply are satisfied)."""
    missing = []
    for line in lines:
        if line.startswith("git+"):
            name = requirement_name(line)
            if name is None or name not in installed:
                missing.append(line)
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed.get(canonicalize_name(requirement.name))
        if version is None or not _version_in(version, requirement):
            missing.append(line)
    return missing


def extension_requirements() -> List[str]:
    """The extension's install requirements as installed (without extras' ones)."""
    try:
        requires = importlib.metadata.requires(EXTENSION_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [r for r in requires if "extra ==" not in r]


def summarise_pip_failure(output: str) -> str:
    """The lines of pip's output that say what conflicts (or its last lines)."""
    lines = output.splitlines()
    keep = []
    for i, line in enumerate(lines):
        if "The conflict is caused by" in line:
            block = [line]
            for follow in lines[i + 1:]:
                if not follow.strip():
                    break
                block.append(follow)
            keep.extend(block)
        elif line.startswith("ERROR:") or "Cannot install" in line:
            if line not in keep:
                keep.append(line)
    return "\n".join(keep or lines[-15:])


# ---------------------------------------------------------------- the checkout


def repository_root() -> Path:
    """The source checkout holding this extension (an editable install)."""
    repo = Path(__file__).resolve().parent.parent.parent
    if not (repo / CONSTRAINTS_NAME).is_file():
        raise SetupError(
            f"{Path(__file__).resolve().parent} is not inside a clone of threestudio-stabledreamer "
            f"(no {CONSTRAINTS_NAME}); clone the repository and install it with `pip install -e .`"
        )
    return repo


def check_checkout(root: Path) -> None:
    """Raise unless ``root`` is a threestudio checkout of the supported version."""
    if not root.is_dir():
        raise SetupError(f"{root} is not a folder")
    missing = [m for m in CHECKOUT_MARKERS if not (root / m).is_file()]
    if missing:
        raise SetupError(
            f"{root} is not a threestudio checkout: missing {', '.join(missing)} (expected the root of "
            f"a clone of {THREESTUDIO_URL} at commit {THREESTUDIO_COMMIT})"
        )
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", (root / "threestudio/__init__.py").read_text())
    version = found.group(1) if found else "unknown"
    if version != THREESTUDIO_VERSION:
        raise SetupError(
            f"{root} holds threestudio {version}, but this extension supports threestudio {THREESTUDIO_VERSION} "
            f"(commit {THREESTUDIO_COMMIT}: git -C {root} checkout {THREESTUDIO_COMMIT})"
        )


def clone_instructions(root: Path) -> str:
    return (f"clone it yourself with network access (git clone {THREESTUDIO_URL} {root} && git -C {root} "
            f"checkout {THREESTUDIO_COMMIT}) or copy a threestudio {THREESTUDIO_VERSION} checkout there, "
            "then run this again")


def clone(root: Path, offline: bool) -> None:
    if offline:
        raise SetupError(f"{root} does not exist and --offline forbids cloning threestudio: " + clone_instructions(root))
    if shutil.which("git") is None:
        raise SetupError(f"{root} does not exist and git is not installed: " + clone_instructions(root))
    print(f"Cloning threestudio {THREESTUDIO_VERSION} ({THREESTUDIO_URL} at {THREESTUDIO_COMMIT}) into {root}",
          flush=True)
    for command in (["git", "clone", "--quiet", THREESTUDIO_URL, str(root)],
                    ["git", "-C", str(root), "checkout", "--quiet", THREESTUDIO_COMMIT]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SetupError(f"`{' '.join(command)}` failed ({reason}): " + clone_instructions(root))


# ---------------------------------------------------------------- torch


@dataclass(frozen=True)
class TorchInfo:
    version: str
    cuda_build: Optional[str]  # torch.version.cuda
    cuda_available: bool


def torch_info() -> TorchInfo:
    try:
        import torch
    except ImportError as error:
        raise SetupError(
            f"torch is not importable ({error}): install PyTorch first, the build for your machine "
            "(https://pytorch.org/get-started/locally/); this set-up never installs or replaces torch"
        ) from error
    return TorchInfo(importlib.metadata.version("torch"), torch.version.cuda, torch.cuda.is_available())


def use_cuda(info: TorchInfo, mode: str) -> bool:
    """Whether to set up for CUDA: ``mode`` is "gpu" (required), "cpu" or "auto"."""
    if mode == "cpu":
        return False
    if mode == "gpu":
        if info.cuda_build is None:
            raise SetupError(
                f"a GPU set-up was asked for, but torch {info.version} is a CPU-only build (torch.version.cuda is "
                "None): install a CUDA build of PyTorch (https://pytorch.org/get-started/locally/) and run this again"
            )
        if not info.cuda_available:
            raise SetupError(
                f"a GPU set-up was asked for, but torch {info.version} (CUDA {info.cuda_build}) sees no CUDA device "
                "(torch.cuda.is_available() is False): check the driver and CUDA_VISIBLE_DEVICES"
            )
        return True
    return info.cuda_available


# ---------------------------------------------------------------- the steps


def pip(args: Sequence[str], what: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("$ " + " ".join(command), flush=True)
    output = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            output.append(line)
    if process.returncode != 0:
        raise SetupError(f"pip could not install {what}:\n{summarise_pip_failure(''.join(output))}")


def extension_is_this_checkout(repo: Path) -> bool:
    """Whether ``threestudio_stabledreamer`` is installed from ``repo`` (editable)."""
    try:
        dist = importlib.metadata.distribution(EXTENSION_DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    direct = dist.read_text("direct_url.json") or ""
    return Path(repo).resolve().as_uri() in direct


def install(filtered: Filtered, repo: Path, constraints: Path, torch_version: str, main_needed: bool) -> None:
    """pip under ``constraints`` and a pin of the installed torch: threestudio's kept
    requirements with this extension (when ``main_needed``) and then its optional ones
    (a failure there is printed, not raised), then the CUDA builds that are missing, without
    build isolation (they import torch to build). Raises when pip fails or torch changed."""
    with tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("\n".join(filtered.kept) + "\n")
        torch_pin = Path(scratch) / "torch.txt"
        torch_pin.write_text(f"torch=={torch_version}\n")
        pins = ["-c", str(constraints), "-c", str(torch_pin)]
        if main_needed:
            pip(["-r", str(requirements), "-e", str(repo), *pins],
                "threestudio's requirements and this extension under " + CONSTRAINTS_NAME)
            for line in unsatisfied(filtered.optional, installed_versions()):
                try:
                    pip([line, *pins], line)
                except SetupError as error:
                    print(f"Warning: {error}\n  Left out; {line} is optional here: threestudio uses it only to "
                          "initialise an implicit SDF from a mesh (install it where its build can download "
                          "Eigen, or pass --offline to skip it).", flush=True)
        missing = unsatisfied(filtered.cuda_git, installed_versions())
        if missing:
            pip(["--no-build-isolation", *missing, *pins],
                "threestudio's CUDA packages (tiny-cuda-nn needs nvcc and a CUDA toolkit matching torch)")
    if importlib.metadata.version("torch") != torch_version:
        raise SetupError(f"pip replaced torch {torch_version} by {importlib.metadata.version('torch')}")


CHECK_SCRIPT = r"""
import importlib.util, json, os, sys
root, repo = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
import torch
spec = importlib.util.spec_from_file_location("threestudio_cpu_shims", os.path.join(repo, "tests", "threestudio_cpu_shims.py"))
shims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shims)
shims.stub_missing_cuda_builds()
shims.install(root)
import threestudio
package = os.path.join(root, "custom", "threestudio-stabledreamer")
spec = importlib.util.spec_from_file_location("threestudio-stabledreamer", os.path.join(package, "__init__.py"),
                                              submodule_search_locations=[package])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
import diffusers, transformers, peft
print(json.dumps({
    "threestudio": threestudio.__version__,
    "registered": sorted(n for n in threestudio.__modules__ if n.startswith("stabledreamer-")),
    "cuda": torch.cuda.is_available(),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "stubbed": sorted(n for n in ("tinycudann", "nvdiffrast", "envlight") if getattr(sys.modules.get(n), "__file__", "") and "threestudio_cpu_shims" in sys.modules[n].__file__),
}))
"""


def expected_registrations(extension: Path) -> List[str]:
    """Every ``stabledreamer-*`` name the extension's sources register."""
    names = set()
    for source in extension.rglob("*.py"):
        names.update(re.findall(r"""register\(\s*["'](stabledreamer-[\w-]+)["']""", source.read_text()))
    return sorted(names)


def check(root: Path, repo: Path) -> dict:
    """Import threestudio and the linked extension in a fresh interpreter; raise unless
    every ``stabledreamer-*`` class is registered."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, str(root), str(repo)],
                          cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"threestudio with the extension does not import:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = expected_registrations(repo / "custom" / "threestudio-stabledreamer")
    missing = sorted(set(expected) - set(result["registered"]))
    if missing:
        raise SetupError(f"threestudio imports, but these classes are not registered: {', '.join(missing)}\n"
                         f"{done.stderr[-4000:]}")
    return result


def setup(root: Path, mode: str = "auto", offline: bool = False) -> int:
    """The whole set-up of the module docstring on ``root``; ``mode``: "auto", "gpu" or "cpu"
    (see :func:`use_cuda`). Raises ``SetupError``."""
    started = time.perf_counter()
    repo = repository_root()
    constraints = repo / CONSTRAINTS_NAME
    root = root.expanduser().absolute()
    if not root.exists():
        clone(root, offline)
    check_checkout(root)
    torch = torch_info()
    cuda = use_cuda(torch, mode)
    print(f"threestudio {THREESTUDIO_VERSION} at {root}; torch {torch.version} "
          f"({'CUDA ' + torch.cuda_build if torch.cuda_build else 'CPU build'}); set-up for "
          f"{'CUDA' if cuda else 'CPU (no CUDA)'}", flush=True)

    installed = installed_versions()
    problems = constraint_violations(installed, parse_constraints(constraints.read_text()), CONSTRAINTS_NAME)
    if problems:
        raise SetupError("installed packages violate the constraints:\n  " + "\n  ".join(problems))

    filtered = filter_requirements((root / "requirements.txt").read_text().splitlines(), cuda, offline,
                                   "torchvision" in installed)
    for note in filtered.notes:
        print(f"  requirement {note}")
    if not cuda:
        print(f"Without CUDA, threestudio's NeRF baselines ({NERF_BASELINES}) are disabled; run this again on a "
              "CUDA machine (or with --gpu) to install tiny-cuda-nn, nvdiffrast and envlight for them.")

    main_needed = bool(unsatisfied(filtered.kept + extension_requirements(), installed)) \
        or not extension_is_this_checkout(repo)
    if main_needed or unsatisfied(filtered.cuda_git, installed):
        install(filtered, repo, constraints, torch.version, main_needed)
    else:
        print("Every requirement is already satisfied: nothing to install.")

    from .link import LinkError, link_into

    try:
        for line in link_into(root):
            print(f"  {line}")
    except LinkError as error:
        raise SetupError(f"linking into {root} failed: {error}") from error

    result = check(root, repo)
    print(f"Checked: threestudio {result['threestudio']} imports with {len(result['registered'])} stabledreamer-* "
          "classes registered; diffusers, transformers and peft import.")
    if result["stubbed"]:
        print(f"  ({', '.join(result['stubbed'])}: not installed, stand-in stubs of tests/threestudio_cpu_shims.py "
              f"for this check; threestudio's NeRF baselines ({NERF_BASELINES}) need the real ones)")
    print(f"  torch sees CUDA: {result['device']}" if result["cuda"] else "  torch sees no CUDA device.")
    versions = installed_versions()
    print("Installed: " + ", ".join(f"{name} {versions[name]}" for name in REPORTED if name in versions))
    print(f"Set-up done in {time.perf_counter() - started:.0f} s. Run StableDreamer with:\n"
          f"  cd {root} && python launch.py --config configs/stabledreamer.yaml --train --gpu 0 "
          'system.prompt_processor.prompt="a zoomed out DSLR photo of a corgi wearing a top hat"')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stabledreamer-setup-threestudio",
        description=(f"Set up threestudio {THREESTUDIO_VERSION} in DIR with this extension, in this Python "
                     f"environment, under {CONSTRAINTS_NAME}. torch must be installed already."),
    )
    parser.add_argument("threestudio_root", type=Path, metavar="DIR",
                        help=f"a threestudio checkout; cloned at {THREESTUDIO_COMMIT} when it does not exist")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="mode", action="store_const", const="gpu", default="auto",
                        help="require CUDA (refuse a CPU-only torch) and install the CUDA packages")
    device.add_argument("--cpu", dest="mode", action="store_const", const="cpu",
                        help="set up without CUDA packages even where CUDA is available")
    parser.add_argument("--offline", action="store_true",
                        help="no access to GitHub: do not clone, skip git requirements (pip's index is still used)")
    args = parser.parse_args(argv)
    try:
        return setup(args.threestudio_root, args.mode, args.offline)
    except SetupError as error:
        print(f"stabledreamer-setup-threestudio: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

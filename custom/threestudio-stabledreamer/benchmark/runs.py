"""The benchmark's runs: one per (method config, prompt), with fixed, findable output places.

Output directory layout (``out`` below):
- ``out/runs/<method>/<prompt slug>/``: the launcher's trial dir. Every run gets the
  overrides ``name=<method> tag=<slug> use_timestamp=false exp_root_dir=out/runs``, so
  threestudio's ``<exp_root_dir>/<name>/<tag>@<timestamp>`` becomes exactly this path.
- ``out/records/<method>/<slug>.json``: the run's record (wall time, peak memory, exit
  code, test-render paths). It is written only when the run finished (launcher exit code
  0 and test renders present) and is the marker that makes later invocations skip it.
- ``out/logs/<method>/<slug>.log``: the launcher's combined stdout and stderr.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

TEST_DIR_PATTERN = re.compile(r"^it(\d+)-test$")


@dataclass(frozen=True)
class Method:
    """A config to compare, under a column name (default: the config file's stem)."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    method: Method
    prompt: str
    prompt_index: int

    @property
    def slug(self) -> str:
        return prompt_slug(self.prompt)

    @property
    def label(self) -> str:
        return f"{self.method.name} | {self.prompt}"

    def trial_dir(self, out: Path) -> Path:
        return out / "runs" / self.method.name / self.slug

    def record_path(self, out: Path) -> Path:
        return out / "records" / self.method.name / f"{self.slug}.json"

    def log_path(self, out: Path) -> Path:
        return out / "logs" / self.method.name / f"{self.slug}.log"


def prompt_slug(prompt: str) -> str:
    """File-name-safe, unique-per-prompt name: lower-case words joined by '_' + 8 hex of sha1."""
    words = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:60].rstrip("_")
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{words}-{digest}" if words else digest


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts: file '{path}' does not exist")
    prompts = [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not prompts:
        raise ValueError(f"prompts: file '{path}' holds no prompt (one per line expected)")
    duplicates = sorted({p for p in prompts if prompts.count(p) > 1})
    if duplicates:
        raise ValueError(f"prompts: file '{path}' repeats {duplicates}; each prompt must be unique")
    for prompt in prompts:
        if "${" in prompt:
            raise ValueError(
                f"prompts: '{prompt}' contains '${{', which the launcher's OmegaConf would "
                "read as an interpolation"
            )
    return prompts


def parse_method(spec: str) -> Method:
    """``path/to/config.yaml`` or ``NAME=path/to/config.yaml``."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    config = Path(path).expanduser().resolve()
    if not config.is_file():
        raise FileNotFoundError(f"configs: '{spec}' names no file ({config})")
    name = name or config.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(
            f"configs: method name '{name}' must be letters, digits, '.', '_' or '-'"
        )
    return Method(name=name, config=config)


def plan_runs(methods: Sequence[Method], prompts: Sequence[str]) -> list[Run]:
    """Every (method, prompt) pair, prompt-major so early results cover every method."""
    names = [m.name for m in methods]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"configs: method names {repeated} repeat; name them NAME=path.yaml")
    return [
        Run(method=method, prompt=prompt, prompt_index=index)
        for index, prompt in enumerate(prompts)
        for method in methods
    ]


def yaml_string(value: str) -> str:
    """A YAML double-quoted scalar, so OmegaConf's dot-list parser keeps ``value`` a string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def launcher_overrides(run: Run, out: Path, extra: Sequence[str] = ()) -> list[str]:
    """Dot-list overrides of one run: its prompt and fixed output place, then user overrides."""
    return [
        f"system.prompt_processor.prompt={yaml_string(run.prompt)}",
        f"name={yaml_string(run.method.name)}",
        f"tag={yaml_string(run.slug)}",
        "use_timestamp=false",
        f"exp_root_dir={yaml_string(str(out / 'runs'))}",
        *extra,
        *run.method.overrides,
    ]


def latest_test_dir(trial_dir: Path) -> Path | None:
    """``save/it<step>-test`` with the largest step, or None."""
    save = trial_dir / "save"
    if not save.is_dir():
        return None
    candidates = [
        (int(match.group(1)), path)
        for path in save.iterdir()
        if path.is_dir() and (match := TEST_DIR_PATTERN.match(path.name))
    ]
    return max(candidates)[1] if candidates else None


def find_test_renders(trial_dir: Path) -> list[Path]:
    """The test views ``save/it<step>-test/<index>.png`` in index order (empty if none)."""
    directory = latest_test_dir(trial_dir)
    if directory is None:
        return []
    frames = [p for p in directory.iterdir() if p.suffix == ".png" and p.stem.isdigit()]
    return sorted(frames, key=lambda p: int(p.stem))


def rgb_panel(image: np.ndarray, panel_width: int | None = None) -> np.ndarray:
    """The leftmost panel of a test render, which threestudio-style systems save as
    [rgb | other maps ...] side by side.

    ``panel_width`` defaults to the image height (square renders, as threestudio's default
    512x512 evaluation cameras); the image width must then be a whole number of panels.
    """
    height, width = image.shape[:2]
    if panel_width is None:
        if width % height:
            raise ValueError(
                f"render width {width} is not a multiple of its height {height}: the renders "
                "are not square panels, give the rgb panel width (--rgb-panel-width)"
            )
        panel_width = height
    if not 0 < panel_width <= width:
        raise ValueError(f"rgb panel width: expected 1..{width}, got {panel_width}")
    return image[:, :panel_width, :3]


def load_rgb_views(paths: Sequence[Path], panel_width: int | None = None) -> list[np.ndarray]:
    """uint8 RGB [H, W, 3] rgb panels of the given test renders."""
    return [rgb_panel(np.asarray(Image.open(p).convert("RGB")), panel_width) for p in paths]


@dataclass
class RunRecord:
    """What a finished run leaves behind (serialised as the run's record JSON)."""

    method: str
    config: str
    prompt: str
    prompt_index: int
    trial_dir: str
    wall_time_s: float
    peak_memory_bytes: int
    memory_kind: str
    test_renders: list[str] = field(default_factory=list)
    measurement: dict = field(default_factory=dict)
    resumed_from: str | None = None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def finished_record(run: Run, out: Path) -> RunRecord | None:
    """The run's record if it finished earlier (and its renders are still there)."""
    path = run.record_path(out)
    if not path.is_file():
        return None
    record = RunRecord.load(path)
    if not record.test_renders or not all(Path(p).is_file() for p in record.test_renders):
        return None
    return record

"""Per-stage run figures for ``metrics.json``: steps, wall time, peak memory.

Wall time of a step runs from the start of its training batch (after any stage switch)
to the end of the batch: rendering, guidance, backward, optimizer step and density
control; model loading is counted apart (``load_time_s``), validation is not counted.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` with the peak statistics reset
when a stage starts, so each stage reports its own peak. On CPU, the process's peak
resident set size (``resource.getrusage(...).ru_maxrss``), which cannot be reset: a
later stage's value also covers the stages before it.
"""
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch

MEMORY_MEASURES = {
    "cuda": "torch.cuda.max_memory_allocated since the stage started (MiB)",
    "cpu": "peak resident set size of the process so far, ru_maxrss (MiB); cumulative over stages",
}


@dataclass
class StageRecord:
    guidance_type: str
    first_step: Optional[int] = None
    last_step: Optional[int] = None
    steps: int = 0
    wall_time_s: float = 0.0
    load_time_s: float = 0.0
    peak_memory_mib: float = 0.0

    def summary(self) -> Dict[str, Any]:
        out = asdict(self)
        out["iterations_per_second"] = self.steps / self.wall_time_s if self.wall_time_s > 0 else None
        return out


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


@dataclass
class RunMetrics:
    """Accumulates per-stage figures; survives checkpoints through ``state_dict``."""

    stages: Dict[str, StageRecord] = field(default_factory=dict)
    density_events: List[Dict[str, Any]] = field(default_factory=list)
    _step_started: Optional[float] = None

    def stage_loaded(self, stage: str, guidance_type: str, load_time_s: float, device: torch.device) -> None:
        record = self.stages.setdefault(stage, StageRecord(guidance_type))
        record.guidance_type = guidance_type
        record.load_time_s += load_time_s
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def step_started(self) -> None:
        self._step_started = time.perf_counter()

    def step_finished(self, stage: str, step: int, device: torch.device) -> None:
        record = self.stages[stage]
        if self._step_started is not None:
            record.wall_time_s += time.perf_counter() - self._step_started
            self._step_started = None
        record.steps += 1
        record.first_step = step if record.first_step is None else min(record.first_step, step)
        record.last_step = step if record.last_step is None else max(record.last_step, step)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mib()
        record.peak_memory_mib = max(record.peak_memory_mib, peak)

    def density_changed(self, summary: Dict[str, Any]) -> None:
        """Record a density-control step that changed the Gaussians."""
        if summary.get("cloned") or summary.get("split") or summary.get("pruned") or summary.get("nonfinite"):
            self.density_events.append({key: summary[key] for key in
                                        ("step", "cloned", "split", "pruned", "nonfinite", "num_gaussians")})

    def summary(self, num_gaussians: int, device: torch.device) -> Dict[str, Any]:
        """The ``metrics.json`` figures: ``stages`` (per stage: guidance_type, first_step,
        last_step, steps, wall_time_s, load_time_s, peak_memory_mib, iterations_per_second),
        total_steps, total_wall_time_s, iterations_per_second, final_num_gaussians,
        ``densification`` (cloned, split, pruned, nonfinite totals and the events), device
        and memory_measure (what peak_memory_mib measures)."""
        steps = sum(record.steps for record in self.stages.values())
        wall = sum(record.wall_time_s for record in self.stages.values())
        totals = {key: sum(event[key] for event in self.density_events)
                  for key in ("cloned", "split", "pruned", "nonfinite")}
        return {
            "stages": {name: record.summary() for name, record in sorted(self.stages.items())},
            "total_steps": steps,
            "total_wall_time_s": wall,
            "iterations_per_second": steps / wall if wall > 0 else None,
            "final_num_gaussians": num_gaussians,
            "densification": {**totals, "events": list(self.density_events)},
            "device": str(device),
            "memory_measure": MEMORY_MEASURES["cuda" if device.type == "cuda" else "cpu"],
        }

    def state_dict(self) -> Dict[str, Any]:
        return {
            "stages": {name: asdict(record) for name, record in self.stages.items()},
            "density_events": list(self.density_events),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.stages = {name: StageRecord(**record) for name, record in state.get("stages", {}).items()}
        self.density_events = list(state.get("density_events", []))

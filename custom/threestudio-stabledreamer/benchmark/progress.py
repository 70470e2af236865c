"""Progress across the whole benchmark: runs done / total and each running run's step.

The current step comes from the launcher's own progress output: PyTorch Lightning's bar
(which threestudio uses) prints ``Epoch 0: 45%|...| 450/1000 [...]`` while training and
``Testing DataLoader 0: ...| 12/120 [...]`` while testing, redrawn with carriage returns;
the total is ``?`` when the data loader has no length.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

_COUNTER = re.compile(r"(\d+)/(\d+|\?)\s*\[")
_PHASES = (("Testing", "test"), ("Validation", "validate"), ("Predicting", "export"), ("Epoch", "train"))


@dataclass(frozen=True)
class StepProgress:
    phase: str
    step: int
    total: int | None

    def __str__(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return f"{self.phase} {self.step}/{total}"


def parse_progress(text: str) -> StepProgress | None:
    """The last progress-bar counter in ``text`` (one redraw of a bar), or None."""
    matches = list(_COUNTER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    head = text[: last.start()]
    phase = next((name for marker, name in _PHASES if marker in head), "step")
    total = None if last.group(2) == "?" else int(last.group(2))
    return StepProgress(phase=phase, step=int(last.group(1)), total=total)


class ProgressBoard:
    """Thread-safe status of all runs, printed as plain lines to ``stream`` (default: the
    current ``sys.stdout``) at most every ``interval`` s, and at once when a run starts or ends."""

    def __init__(self, total: int, stream: TextIO | None = None, interval: float = 10.0):
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream
        self.interval = interval
        self._running: dict[str, tuple[str, StepProgress | None, float]] = {}
        self._lock = threading.Lock()
        self._last_print = 0.0

    def skip(self, label: str) -> None:
        with self._lock:
            self.done += 1
            self._print_locked(f"skip (finished earlier): {label}")

    def event(self, text: str) -> None:
        """Print one line (a resume, a retry, a submitted job) with the status after it."""
        with self._lock:
            self._print_locked(text)

    def start(self, slot: str, label: str) -> None:
        with self._lock:
            self._running[slot] = (label, None, time.monotonic())
            self._print_locked(f"start [{slot}]: {label}")

    def update(self, slot: str, progress: StepProgress) -> None:
        with self._lock:
            if slot in self._running:
                label, _, started = self._running[slot]
                self._running[slot] = (label, progress, started)
            if time.monotonic() - self._last_print >= self.interval:
                self._print_locked()

    def finish(self, slot: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            label, _, started = self._running.pop(slot)
            self.done += 1
            self.failed += 0 if ok else 1
            status = "done" if ok else "FAILED"
            elapsed = time.monotonic() - started
            self._print_locked(f"{status} [{slot}] in {elapsed:.0f} s: {label} {detail}".rstrip())

    def complete(self, label: str, ok: bool, detail: str = "") -> None:
        """A run that ran elsewhere (a Ray task, a SLURM job) ended."""
        with self._lock:
            self.done += 1
            self.failed += 0 if ok else 1
            self._print_locked(f"{'done' if ok else 'FAILED'}: {label} {detail}".rstrip())

    def _status_locked(self) -> str:
        parts = [f"runs {self.done}/{self.total} done"]
        if self.failed:
            parts[0] += f" ({self.failed} failed)"
        for slot, (label, progress, started) in sorted(self._running.items()):
            step = str(progress) if progress else f"{time.monotonic() - started:.0f} s"
            parts.append(f"[{slot}] {label}: {step}")
        return " | ".join(parts)

    def _print_locked(self, event: str | None = None) -> None:
        stream = self.stream or sys.stdout
        if event:
            stream.write(event + "\n")
        stream.write(self._status_locked() + "\n")
        stream.flush()
        self._last_print = time.monotonic()

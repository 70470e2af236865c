"""Run the planned runs through the launcher, one job per device slot, skipping finished runs.

Each run is ``python measure_launch.py --record <json> --cwd <dir> <launch.py> --config
<cfg> --train [--gpu <id>] <overrides>`` in a fresh process, so its time and memory are
measured from outside the method, identically for our configs and threestudio's own
baselines.
"""
from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .progress import ProgressBoard, parse_progress
from .runs import Run, RunRecord, find_test_renders, finished_record, launcher_overrides

MEASURE_SCRIPT = Path(__file__).with_name("measure_launch.py")
CPU_SLOT = "cpu"


@dataclass(frozen=True)
class LaunchSettings:
    launcher: Path
    launcher_cwd: Path
    out: Path
    extra_overrides: tuple[str, ...] = ()
    python: str = sys.executable


def launch_command(run: Run, settings: LaunchSettings, slot: str, record_path: Path) -> list[str]:
    gpu = [] if slot == CPU_SLOT else ["--gpu", slot]
    return [
        settings.python,
        str(MEASURE_SCRIPT),
        "--record",
        str(record_path),
        "--cwd",
        str(settings.launcher_cwd),
        str(settings.launcher),
        "--config",
        str(run.method.config),
        "--train",
        *gpu,
        *launcher_overrides(run, settings.out, settings.extra_overrides),
    ]


def _stream_output(process: subprocess.Popen, log, board: ProgressBoard, slot: str) -> None:
    """Copy the launcher's output to its log, feeding each redraw to the progress board."""
    tail = ""
    while chunk := process.stdout.read1(4096):
        text = chunk.decode("utf-8", errors="replace")
        log.write(text)
        log.flush()
        # a bar redraw is "\r<bar>" with no newline: the text after the last break counts too
        tail = (tail + text).replace("\r", "\n")[-2048:]
        for segment in tail.split("\n"):
            progress = parse_progress(segment)
            if progress is not None:
                board.update(slot, progress)
        tail = tail.rsplit("\n", 1)[-1]


def execute_run(
    run: Run, settings: LaunchSettings, slot: str, board: ProgressBoard, processes: dict
) -> tuple[RunRecord | None, str]:
    """Train and test one run from scratch; return its record (None on failure) and a note."""
    out = settings.out
    run.record_path(out).unlink(missing_ok=True)
    trial_dir = run.trial_dir(out)
    if trial_dir.exists():
        shutil.rmtree(trial_dir)
    log_path = run.log_path(out)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    measurement_path = run.record_path(out).with_suffix(".measurement.json")
    measurement_path.parent.mkdir(parents=True, exist_ok=True)
    measurement_path.unlink(missing_ok=True)

    command = launch_command(run, settings, slot, measurement_path)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        processes[slot] = process
        try:
            _stream_output(process, log, board, slot)
            exit_code = process.wait()
        finally:
            processes.pop(slot, None)

    if not measurement_path.is_file():
        return None, f"exit code {exit_code}, no measurement written; see {log_path}"
    measurement = json.loads(measurement_path.read_text(encoding="utf-8"))
    if exit_code != 0 or measurement["exit_code"] != 0:
        return None, f"exit code {exit_code}; see {log_path}"
    renders = find_test_renders(trial_dir)
    if not renders:
        return None, f"no test renders in {trial_dir / 'save'}/it<step>-test/; see {log_path}"
    record = RunRecord(
        method=run.method.name,
        config=str(run.method.config),
        prompt=run.prompt,
        prompt_index=run.prompt_index,
        trial_dir=str(trial_dir),
        wall_time_s=measurement["wall_time_s"],
        peak_memory_bytes=measurement["peak_memory_bytes"],
        memory_kind=measurement["memory_kind"],
        test_renders=[str(p) for p in renders],
        measurement=measurement,
    )
    record.save(run.record_path(out))
    measurement_path.unlink()
    return record, ""


def execute_all(
    runs: Sequence[Run], settings: LaunchSettings, slots: Sequence[str], board: ProgressBoard
) -> tuple[list[RunRecord], list[tuple[Run, str]]]:
    """Run every unfinished run, one at a time per slot; return finished records and failures."""
    records: list[RunRecord] = []
    failures: list[tuple[Run, str]] = []
    pending: queue.Queue[Run] = queue.Queue()
    for run in runs:
        record = finished_record(run, settings.out)
        if record is None:
            pending.put(run)
        else:
            records.append(record)
            board.skip(run.label)

    processes: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()

    def worker(slot: str) -> None:
        while True:
            try:
                run = pending.get_nowait()
            except queue.Empty:
                return
            board.start(slot, run.label)
            record, note = execute_run(run, settings, slot, board, processes)
            board.finish(slot, record is not None, note)
            with lock:
                if record is None:
                    failures.append((run, note))
                else:
                    records.append(record)

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in slots]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        for process in list(processes.values()):
            process.terminate()
        raise
    return records, failures

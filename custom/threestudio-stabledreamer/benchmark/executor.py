"""Run the planned runs through the launcher, skipping finished runs and resuming
interrupted ones from their last checkpoint.

Each run is ``python measure_launch.py --record <json> --cwd <dir> <launch.py> --config
<cfg> --train [--gpu <id>] <overrides>`` in a fresh process, so its time and memory are
measured from outside the method, identically for our configs and threestudio's own
baselines. ``execute_run`` is the unit of work of every executor: the local one here (one
run at a time per device slot, in threads), and the Ray and SLURM ones in
``ray_executor`` and ``slurm_executor``.

Resume: threestudio's launcher writes Lightning checkpoints to ``<trial>/ckpts/``
(``last.ckpt`` and ``epoch=<e>-step=<s>.ckpt``) and continues from one given as
``resume=<path>``. A run that left checkpoints behind (killed, preempted, lost node,
Ctrl-C) is relaunched in the same trial dir with ``resume=`` set to its newest checkpoint
that loads. A checkpoint that does not load (cut short by a kill during its write) is
skipped, and the log and the progress output say so. The wall time and peak memory of a
resumed run are those of its last launch; its record names the checkpoint it resumed from.
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
from .runs import Run, RunRecord, find_test_renders, finished_record, launcher_overrides, yaml_string

MEASURE_SCRIPT = Path(__file__).with_name("measure_launch.py")
CPU_SLOT = "cpu"


@dataclass(frozen=True)
class LaunchSettings:
    launcher: Path
    launcher_cwd: Path
    out: Path
    extra_overrides: tuple[str, ...] = ()
    python: str = sys.executable


@dataclass(frozen=True)
class SkippedCheckpoint:
    path: Path
    reason: str


def _checkpoint_step(path: Path) -> int | None:
    """The global step stored in a Lightning checkpoint; raises when the file does not load."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise ValueError("not a Lightning checkpoint (no 'global_step')")
    return int(checkpoint["global_step"])


def resume_checkpoint(trial_dir: Path) -> tuple[Path | None, list[SkippedCheckpoint]]:
    """The newest loadable checkpoint in ``trial_dir/ckpts`` (None if there is none) and the
    newer ones skipped because they do not load.

    Newest = latest modification time (``last.ckpt`` and the step checkpoint of the same
    step are equivalent). Every candidate is loaded with ``torch.load`` on the CPU: a file
    cut short by a kill during its write fails there (truncated zip archive).
    """
    directory = trial_dir / "ckpts"
    if not directory.is_dir():
        return None, []
    candidates = sorted(
        (p for p in directory.iterdir() if p.suffix == ".ckpt" and p.is_file()),
        key=lambda p: (p.stat().st_mtime_ns, p.name),
        reverse=True,
    )
    skipped = []
    for path in candidates:
        try:
            _checkpoint_step(path)
        except Exception as error:  # any failure to load means the file cannot be resumed from
            skipped.append(SkippedCheckpoint(path, f"{type(error).__name__}: {error}"))
            continue
        return path, skipped
    return None, skipped


def launch_command(
    run: Run, settings: LaunchSettings, slot: str, record_path: Path, resume: Path | None = None
) -> list[str]:
    gpu = [] if slot == CPU_SLOT else ["--gpu", slot]
    resume_override = [] if resume is None else [f"resume={yaml_string(str(resume))}"]
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
        *resume_override,
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
    run: Run, settings: LaunchSettings, slot: str, board: ProgressBoard, processes: dict | None = None
) -> tuple[RunRecord | None, str]:
    """Train and test one run, from its newest loadable checkpoint if it has one, else from
    scratch; return its record (None on failure) and a note.

    An exception in the caller's thread (KeyboardInterrupt, a cancelled Ray task) terminates
    the launcher before propagating, so no launcher outlives its run.
    """
    out = settings.out
    run.record_path(out).unlink(missing_ok=True)
    trial_dir = run.trial_dir(out)
    resume, skipped = resume_checkpoint(trial_dir)
    if resume is None and trial_dir.exists():
        shutil.rmtree(trial_dir)
    log_path = run.log_path(out)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    measurement_path = run.record_path(out).with_suffix(".measurement.json")
    measurement_path.parent.mkdir(parents=True, exist_ok=True)
    measurement_path.unlink(missing_ok=True)

    notes = [f"checkpoint {s.path} does not load ({s.reason}); using an earlier one" for s in skipped]
    if resume is not None:
        notes.append(f"resuming {run.label} from {resume}")
    elif skipped:
        notes.append(f"no loadable checkpoint left; {run.label} starts over")
    for note in notes:
        board.event(f"[{slot}] {note}")
    command = launch_command(run, settings, slot, measurement_path, resume)
    processes = {} if processes is None else processes
    # a resumed run appends to the log of its earlier launches
    with open(log_path, "a" if resume is not None else "w", encoding="utf-8") as log:
        for note in notes:
            log.write(f"== {note}\n")
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        processes[slot] = process
        try:
            _stream_output(process, log, board, slot)
            exit_code = process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
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
        resumed_from=None if resume is None else str(resume),
    )
    record.save(run.record_path(out))
    measurement_path.unlink()
    return record, ""


def split_finished(
    runs: Sequence[Run], out: Path, board: ProgressBoard
) -> tuple[list[RunRecord], list[Run]]:
    """(records of the runs that finished earlier, the runs still to do), in plan order."""
    records, pending = [], []
    for run in runs:
        record = finished_record(run, out)
        if record is None:
            pending.append(run)
        else:
            records.append(record)
            board.skip(run.label)
    return records, pending


def check_retries(retries: int) -> int:
    if retries < 0:
        raise ValueError(f"retries: expected a number >= 0, got {retries}")
    return retries


class RunFailed(RuntimeError):
    """A run ended without a finished record; the message says why and names its log."""


def execute_with_retries(
    run: Run,
    settings: LaunchSettings,
    slot: str,
    board: ProgressBoard,
    retries: int,
    processes: dict | None = None,
) -> tuple[RunRecord | None, str]:
    """``execute_run`` up to ``1 + retries`` times, until it finishes; each attempt resumes
    from the checkpoints of the previous one."""
    for attempt in range(retries + 1):
        board.start(slot, run.label)
        record, note = execute_run(run, settings, slot, board, processes)
        board.finish(slot, record is not None, note)
        if record is not None:
            return record, ""
        if attempt < retries:
            board.event(f"retry {attempt + 1}/{retries}: {run.label}")
    return None, note


def execute_all(
    runs: Sequence[Run],
    settings: LaunchSettings,
    slots: Sequence[str],
    board: ProgressBoard,
    retries: int = 0,
) -> tuple[list[RunRecord], list[tuple[Run, str]]]:
    """Run every unfinished run, one at a time per slot, a failed run again up to ``retries``
    times (each attempt resumes from the run's checkpoints); return finished records and
    failures."""
    check_retries(retries)
    records, todo = split_finished(runs, settings.out, board)
    failures: list[tuple[Run, str]] = []
    pending: queue.Queue[Run] = queue.Queue()
    for run in todo:
        pending.put(run)

    processes: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()

    def worker(slot: str) -> None:
        while True:
            try:
                run = pending.get_nowait()
            except queue.Empty:
                return
            record, note = execute_with_retries(run, settings, slot, board, retries, processes)
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

"""The runs as SLURM jobs through submitit: one job per run, submitted as one job array.

Each job runs ``executor.execute_with_retries`` for its run on the node it lands on, so
``out`` must be a filesystem the nodes share (submitit keeps its job folders, logs and
pickles in ``out/slurm/``). The job is a ``submitit.helpers.Checkpointable``: when SLURM
preempts it or its time limit is near, submitit requeues it, and the requeued job resumes
the run from its newest loadable checkpoint.

Resumable: ``out/slurm/jobs.json`` maps each run to its job id. A later invocation skips
finished runs, attaches to the jobs of runs still queued or running instead of submitting
them again, and submits the rest. Ctrl-C stops waiting and leaves the jobs in the queue.

``cluster="local"`` uses submitit's local executor (the jobs are processes on this machine,
SLURM options ignored), which runs the same path without a cluster.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cloudpickle
import submitit

from .executor import CPU_SLOT, LaunchSettings, RunFailed, check_retries, execute_with_retries, split_finished
from .progress import ProgressBoard
from .runs import Run, RunRecord

JOB_CLASSES = {"slurm": submitit.SlurmJob, "local": submitit.LocalJob}


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    sbatch: tuple[tuple[str, str], ...] = ()  # extra sbatch options, (name, value)
    array_parallelism: int | None = None
    cluster: str = "slurm"
    poll_interval_s: float = 10.0


class RunJob(submitit.helpers.Checkpointable):
    """One run as a submitit job; on preemption or timeout submitit requeues it unchanged."""

    def __call__(
        self, run: Run, settings: LaunchSettings, retries: int, use_gpu: bool, progress_interval: float
    ) -> RunRecord:
        board = ProgressBoard(total=1, interval=progress_interval)
        record, note = execute_with_retries(run, settings, "0" if use_gpu else CPU_SLOT, board, retries)
        if record is None:
            raise RunFailed(f"{run.label}: {note}")
        return record


def make_executor(folder: Path, options: SlurmOptions, use_gpu: bool) -> submitit.AutoExecutor:
    if options.cluster not in JOB_CLASSES:
        raise ValueError(f"slurm cluster: expected one of {sorted(JOB_CLASSES)}, got '{options.cluster}'")
    if options.time_min <= 0:
        raise ValueError(f"slurm time limit: expected a positive number of minutes, got {options.time_min}")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.cluster)
    parameters = {
        "timeout_min": options.time_min,
        "gpus_per_node": options.gpus_per_job if use_gpu else 0,
        "tasks_per_node": 1,
        "nodes": 1,
        "name": "stabledreamer-benchmark",
    }
    if options.cpus_per_job is not None:
        parameters["cpus_per_task"] = options.cpus_per_job
    if options.partition is not None:
        parameters["slurm_partition"] = options.partition
    if options.sbatch:
        parameters["slurm_additional_parameters"] = dict(options.sbatch)
    if options.array_parallelism is not None:
        parameters["slurm_array_parallelism"] = options.array_parallelism
    executor.update_parameters(**parameters)
    return executor


def _run_key(run: Run) -> str:
    return f"{run.method.name}/{run.slug}"


def _failure_note(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    failed = [line for line in lines if RunFailed.__name__ in line]
    return (failed or lines or [type(error).__name__])[-1]


class JobRegistry:
    """``jobs.json``: the job id of each run, so a later invocation finds its queued jobs."""

    def __init__(self, folder: Path):
        self.path = folder / "jobs.json"
        self.ids: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.ids, indent=2))
        partial.replace(self.path)


def execute_on_slurm(
    runs: Sequence[Run],
    settings: LaunchSettings,
    board: ProgressBoard,
    options: SlurmOptions,
    use_gpu: bool,
    retries: int = 0,
    progress_interval: float = 10.0,
) -> tuple[list[RunRecord], list[tuple[Run, str]]]:
    """Every unfinished run as a job (those already queued are waited for, not resubmitted);
    wait for them all; return finished records and failures."""
    check_retries(retries)
    # Jobs carry this package's code by value, so a job never imports the extension (whose
    # __init__ imports threestudio); it only needs the launcher's environment.
    cloudpickle.register_pickle_by_value(sys.modules[__package__])
    folder = settings.out / "slurm"
    executor = make_executor(folder, options, use_gpu)
    records, todo = split_finished(runs, settings.out, board)
    registry = JobRegistry(folder)
    jobs: dict[str, tuple[Run, submitit.Job]] = {}
    to_submit = []
    for run in todo:
        job_id = registry.ids.get(_run_key(run))
        if job_id is not None:
            job = JOB_CLASSES[options.cluster](folder=folder / "%j", job_id=job_id)
            if not job.done(force_check=True):
                jobs[job_id] = (run, job)
                board.event(f"waiting for queued job {job_id}: {run.label}")
                continue
        to_submit.append(run)
    if to_submit:
        task = RunJob()
        with executor.batch():
            submitted = [
                executor.submit(task, run, settings, retries, use_gpu, progress_interval) for run in to_submit
            ]
        for run, job in zip(to_submit, submitted):
            registry.ids[_run_key(run)] = job.job_id
            jobs[job.job_id] = (run, job)
            board.event(f"submitted job {job.job_id}: {run.label}")
        registry.save()

    failures: list[tuple[Run, str]] = []
    try:
        while jobs:
            for job_id in [j for j, (_, job) in jobs.items() if job.done()]:
                run, job = jobs.pop(job_id)
                try:
                    records.append(job.result())
                    board.complete(run.label, True, f"(job {job_id})")
                except Exception as error:  # submitit re-raises the job's failure as its own error types
                    note = f"job {job_id}: {_failure_note(error)}; see {job.paths.stderr}"
                    failures.append((run, note))
                    board.complete(run.label, False, note)
            if jobs:
                time.sleep(options.poll_interval_s)
    except KeyboardInterrupt:
        board.event(
            f"stopped waiting; {len(jobs)} jobs stay queued or running. Run the same command "
            "again to collect them (they are not submitted twice)."
        )
        raise
    return records, failures

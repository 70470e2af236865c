"""The runs as Ray tasks: on an existing Ray cluster, or a local one started for the comparison.

Each unfinished run is one task reserving one GPU (``num_gpus=1``; Ray sets the task's
``CUDA_VISIBLE_DEVICES``, which threestudio's launcher honours) or, for CPU runs,
``cpus_per_run`` CPUs. The task calls ``executor.execute_run`` on the worker, so every
output lands in ``out``, which must be a filesystem all workers share; the launcher and
the configs must be at the same paths on every node (the task carries the runner's own
code, so workers need not have this package installed).

Failures: a run that fails raises ``RunFailed`` in its task and Ray runs the task again,
up to ``retries`` times (``max_retries`` with ``retry_exceptions``; a worker or node lost
mid-run counts as a failure too); each attempt resumes from the run's newest loadable
checkpoint. A run that still fails is reported; the other tasks go on.
Ctrl-C cancels every unfinished task (a running task's launcher is terminated) and leaves
finished runs, and the checkpoints of interrupted ones, in place for the next invocation.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from .executor import CPU_SLOT, LaunchSettings, RunFailed, check_retries, execute_run, split_finished
from .progress import ProgressBoard
from .runs import Run, RunRecord

# forwarded to the workers when set in the runner's environment
FORWARDED_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "PYTHONPATH",
    "STABLEDREAMER_TINY_MODELS",
)


def run_task(run: Run, settings: LaunchSettings, use_gpu: bool, progress_interval: float) -> RunRecord:
    """Body of one Ray task: the run on this worker's GPU (or CPU); raises RunFailed."""
    board = ProgressBoard(total=1, interval=progress_interval)
    slot = "0" if use_gpu else CPU_SLOT  # the GPU Ray assigned is device 0 of CUDA_VISIBLE_DEVICES
    board.start(slot, run.label)
    record, note = execute_run(run, settings, slot, board)
    board.finish(slot, record is not None, note)
    if record is None:
        raise RunFailed(f"{run.label}: {note}")
    return record


def worker_env_vars() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def execute_on_ray(
    runs: Sequence[Run],
    settings: LaunchSettings,
    board: ProgressBoard,
    address: str | None,
    use_gpu: bool,
    cpus_per_run: float = 1,
    local_cpus: int | None = None,
    retries: int = 0,
    progress_interval: float = 10.0,
) -> tuple[list[RunRecord], list[tuple[Run, str]]]:
    """Every unfinished run as a Ray task; return finished records and failures.

    ``address``: an existing cluster (``"auto"`` or ``host:port``), or None to start a
    local one with ``local_cpus`` CPUs (default: all) and the machine's GPUs.
    """
    import ray

    check_retries(retries)
    if cpus_per_run <= 0:
        raise ValueError(f"ray cpus per run: expected a positive number, got {cpus_per_run}")
    records, todo = split_finished(runs, settings.out, board)
    if not todo:
        return records, []

    runtime_env = {"env_vars": worker_env_vars()}
    if address is None:
        ray.init(num_cpus=local_cpus, include_dashboard=False, runtime_env=runtime_env)
    else:
        ray.init(address=address, runtime_env=runtime_env)
    # Tasks carry this package's code by value, so a worker never imports the extension
    # (whose __init__ imports threestudio); it only needs the launcher's environment.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__package__])
    failures: list[tuple[Run, str]] = []
    try:
        resources = {"num_gpus": 1} if use_gpu else {"num_cpus": cpus_per_run}
        task = ray.remote(run_task).options(max_retries=retries, retry_exceptions=True, **resources)
        pending = {}
        for index, run in enumerate(todo):
            pending[task.remote(run, settings, use_gpu, progress_interval)] = run
            board.event(f"submitted Ray task {index + 1}/{len(todo)}: {run.label}")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        records.append(ray.get(ref))
                        board.complete(run.label, True)
                    except ray.exceptions.RayError as error:
                        cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
                        note = str(cause).strip().splitlines()[-1]
                        failures.append((run, note))
                        board.complete(run.label, False, f"after {retries} retries: {note}")
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=30)
            raise
    finally:
        ray.shutdown()
    return records, failures

"""Run a threestudio-style launcher in this process and record its wall time and peak memory.

Usage: python measure_launch.py --record OUT.json [--cwd DIR] path/to/launch.py --config ... --train

Executed by file path, never imported: it uses only the standard library (and torch, if the
launcher loaded it), so the measured process holds nothing but the launcher and what the
launcher itself imports. The launcher runs as ``__main__`` with ``sys.path[0]`` set to its
own folder, as ``python launch.py`` would, in the working directory ``--cwd`` (default: the
launcher's folder; threestudio's launcher loads extensions from ``./custom/``).

The record, written at exit whatever happened, holds
- wall_time_s: seconds from just before the launcher starts to its end (time.perf_counter);
- peak_cuda_memory_bytes: max over visible CUDA devices of torch.cuda.max_memory_allocated
  (None when CUDA was never initialised in the process);
- peak_rss_bytes: the peak resident set size of this process image. On Linux VmHWM of
  /proc/self/status: getrusage's ru_maxrss would report the high-water mark of the process
  that started us, which exec keeps. Elsewhere ru_maxrss;
- memory_kind: "cuda" when CUDA was used, else "cpu-rss"; peak_memory_bytes: the matching one;
- exit_code: the launcher's exit status (0 on a normal return), and error (a traceback or None).

Child processes are in neither memory figure (threestudio's prompt processors may encode the
prompt in a spawned process before training).
"""
import argparse
import json
import os
import resource
import runpy
import sys
import time
import traceback


def peak_cuda_memory_bytes():
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))


def peak_rss_bytes():
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss if sys.platform == "darwin" else max_rss * 1024


def exit_code_of(status):
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    return 1


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", required=True, help="JSON file to write at exit")
    parser.add_argument("--cwd", default=None, help="working directory (default: the launcher's folder)")
    parser.add_argument("launcher", help="path of launch.py")
    parser.add_argument("launcher_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    launcher = os.path.abspath(args.launcher)
    if not os.path.isfile(launcher):
        parser.error(f"launcher: '{launcher}' is not a file")
    launcher_dir = os.path.dirname(launcher)
    working_dir = os.path.abspath(args.cwd) if args.cwd else launcher_dir
    if not os.path.isdir(working_dir):
        parser.error(f"--cwd: '{working_dir}' is not a directory")
    os.chdir(working_dir)
    sys.path[0] = launcher_dir
    sys.argv = [launcher, *args.launcher_args]

    exit_code, error = 0, None
    start = time.perf_counter()
    try:
        runpy.run_path(launcher, run_name="__main__")
    except SystemExit as stop:
        exit_code = exit_code_of(stop.code)
        if exit_code != 0:
            error = f"SystemExit({stop.code!r})"
    except BaseException:
        exit_code, error = 1, traceback.format_exc()
    wall_time_s = time.perf_counter() - start

    cuda_bytes = peak_cuda_memory_bytes()
    rss_bytes = peak_rss_bytes()
    record = {
        "launcher": launcher,
        "launcher_args": args.launcher_args,
        "cwd": working_dir,
        "wall_time_s": wall_time_s,
        "peak_cuda_memory_bytes": cuda_bytes,
        "peak_rss_bytes": rss_bytes,
        "memory_kind": "cuda" if cuda_bytes is not None else "cpu-rss",
        "peak_memory_bytes": cuda_bytes if cuda_bytes is not None else rss_bytes,
        "exit_code": exit_code,
        "error": error,
    }
    with open(args.record, "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=2)
    if error is not None:
        sys.stderr.write(error + "\n")
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# The GPU check in one command (see README, "Checking a GPU install"):
#   bash benchmarks/gpu_check.sh --out DIR
# Installs what .gpu-deps/ holds (scripts/gather_gpu_deps.sh) without network, builds the
# CUDA rasterizers, runs the device tests, the smoke run, the README's threestudio set-up
# with a launch.py run (when gathered with --threestudio) and the backend comparison on
# CUDA, and writes DIR/summary.json, DIR/summary.txt and logs. Exit status: 0 all passed,
# 1 a stage failed, 2 bad arguments, 3 no CUDA here (the CPU-side parts ran).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec "${PYTHON:-python3}" "$repo/benchmarks/gpu_check.py" "$@"

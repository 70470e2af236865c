#!/usr/bin/env bash
# Install this repository and run the main job (see README):
#   bash scripts/run.sh --prompt "a zoomed out DSLR photo of a corgi wearing a top hat" [--threestudio DIR]
# With a threestudio checkout (--threestudio or $THREESTUDIO_ROOT) and a CUDA GPU it runs
# configs/stabledreamer.yaml inside threestudio; otherwise a CPU smoke run on tiny models.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python -m pip install --quiet -e "$repo"
exec python -m threestudio_stabledreamer.run "$@"

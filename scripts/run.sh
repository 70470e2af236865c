#!/usr/bin/env bash
# Install this repository and run the main job (see README):
#   bash scripts/run.sh --prompt "a zoomed out DSLR photo of a corgi wearing a top hat" [--threestudio DIR]
# With a threestudio checkout (--threestudio or $THREESTUDIO_ROOT) and a CUDA GPU it runs
# configs/stabledreamer.yaml inside threestudio; otherwise the known-answer run on a CPU
# (--object head|house|duck, --steps N), or with --smoke a smoke run on tiny models.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log="$(mktemp "${TMPDIR:-/tmp}/stabledreamer-install.XXXXXX")"
echo "Installing threestudio-stabledreamer and its dependencies (pip install -e $repo; log: $log) ..."
start=$SECONDS
python -m pip install -e "$repo" >"$log" 2>&1 &
pip_pid=$!
while kill -0 "$pip_pid" 2>/dev/null; do
  for _ in $(seq 20); do
    sleep 1
    kill -0 "$pip_pid" 2>/dev/null || break
  done
  if kill -0 "$pip_pid" 2>/dev/null; then
    echo "  still installing after $((SECONDS - start)) s: $(grep -E '^(Collecting|Processing|Downloading|Installing|Building|Using cached)' "$log" | tail -n 1 | cut -c1-100)"
  fi
done
if ! wait "$pip_pid"; then
  tail -n 30 "$log" >&2
  echo "pip install failed (full log: $log)" >&2
  exit 1
fi
echo "Installed in $((SECONDS - start)) s."
exec python -m threestudio_stabledreamer.run "$@"

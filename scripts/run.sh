#!/usr/bin/env bash
# Install this repository and run the main job (see README):
#   bash scripts/run.sh --prompt "a zoomed out DSLR photo of a corgi wearing a top hat" [--threestudio DIR]
# With a threestudio checkout (--threestudio or $THREESTUDIO_ROOT) and a CUDA GPU it sets the
# checkout up (stabledreamer-setup-threestudio) and runs configs/stabledreamer.yaml inside
# threestudio; otherwise the known-answer run on a CPU (--object head|house|duck, --steps N),
# or with --smoke a smoke run on tiny models. With a checkout the repository is installed
# under constraints/threestudio-0.2.3.txt, the pins threestudio 0.2.3 runs with.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
constraints=()
threestudio="${THREESTUDIO_ROOT:-}"
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --threestudio) next=$((i + 1)); threestudio="${!next:-}" ;;
    --threestudio=*) threestudio="${!i#--threestudio=}" ;;
  esac
done
if [[ -n "$threestudio" ]]; then
  constraints=(-c "$repo/constraints/threestudio-0.2.3.txt")
fi
log="$(mktemp "${TMPDIR:-/tmp}/stabledreamer-install.XXXXXX")"
echo "Installing threestudio-stabledreamer and its dependencies (pip install -e $repo; log: $log) ..."
start=$SECONDS
python -m pip install -e "$repo" "${constraints[@]}" >"$log" 2>&1 &
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

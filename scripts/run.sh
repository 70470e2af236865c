#!/usr/bin/env bash
# Install this repository and run the main job (see README):
#   bash scripts/run.sh --prompt "a zoomed out DSLR photo of a corgi wearing a top hat" [--threestudio DIR]
# With a threestudio checkout (--threestudio or $THREESTUDIO_ROOT) and a CUDA GPU it sets the
# checkout up (stabledreamer-setup-threestudio) and runs configs/stabledreamer.yaml inside
# threestudio; otherwise a CPU smoke run on tiny models. With a checkout the repository is
# installed under constraints/threestudio-0.2.3.txt, the pins threestudio 0.2.3 runs with.
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
python -m pip install --quiet -e "$repo" "${constraints[@]}"
exec python -m threestudio_stabledreamer.run "$@"

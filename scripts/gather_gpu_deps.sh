#!/usr/bin/env bash
# Gather, on a machine with network, what benchmarks/gpu_check.sh installs offline on a GPU
# machine (CPython 3.12, manylinux x86_64) into one folder (default .gpu-deps/, ignored by git):
#   wheels/                       the wheels listed in benchmarks/gpu_deps.txt (no dependencies
#                                 resolved: the list is explicit)
#   src/diff-gaussian-rasterization.tar.gz
#                                 graphdeco-inria's rasterizer source with the glm headers
#                                 (it is not on PyPI; built with nvcc on the GPU machine)
#
#   bash scripts/gather_gpu_deps.sh [--out DIR] [--dgr-git GIT_DIR] [--glm-git GIT_DIR] [--threestudio]
#
# --threestudio also gathers what the check's threestudio stage installs offline:
#   threestudio-wheels/           the wheels of benchmarks/threestudio_gpu_deps.txt (the set
#                                 stabledreamer-setup-threestudio resolves under
#                                 constraints/threestudio-0.2.3.txt, torch excluded)
#   src/threestudio.tar.gz        threestudio 0.2.3 from $THREESTUDIO_SOURCE
#                                 (default ../shared/threestudio beside the repository)
# That set is far larger than the 60 MiB the folder may hold when it travels with the
# working tree; it needs another way onto the GPU machine.
#
# --dgr-git / --glm-git (or $DGR_GIT / $GLM_GIT) are git directories of
# github.com/graphdeco-inria/diff-gaussian-rasterization and github.com/g-truc/glm (default:
# the mirrors under /work/.mirror). Without them, clone the source with its submodule:
#   git clone --recursive https://github.com/graphdeco-inria/diff-gaussian-rasterization
# and pass --dgr-git diff-gaussian-rasterization/.git --glm-git
# diff-gaussian-rasterization/.git/modules/third_party/glm. The folder must stay under
# 60 MiB (it travels with the working tree); the script fails when it does not.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/.gpu-deps"
dgr_git="${DGR_GIT:-/work/.mirror/graphdeco-inria+diff-gaussian-rasterization/repo}"
glm_git="${GLM_GIT:-/work/.mirror/g-truc+glm/repo}"
max_mib=60
threestudio=0
threestudio_source="${THREESTUDIO_SOURCE:-$repo/../shared/threestudio}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --dgr-git) dgr_git="$2"; shift 2 ;;
    --glm-git) glm_git="$2"; shift 2 ;;
    --threestudio) threestudio=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

rm -rf "$out/wheels" "$out/src"
mkdir -p "$out/wheels" "$out/src"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux2010_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
grep -v '^\s*#' "$repo/benchmarks/gpu_deps.txt" | awk 'NF {print $1}' | while read -r requirement; do
  echo "== wheel $requirement"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$out/wheels" "$requirement"
done

echo "== diff-gaussian-rasterization source from $dgr_git (glm headers from $glm_git)"
for git_dir in "$dgr_git" "$glm_git"; do
  if ! git --git-dir="$git_dir" rev-parse --verify -q HEAD >/dev/null; then
    echo "not a git directory with commits: $git_dir (see --help)" >&2; exit 1
  fi
done
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/diff-gaussian-rasterization/third_party/glm"
git --git-dir="$dgr_git" archive HEAD | tar -x -C "$staging/diff-gaussian-rasterization"
# the glm commit the rasterizer pins as its submodule, when the glm history has it
glm_commit="$(git --git-dir="$dgr_git" ls-tree HEAD third_party/glm | awk '{print $3}')"
git --git-dir="$glm_git" cat-file -e "${glm_commit}^{commit}" 2>/dev/null || glm_commit=HEAD
git --git-dir="$glm_git" archive "$glm_commit" glm copying.txt 2>/dev/null \
  | tar -x -C "$staging/diff-gaussian-rasterization/third_party/glm" \
  || git --git-dir="$glm_git" archive "$glm_commit" glm | tar -x -C "$staging/diff-gaussian-rasterization/third_party/glm"
printf 'diff-gaussian-rasterization %s\nglm %s\n' "$(git --git-dir="$dgr_git" rev-parse HEAD)" \
  "$(git --git-dir="$glm_git" rev-parse "$glm_commit")" > "$staging/diff-gaussian-rasterization/SOURCE-COMMITS"
tar -C "$staging" -czf "$out/src/diff-gaussian-rasterization.tar.gz" diff-gaussian-rasterization

if (( threestudio )); then
  echo "== threestudio: wheels of benchmarks/threestudio_gpu_deps.txt, source from $threestudio_source"
  if [[ ! -f "$threestudio_source/launch.py" ]]; then
    echo "THREESTUDIO_SOURCE='$threestudio_source' is not a threestudio checkout (no launch.py)" >&2; exit 1
  fi
  rm -rf "$out/threestudio-wheels"
  mkdir -p "$out/threestudio-wheels"
  sdists=()
  missing=()
  while read -r requirement; do
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$out/threestudio-wheels" "$requirement" 2>/dev/null; then
      # no CPython 3.12 wheel of that release: its source, built on the GPU machine
      if python3 -m pip download -q --no-deps --no-binary=:all: -d "$out/threestudio-wheels" "$requirement"; then
        sdists+=("$requirement")
      else
        missing+=("$requirement")
      fi
    fi
  done < <(grep -v '^\s*#' "$repo/benchmarks/threestudio_gpu_deps.txt" | awk 'NF {print $1}')
  if (( ${#sdists[@]} )); then
    echo "no CPython 3.12 wheel, source gathered instead (built there; tokenizers needs a Rust toolchain): ${sdists[*]}"
  fi
  tar -C "$(dirname "$threestudio_source")" -czf "$out/src/threestudio.tar.gz" \
    --transform "s,^$(basename "$threestudio_source"),threestudio," "$(basename "$threestudio_source")"
  ts_kib="$(du -sk "$out/threestudio-wheels" | awk '{print $1}')"
  echo "== $out/threestudio-wheels: $((ts_kib / 1024)) MiB ($(ls "$out/threestudio-wheels" | wc -l) wheels)"
  if (( ${#missing[@]} )); then
    echo "neither a CPython 3.12 wheel nor the source of: ${missing[*]}" >&2; exit 1
  fi
fi

size_kib="$(du -sk --exclude=threestudio-wheels "$out" | awk '{print $1}')"
ls -l "$out/wheels" "$out/src"
echo "== $out: $((size_kib / 1024)) MiB ($(ls "$out/wheels" | wc -l) wheels)"
if (( size_kib > max_mib * 1024 )); then
  echo "$out is over $max_mib MiB" >&2; exit 1
fi

#!/usr/bin/env bash
# Runs every benchmark, writes bench/results/latest.json and regenerates the bench tables of
# docs/performance.md from it:
#   bench/run.sh [--quick] [--no-build] [--only loader,train_step,training,sampling,scaling,checkpointing,fid]
# --quick finishes in a few minutes on 2 cores, the full run in under 30 minutes. Run it on a
# quiet machine: every figure is a min / median / max over repeats, but other load still shows.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=1
ARGS=()
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    *) ARGS+=("$a") ;;
  esac
done
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || { echo "$PYTHON not found: run launch/setup.sh first" >&2; exit 1; }
if ((BUILD)); then
  # The build lock shared with the other scripts of this tree.
  TARGETS=(difftrain h5shard bench_train_step bench_loader)
  grep -q "bench_grad_sync" bench/CMakeLists.txt && TARGETS+=(bench_grad_sync)
  flock /tmp/difftrain-ninja.lock ninja -C build -j2 "${TARGETS[@]}"
fi
# The demo's shards, for the loader, end-to-end, training, sampling and scaling sections (each
# says it was skipped without them).
launch/fashion_mnist_shards.sh ||
  echo "no Fashion-MNIST shards: the sections that need them skip" >&2
"$PYTHON" bench/run.py --python "$PYTHON" "${ARGS[@]}"
"$PYTHON" bench/update_readme.py bench/results/latest.json docs/performance.md

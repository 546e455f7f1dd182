#!/usr/bin/env bash
# The main job, one command: set up, convert Fashion-MNIST (Debian's dataset-fashion-mnist) into
# train/test shards, train configs/fashion_mnist.yaml on 2 MPI ranks for a bounded time, sample a
# grid with the EMA weights, measure the samples against the test images (launch/sample_quality.py),
# and evaluate bits/dim on the test shards.
#
#   launch/quickstart.sh               # about 10 minutes of training on 2 CPU cores
#   launch/quickstart.sh --minutes 60  # train longer (continues the same run: --resume auto)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MINUTES=10
RANKS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes M] [--ranks N]" >&2; exit 2 ;;
  esac
done

launch/setup.sh
launch/fashion_mnist_shards.sh

RUN=runs/fashion_mnist
SECONDS_LIMIT=$((MINUTES * 60))
echo "[quickstart] training $RUN on $RANKS ranks for $MINUTES minutes"
launch/local.sh "$RANKS" configs/fashion_mnist.yaml --resume auto \
  --set training.max_time="$SECONDS_LIMIT"

echo "[quickstart] sampling 256 images with the EMA weights (DPM-Solver++, 20 steps)"
mpirun_flags=(-np "$RANKS" --oversubscribe --bind-to none -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
mpirun "${mpirun_flags[@]}" build/difftrain sample --run "$RUN" --num 256 --sampler dpm++2m \
  --steps 20 --out "$RUN/samples"

echo "[quickstart] sample quality: Frechet distance, precision, recall in a Fashion-MNIST CNN's features"
# The CNN is trained once (about 80 s) and cached in runs/. It needs the project's .venv, which a
# build against a user's own LibTorch (LIBTORCH_DIR) does without.
if .venv/bin/python -c 'import torch, numpy' 2>/dev/null; then
  .venv/bin/python launch/sample_quality.py "$RUN/samples.npz" --json "$RUN/sample_quality.json"
else
  echo "[quickstart] skipped: launch/sample_quality.py needs .venv with torch and numpy (launch/setup.sh without LIBTORCH_DIR)"
fi

echo "[quickstart] bits/dim on 16 test images (the full bound: 1000 network evaluations per image)"
mpirun "${mpirun_flags[@]}" build/difftrain eval --run "$RUN" --data data/fashion_mnist/test \
  --num 16 --out "$RUN/eval.json"

echo
# The trainer's held-out estimate (logging.bpd_every): the untrained model at step 0, then the latest.
awk -F'"bpd_estimate":' 'NF > 1 { split($2, v, /[,}]/); match($0, /"step":[0-9]+/);
    step = substr($0, RSTART + 7, RLENGTH - 7); if (first == "") { first = v[1]; s0 = step }
    last = v[1]; s1 = step }
  END { if (first != "") printf "[quickstart] held-out bits/dim estimate while training: %.3f at step %s -> %.3f at step %s\n", first, s0, last, s1 }' \
  "$RUN/metrics.jsonl"
echo "[quickstart] done:"
echo "  samples:     $RUN/samples.png (also .h5, .npz); their quality: $RUN/sample_quality.json"
echo "  bits/dim:    $RUN/eval.json (per-t plot: $RUN/eval.png)"
echo "  metrics:     $RUN/metrics.jsonl, $RUN/timestep_metrics.jsonl"
echo "  checkpoints: $RUN/checkpoints/"

#!/usr/bin/env bash
# Figure 3 of the benchmarks: weak scaling on this machine and gradient-sync bandwidth.
#   bench/bench_scaling.sh [--quick] [--out FILE]     (default bench/results/scaling.json)
# Weak scaling of `difftrain train` on Fashion-MNIST with the demo config, one thread per rank:
#   a. 1 rank, per-rank batch b;
#   b. 2 ranks, global batch 2b (the same per-rank work, plus the gradient all-reduce);
#   c. the ceiling: 2 independent 1-rank processes at once (the same work, no communication; the
#      2 cores are shared, memory bandwidth too, so the ceiling itself is below 2x).
# Efficiency = b / (2 a) and, against the ceiling, b / c. Then bench_grad_sync: the reducer's
# bus bandwidth on the model's real gradients against raw MPI_Allreduce of the same bytes, and
# the hidden fraction of the all-reduce.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=build/difftrain
STEPS=40 REPEATS=7 OUT=bench/results/scaling.json
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) STEPS=12 REPEATS=3; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] && [ -x build/bench_grad_sync ] && [ -x build/h5shard ] ||
  { echo "build first: launch/setup.sh" >&2; exit 1; }
CONFIG=configs/fashion_mnist.yaml
launch/fashion_mnist_shards.sh  # the config reads the train and the test shards
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 --mca btl self,vader,tcp
  --mca btl_tcp_if_include lo -x OMP_NUM_THREADS -x OMP_WAIT_POLICY)
B=16
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
common() {  # run_dir global_batch
  echo --set training.max_steps=$STEPS --set training.batch_size="$2" --set training.threads=1 \
    --set training.max_time=0 --set training.checkpoint_every=100000 --set logging.run_dir="$1" \
    --set logging.log_every=$((STEPS / 4)) --set logging.bpd_every=0 --set logging.timestep_stats_every=0
}
# Mean images/s of the log lines after the first (start-up excluded).
ips() {
  awk -F'"images_per_s":' 'NF > 1 { split($2, v, /[,}]/); n++; if (n > 1) { s += v[1]; k++ } }
    END { printf "%.3f", k ? s / k : v[1] }' "$1/metrics.jsonl"
}
log() { printf '[bench_scaling] %s\n' "$*" >&2; }

log "1 rank x 1 thread, batch $B, $STEPS steps"
# shellcheck disable=SC2046
$BIN train --config $CONFIG $(common "$WORK/one" $B) >/dev/null 2>&1
one=$(ips "$WORK/one")
log "2 ranks x 1 thread, global batch $((2 * B))"
# shellcheck disable=SC2046
"${MPIRUN[@]}" -np 2 $BIN train --config $CONFIG $(common "$WORK/two" $((2 * B))) >/dev/null 2>&1
two=$(ips "$WORK/two")
log "2 independent 1-rank processes at once"
# shellcheck disable=SC2046
$BIN train --config $CONFIG $(common "$WORK/ind_a" $B) >/dev/null 2>&1 &
# shellcheck disable=SC2046
$BIN train --config $CONFIG $(common "$WORK/ind_b" $B) --set seed=1 >/dev/null 2>&1
wait
ceiling=$(awk -v a="$(ips "$WORK/ind_a")" -v b="$(ips "$WORK/ind_b")" 'BEGIN { printf "%.3f", a + b }')

log "gradient sync: bench_grad_sync on 2 ranks (demo model and CIFAR-10 model)"
# The models without data: the demo's 28x28 gray images, CIFAR-10's 32x32 RGB ones.
DEMO_SHAPE="--set model.image_size=28 --set model.in_channels=1"
"${MPIRUN[@]}" -np 2 build/bench_grad_sync --config $CONFIG $DEMO_SHAPE --repeats $REPEATS --bucket-mb 25 >"$WORK/sync_demo.json" 2>/dev/null
"${MPIRUN[@]}" -np 2 build/bench_grad_sync --config configs/cifar10_hybrid.yaml \
  --set model.image_size=32 --set model.in_channels=3 --batch 2 --repeats $REPEATS >"$WORK/sync_cifar.json" 2>/dev/null
# The demo model's 4.8 MB in 1 MB buckets: what training.bucket_mb does for overlap.
"${MPIRUN[@]}" -np 2 build/bench_grad_sync --config $CONFIG $DEMO_SHAPE --repeats $REPEATS --bucket-mb 1 >"$WORK/sync_demo_1mb.json" 2>/dev/null

mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "$one" "$two" "$ceiling" "$B" "$STEPS" "$WORK/sync_demo.json" "$WORK/sync_cifar.json" "$WORK/sync_demo_1mb.json" <<'PY'
import json, sys
out, one, two, ceiling, b, steps, demo, cifar, demo_1mb = sys.argv[1:]
one, two, ceiling = float(one), float(two), float(ceiling)
result = {
    "weak_scaling": {
        "config": "configs/fashion_mnist.yaml", "threads_per_rank": 1,
        "batch_per_rank": int(b), "steps": int(steps),
        "images_per_s_1_rank": one, "images_per_s_2_ranks": two,
        "images_per_s_2_independent": ceiling,
        "efficiency": two / (2 * one), "efficiency_vs_independent": two / ceiling,
    },
    "grad_sync": [json.load(open(p)) for p in (demo, demo_1mb, cifar)],
}
json.dump(result, open(out, "w"), indent=2)
w = result["weak_scaling"]
print(f"weak scaling: 1 rank {one:.1f} img/s, 2 ranks {two:.1f}, 2 independent {ceiling:.1f}: "
      f"efficiency {w['efficiency']:.0%}, {w['efficiency_vs_independent']:.0%} of the ceiling")
for s in result["grad_sync"]:
    print(f"grad sync {s['config']}: {s['gradient_mb']:.1f} MB in {s['buckets']} buckets, reducer busbw {s['reducer_busbw_gbs']:.2f} GB/s "
          f"vs raw {s['raw_busbw_gbs']:.2f} ({s['reducer_vs_raw_busbw']:.0%}), hidden {s['allreduce_hidden_fraction']:.0%}")
PY

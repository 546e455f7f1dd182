#!/usr/bin/env bash
# The scaling experiment: the same config for a fixed number of steps at each rank count, then a
# table (CSV + Markdown) and plots of images/s and scaling efficiency against ranks.
#
#   launch/scaling.sh [--steps S] [--strong] [--hostfile FILE] [--out DIR] CONFIG RANKS...
#
# Weak scaling (the default) keeps the per-rank batch of the config's training.batch_size at 1
# rank: N ranks train a global batch N times larger. --strong keeps the global batch. With
# --hostfile the ranks go to the hosts it lists (plain mpirun; see launch/hostfile.example),
# otherwise to this machine through launch/local.sh. Throughput is the mean images/s of the log
# lines after the first (which includes start-up and the first allocations), and so is the data
# wait of the slowest rank (metrics.jsonl's data_wait_max_ms).
# Writes DIR/scaling.csv, DIR/scaling.md, DIR/scaling.png (images/s, measured and ideal) and
# DIR/scaling_efficiency.png; DIR defaults to runs/scaling.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${DIFFTRAIN_BIN:-$ROOT/build/difftrain}
STEPS=60 MODE=weak HOSTFILE="" OUT=runs/scaling
usage() {
  echo "usage: $0 [--steps S] [--strong] [--hostfile FILE] [--out DIR] CONFIG RANKS..." >&2
  exit 2
}
while [[ $# -gt 0 && "$1" == --* ]]; do
  case $1 in
    --steps) STEPS=$2; shift 2 ;;
    --strong) MODE=strong; shift ;;
    --hostfile) HOSTFILE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ $# -ge 2 ] || usage
CONFIG=$1
shift
RANKS=("$@")
[ -x "$BIN" ] || { echo "$BIN not found: run launch/setup.sh first" >&2; exit 1; }
[ -f "$CONFIG" ] || { echo "$CONFIG: no such config file" >&2; exit 2; }
for n in "${RANKS[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "rank count '$n' is not a positive integer" >&2; exit 2; }
done

# The config's batch, as resolved (defaults and all), from the binary itself.
BATCH=$("$BIN" train --config "$CONFIG" --print-config | awk '/^training:/{t=1} t && /batch_size:/{print $2; exit}')
LOG_EVERY=$(( STEPS / 6 > 0 ? STEPS / 6 : 1 ))
mkdir -p "$OUT"
CSV=$OUT/scaling.csv
echo "ranks,global_batch,images_per_s,images_per_s_per_rank,ideal_images_per_s,speedup,efficiency,data_wait_max_ms" >"$CSV"
# The mean of KEY over the metrics lines of FILE after the first (which holds the start-up), or
# the first alone.
mean_after_first() {
  awk -F"\"$1\":" 'NF > 1 { split($2, v, /[,}]/); n++; if (n > 1) { s += v[1]; k++ } }
    END { if (k) printf "%.2f", s / k; else if (n) printf "%.2f", v[1]; else print "nan" }' "$2"
}
base=""
for n in "${RANKS[@]}"; do
  global=$BATCH
  [ "$MODE" = weak ] && global=$((BATCH * n))
  run=$OUT/ranks_$n
  rm -rf "$run"
  args=(--set training.max_steps="$STEPS" --set training.batch_size="$global"
    --set training.max_time=0 --set training.checkpoint_every=$((STEPS + 1))
    --set logging.run_dir="$run" --set logging.log_every="$LOG_EVERY"
    --set logging.bpd_every=0 --set logging.timestep_stats_every=0)
  echo "== $n rank(s), global batch $global, $STEPS steps" >&2
  if [ -n "$HOSTFILE" ]; then
    root_flag=()
    [ "$(id -u)" -eq 0 ] && root_flag=(--allow-run-as-root)
    mpirun "${root_flag[@]}" --hostfile "$HOSTFILE" -np "$n" -x PATH -x OMP_NUM_THREADS \
      -x NCCL_SOCKET_IFNAME -x NCCL_IB_HCA "$BIN" train --config "$CONFIG" "${args[@]}" >&2
  else
    "$ROOT/launch/local.sh" "$n" "$CONFIG" "${args[@]}" >&2
  fi
  ips=$(mean_after_first images_per_s "$run/metrics.jsonl")
  wait=$(mean_after_first data_wait_max_ms "$run/metrics.jsonl")
  [ -z "$base" ] && base=$(awk -v ips="$ips" -v n="$n" 'BEGIN { printf "%.4f", ips / n }')
  awk -v n="$n" -v g="$global" -v ips="$ips" -v base="$base" -v wait="$wait" 'BEGIN {
    ideal = base * n  # N x the per-rank rate of the first count
    printf "%d,%d,%.2f,%.2f,%.2f,%.3f,%.3f,%s\n", n, g, ips, ips / n, ideal, ips / base, ips / ideal, wait
  }' >>"$CSV"
done
# speedup: images/s over the first count's images/s per rank (1.0 for 1 rank when it comes first).
{
  echo "| ranks | global batch | images/s | images/s per rank | ideal | speedup | efficiency | data wait, slowest rank (ms/step) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
  tail -n +2 "$CSV" | awk -F, '{ printf "| %s | %s | %s | %s | %s | %s | %.0f%% | %s |\n", $1, $2, $3, $4, $5, $6, 100 * $7, $8 }'
} >"$OUT/scaling.md"
"$BIN" plot --csv "$CSV" --x ranks --y images_per_s --y ideal_images_per_s \
  --title "images/s (blue) and ideal (orange) against ranks, $MODE scaling" --out "$OUT/scaling.png" >&2
"$BIN" plot --csv "$CSV" --x ranks --y efficiency \
  --title "scaling efficiency against ranks, $MODE scaling" --out "$OUT/scaling_efficiency.png" >&2
cat "$OUT/scaling.md"
echo "wrote $CSV, $OUT/scaling.md, $OUT/scaling.png, $OUT/scaling_efficiency.png" >&2

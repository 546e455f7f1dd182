#!/usr/bin/env bash
# Improved DDPM's likelihood findings at small scale (docs/reproduce.md): six objectives trained
# on Fashion-MNIST (28x28, unpadded) for the same wall time each on 2 MPI ranks x 1 thread, the
# EMA length of each chosen by a post-hoc EMA sweep on validation images, the full bound of each
# on the same test images with the same noise, and the report docs/results.md.
#
#   launch/reproduce.sh                   # the whole experiment, about 80 minutes on 2 cores
#   launch/reproduce.sh --runs c,f --seed 1   # two of the runs again with another training seed
#
# Options (defaults in brackets):
#   --minutes M         training wall time of each run [9]
#   --eval-images N     test images of the full bound per run [50]
#   --sweep-images V    validation images per point of the EMA sweep [12]
#   --sweep LO:HI:K     the sigma_rel values of the sweep [0.03:0.15:4]
#   --runs LIST         which runs, e.g. a,b,c [a,b,c,d,e,f]
#   --seed S            the training seed; S > 0 trains into RUN_seedS [0]
#   --out DIR           where the runs go [runs/reproduce]
#   --report FILE       the report (and FILE's stem + _heldout_bpd.png) [docs/results.md]
#   --set KEY=VALUE     one more training override for every run (repeatable), e.g. for a quick
#                       check: --minutes 0.2 --set diffusion.steps=50
#   --no-setup          skip launch/setup.sh (the build exists; DIFFTRAIN_BIN and H5SHARD_BIN
#                       name the binaries, default build/difftrain and build/h5shard)
#
# Idempotent: a step whose outputs exist and were made by the same command is skipped (a stamp
# file beside them records the command), so a second run only does what is missing. A finished
# training run made by another command is refused rather than overwritten; an unfinished one
# (stopped before the end) is trained again from scratch, since a resumed run would get more
# than its share of wall time.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${DIFFTRAIN_BIN:-$ROOT/build/difftrain}
H5SHARD=${H5SHARD_BIN:-$ROOT/build/h5shard}
SETUP=1

MINUTES=9 EVAL_IMAGES=50 SWEEP_IMAGES=12 SWEEP=0.03:0.15:4 RUNS=a,b,c,d,e,f SEED=0
OUT=runs/reproduce REPORT=docs/results.md
EXTRA=()
# The test images and their noise, and the validation images of the sweep: the same for every run
# and every training seed, so that runs compare image by image.
EVAL_SEED=1
RANKS=2

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "reproduce.sh: $*" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  if [ "$1" = --no-setup ]; then
    SETUP=0
    shift
    continue
  fi
  [ $# -ge 2 ] || usage
  case $1 in
    --minutes) MINUTES=$2 ;;
    --eval-images) EVAL_IMAGES=$2 ;;
    --sweep-images) SWEEP_IMAGES=$2 ;;
    --sweep) SWEEP=$2 ;;
    --runs) RUNS=$2 ;;
    --seed) SEED=$2 ;;
    --out) OUT=$2 ;;
    --report) REPORT=$2 ;;
    --set) EXTRA+=(--set "$2") ;;
    *) usage ;;
  esac
  shift 2
done
[[ "$MINUTES" =~ ^[0-9]*\.?[0-9]+$ ]] && awk -v m="$MINUTES" 'BEGIN { exit !(m > 0) }' ||
  die "--minutes '$MINUTES' must be a positive number"
[[ "$EVAL_IMAGES" =~ ^[1-9][0-9]*$ ]] || die "--eval-images '$EVAL_IMAGES' must be a positive integer"
[[ "$SWEEP_IMAGES" =~ ^[1-9][0-9]*$ ]] || die "--sweep-images '$SWEEP_IMAGES' must be a positive integer"
[[ "$SEED" =~ ^[0-9]+$ ]] || die "--seed '$SEED' must be a non-negative integer"
[[ "$RUNS" =~ ^[a-f](,[a-f])*$ ]] || die "--runs '$RUNS' must be a comma-separated list of a-f"
[[ "$REPORT" == *.md ]] || die "--report '$REPORT' must be a .md file"
SECONDS_EACH=$(awk -v m="$MINUTES" 'BEGIN { printf "%.0f", m * 60 }')
((SECONDS_EACH >= 1)) || die "--minutes $MINUTES is less than a second"

# The runs: the objective keys each sets on top of configs/fashion_mnist.yaml (cosine schedule,
# learned_range variance, hybrid loss, uniform timesteps).
declare -A OBJECTIVE=(
  [a]="diffusion.loss=simple diffusion.model_var_type=fixed_small"
  [b]="diffusion.loss=simple diffusion.model_var_type=fixed_large"
  [c]="diffusion.loss=hybrid diffusion.model_var_type=learned_range diffusion.schedule=cosine"
  [d]="diffusion.loss=hybrid diffusion.model_var_type=learned_range diffusion.schedule=linear"
  [e]="diffusion.loss=vlb diffusion.model_var_type=learned_range diffusion.timestep_sampler=uniform"
  [f]="diffusion.loss=vlb diffusion.model_var_type=learned_range diffusion.timestep_sampler=loss-second-moment"
)
declare -A NAME=([a]=a_simple_fixed_small [b]=b_simple_fixed_large [c]=c_hybrid_cosine
  [d]=d_hybrid_linear [e]=e_vlb_uniform [f]=f_vlb_importance)

MPI_FLAGS=(-np "$RANKS" --oversubscribe -x OMP_NUM_THREADS=1 -x MKL_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE
  --bind-to none --mca btl self,vader,tcp --mca btl_tcp_if_include lo)
[ "$(id -u)" -eq 0 ] && MPI_FLAGS+=(--allow-run-as-root)

START=$SECONDS
say() { printf '[reproduce %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# timed WHAT CMD...: runs CMD, then says how long WHAT took.
timed() {
  local what=$1 t0=$SECONDS
  shift
  say "$what"
  "$@"
  say "$what: done in $((SECONDS - t0)) s"
}
# once STAMP WHAT CMD...: timed, unless STAMP records this very command (then skipped); after
# success records it, and its wall time in STAMP.seconds for the report. RAN says whether it ran.
once() {
  local stamp=$1 what=$2 t0=$SECONDS
  shift 2
  RAN=0
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ]; then
    say "$what: already done (delete $stamp to redo it)"
    return
  fi
  rm -f "$stamp" "$stamp.seconds"
  timed "$what" "$@"
  echo "$*" >"$stamp"
  echo $((SECONDS - t0)) >"$stamp.seconds"
  RAN=1
}
# logged LOG CMD...: runs CMD with its output in LOG; on failure shows LOG's end.
logged() {
  local log=$1
  shift
  mkdir -p "$(dirname "$log")"
  "$@" >"$log" 2>&1 || {
    local rc=$?
    tail -n 20 "$log" >&2
    echo "reproduce.sh: failed (exit code $rc): $* (log: $log)" >&2
    return $rc
  }
}
# The machine and how busy it was, for the report: every figure should come from a quiet one.
machine() {
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "cores: $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
  echo "avx512_bf16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

((SETUP == 0)) || timed "setup and build (launch/setup.sh)" launch/setup.sh >/dev/null

# Data: the test split as the quickstart converts it, and the training split divided into 55,000
# training and 5,000 validation images (the validation ones pick the EMA length and give the
# held-out curve while training; the test images are used only for the final numbers).
FMNIST=/usr/share/datasets/fashion-mnist
TEST=data/fashion_mnist/test
TRAIN=data/fashion_mnist/train55k
VALIDATION=data/fashion_mnist/validation5k
HOLDOUT=(--format idx --input "$FMNIST" --holdout 0.0833333333333 --holdout-seed 0 --quiet)
[ -f "$TEST/manifest.json" ] || timed "converting the test split into $TEST" \
  "$H5SHARD" convert --format idx --split test --input "$FMNIST" --out "$TEST" --shards 1 --quiet
[ -f "$TRAIN/manifest.json" ] || timed "converting 55,000 training images into $TRAIN" \
  "$H5SHARD" convert "${HOLDOUT[@]}" --split train --out "$TRAIN" --shards 4
[ -f "$VALIDATION/manifest.json" ] || timed "converting 5,000 validation images into $VALIDATION" \
  "$H5SHARD" convert "${HOLDOUT[@]}" --split test --out "$VALIDATION" --shards 1 --name validation

mkdir -p "$OUT"
IFS=, read -r -a CHOSEN <<<"$RUNS"
say "runs ${CHOSEN[*]} (training seed $SEED): $MINUTES min of training each, EMA sweep $SWEEP on" \
  "$SWEEP_IMAGES validation images, the bound on $EVAL_IMAGES test images; into $OUT"
for r in "${CHOSEN[@]}"; do
  run=$OUT/${NAME[$r]}
  ((SEED == 0)) || run=${run}_seed$SEED
  overrides=()
  for kv in ${OBJECTIVE[$r]}; do overrides+=(--set "$kv"); done
  # Held-out estimates every 100 steps (about 3 % of the time), post-hoc EMA snapshots every 50,
  # one checkpoint at the end; the per-t statistics every 100 steps show importance sampling at
  # work in run f.
  train=(logged "$run/train.log" launch/local.sh "$RANKS" configs/fashion_mnist.yaml "${overrides[@]}"
    --set seed="$SEED" --set data.train="$TRAIN/manifest.json"
    --set data.validation="$VALIDATION/manifest.json" --set training.max_time="$SECONDS_EACH"
    --set training.max_steps=0 --set training.checkpoint_every=1000000
    --set training.keep_checkpoints=1 --set training.phema.snapshot_every=50
    --set logging.run_dir="$run" --set logging.log_every=20 --set logging.timestep_stats_every=100
    --set logging.bpd_every=100 --set logging.bpd_batch=32 --set logging.bpd_timesteps=16
    "${EXTRA[@]}")
  stamp=$run/trained.cmd
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "${train[*]}" ]; then
    die "$run was trained by another command ($stamp); use another --out, or delete $run"
  fi
  if [ ! -f "$stamp" ] && [ -e "$run" ]; then
    say "$run is unfinished (no $stamp): training it again from scratch"
    rm -rf "$run"
  fi
  once "$stamp" "run $r: training $run for $MINUTES min (log: $run/train.log)" "${train[@]}"
  ((RAN == 0)) || machine | sed 's/^/after training: /' >"$run/machine.txt"

  # The EMA length: the sigma_rel of the sweep with the lowest bound on the validation images;
  # its reconstruction is the run's model from here on.
  mkdir -p "$run/eval"
  once "$run/eval/ema.cmd" "run $r: post-hoc EMA sweep $SWEEP on $SWEEP_IMAGES validation images" \
    mpirun "${MPI_FLAGS[@]}" "$BIN" phema --run "$run" --sweep "$SWEEP" --eval "$VALIDATION" \
    --num "$SWEEP_IMAGES" --seed "$EVAL_SEED" --report "$run/eval/ema_sweep.csv" \
    --out "$run/eval/ema.pt"
  ((RAN == 0)) || rm -f "$run/eval/test.cmd" # a new EMA model: evaluate it again
  once "$run/eval/test.cmd" "run $r: the full bound on $EVAL_IMAGES test images" \
    mpirun "${MPI_FLAGS[@]}" "$BIN" eval --checkpoint "$run/eval/ema.pt" --data "$TEST" \
    --num "$EVAL_IMAGES" --seed "$EVAL_SEED" --out "$run/eval/test.json"
done

timed "writing $REPORT" python3 launch/reproduce_report.py --runs "$OUT" --report "$REPORT" \
  --bin "$BIN"
say "all done in $(((SECONDS - START) / 60)) min $(((SECONDS - START) % 60)) s"

#!/usr/bin/env bash
# Trains on this machine with N MPI ranks:
#   launch/local.sh N CONFIG [difftrain train options, e.g. --set training.max_steps=100 --resume auto]
#   DIFFTRAIN_COMMAND=train-classifier launch/local.sh N CONFIG ...   (a noisy classifier)
# Sets the flags a single machine needs: oversubscription when N exceeds the cores, no core
# binding then (ranks would share one core), one LibTorch thread per core share, and
# --allow-run-as-root when run as root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 2 ]; then
  echo "usage: $0 N CONFIG [difftrain train options...]" >&2
  exit 2
fi
N=$1
CONFIG=$2
shift 2
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "$0: N must be a number of ranks >= 1, not '$N'" >&2; exit 2; }
BIN=${DIFFTRAIN_BIN:-$ROOT/build/difftrain}
[ -x "$BIN" ] || { echo "$BIN not found: run launch/setup.sh first" >&2; exit 1; }

CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc alone honours OMP_NUM_THREADS
THREADS=$((CORES / N))
((THREADS >= 1)) || THREADS=1
FLAGS=(-np "$N" -x OMP_NUM_THREADS="$THREADS" -x MKL_NUM_THREADS="$THREADS" -x OMP_WAIT_POLICY=PASSIVE)
if ((N > CORES)); then
  FLAGS+=(--oversubscribe --bind-to none --mca mpi_yield_when_idle 1)
else
  FLAGS+=(--bind-to none)
fi
[ "$(id -u)" -eq 0 ] && FLAGS+=(--allow-run-as-root)
# Loopback TCP and shared memory only: a laptop or a single node needs no network setup.
FLAGS+=(--mca btl self,vader,tcp --mca btl_tcp_if_include lo)

exec mpirun "${FLAGS[@]}" "$BIN" "${DIFFTRAIN_COMMAND:-train}" --config "$CONFIG" --set training.threads="$THREADS" "$@"

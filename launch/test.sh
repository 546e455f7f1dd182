#!/usr/bin/env bash
# Sets everything up (launch/setup.sh: packages, torch wheel, build) and runs the test suite.
# Idempotent: on a ready machine it only rebuilds what changed and runs the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/launch/setup.sh"
cd "${BUILD_DIR:-$ROOT/build}"
# As many tests side by side as there are cores (nproc alone would honour OMP_NUM_THREADS, set
# next, and run them one at a time). Tests that start several MPI ranks are marked RUN_SERIAL.
jobs=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
# One LibTorch thread each, and idle OpenMP threads that sleep rather than spin, or the tests
# fight over the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ctest --output-on-failure -j "$jobs" "$@"

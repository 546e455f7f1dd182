#!/usr/bin/env bash
# Sets everything up (launch/setup.sh: packages, torch wheel, build) and runs the test suite.
# Idempotent: on a ready machine it only rebuilds what changed and runs the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/launch/setup.sh"
cd "${BUILD_DIR:-$ROOT/build}"
# ctest runs tests side by side: one LibTorch thread each, and idle OpenMP threads that sleep
# rather than spin, or the tests fight over the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# Tests that start several MPI ranks are marked RUN_SERIAL; the rest share the cores.
ctest --output-on-failure -j "$(nproc)" "$@"

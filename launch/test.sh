#!/usr/bin/env bash
# Sets everything up (launch/setup.sh: packages, torch wheel, build) and runs the test suite.
# Idempotent: on a ready machine it only rebuilds what changed and runs the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/launch/setup.sh"
cd "${BUILD_DIR:-$ROOT/build}"
# Tests that start several MPI ranks are marked RUN_SERIAL; the rest share the cores.
ctest --output-on-failure -j "$(nproc)" "$@"

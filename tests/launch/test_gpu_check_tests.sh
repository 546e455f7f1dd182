#!/usr/bin/env bash
# The GPU check's tests part (launch/gpu_check.sh __part tests) and its records, on a CTest
# project made here: one `cuda` test passes, one fails, and one passes only with NCCL's cuMem
# allocator off. The part gives what failed one more try with NCCL_CUMEM_ENABLE=0 and
# NCCL_DEBUG=INFO; the records say which test passed only then, and the part still fails. The
# collectives run for real: this build's test_parallel_mpi under mpirun with 1 and 2 ranks (the
# check's prefix is this machine's /usr).
#   tests/launch/test_gpu_check_tests.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SUITE_BUILD=$(realpath "$1")
WORK=$(mktemp -d /tmp/difftrain_test_gpu_check_tests.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

mkdir -p "$WORK/logs" "$WORK/records" "$WORK/build/tests/parallel" "$WORK/prefix"
ln -s /usr "$WORK/prefix/usr"
ln -s "$SUITE_BUILD/tests/parallel/test_parallel_mpi" "$WORK/build/tests/parallel/"
cat >"$WORK/build/CTestTestfile.cmake" <<'CTEST'
add_test(Cuda.Passes "true")
add_test(Cuda.PassesWithoutCuMem "sh" "-c" "test \"$NCCL_CUMEM_ENABLE\" = 0")
add_test(Cuda.AlwaysFails "false")
set_tests_properties(Cuda.Passes Cuda.PassesWithoutCuMem Cuda.AlwaysFails PROPERTIES LABELS "cuda")
add_test(Other.NotACudaTest "false")
CTEST

export ROOT WORK MODE=cpu PYTHON=python3 BUNDLE=$WORK/no-bundle BUDGET_LEFT=300 OUT=$WORK/out
unset NCCL_CUMEM_ENABLE
rc=0
"$ROOT/launch/gpu_check.sh" __part tests >"$WORK/tests.log" 2>&1 || rc=$?
cat "$WORK/tests.log"
((rc != 0)) || fail "the part passed although a test failed twice"
grep -q "the failed tests again, with NCCL_CUMEM_ENABLE=0 NCCL_DEBUG=INFO" "$WORK/tests.log" ||
  fail "no retry"
[ -s "$WORK/logs/tests_retry.log" ] || fail "no tests_retry.log"

python3 - "$WORK/records" <<'PY' || fail "the records (above)"
import json, os, sys
records = sys.argv[1]
cuda = json.load(open(os.path.join(records, "cuda_tests.json")))
nccl = json.load(open(os.path.join(records, "nccl.json")))
print(json.dumps(cuda, indent=1))
tests = {t["name"]: t for t in cuda["tests"]}
assert set(tests) == {"Cuda.Passes", "Cuda.PassesWithoutCuMem", "Cuda.AlwaysFails"}, tests
assert tests["Cuda.Passes"]["status"] == "passed" and "first_try" not in tests["Cuda.Passes"]
retried = tests["Cuda.PassesWithoutCuMem"]
assert retried["status"] == "passed" and retried["first_try"] == "failed", retried
assert retried["retry_env"] == "NCCL_CUMEM_ENABLE=0 NCCL_DEBUG=INFO", retried
assert tests["Cuda.AlwaysFails"]["status"] == "failed", tests["Cuda.AlwaysFails"]
assert tests["Cuda.AlwaysFails"]["first_try"] == "failed"
assert cuda["counts"] == {"passed": 2, "failed": 1, "skipped": 0, "passed_on_retry": 1}, cuda
assert cuda["status"] == "failed"
# The collectives and the RankDevice tests ran under mpirun, one report per rank, and needed no
# retry.
ranks = sorted({t["name"].rsplit("[", 1)[1] for t in nccl["tests"]})
assert any(t["name"].startswith("RankDevice.") for t in nccl["tests"]), nccl["tests"]
assert ranks == ["ranks1_rank0]", "ranks2_rank0]", "ranks2_rank1]"], ranks
assert nccl["counts"]["failed"] == 0 and nccl["counts"]["passed"] > 0, nccl["counts"]
assert all("first_try" not in t for t in nccl["tests"])
PY
echo "PASSED"

#!/usr/bin/env bash
# The GPU check's bench part (launch/gpu_check.sh __part bench) as its --cpu run makes it, on this
# build: bench_train_step exports the CIFAR-10 model's weights and batch, the PyTorch baseline
# counts the FLOPs and passes its same-computation check (plain and tuned), difftrain's step is
# timed and traced through the Kineto profiler's path, then its variants (the other memory layout,
# cuDNN's heuristics, gradient checkpointing), and gpu_check_report.py turns the JSON
# files into the summary's bench record (images/s, ratios, MFU, the trace's summary). What the GPU
# run would report is checked for being there and sane, not for its values.
#   tests/launch/test_gpu_check_bench.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=$(realpath "$1")
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || { echo "SKIP: no $PY (launch/setup.sh makes it)"; exit 77; }
WORK=$(mktemp -d /tmp/difftrain_test_gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

# The part's environment, as the driver of gpu_check.sh sets it, with this build as the check's.
mkdir -p "$WORK/logs" "$WORK/records"
ln -s "$BUILD" "$WORK/build"
export ROOT WORK MODE=cpu PYTHON=$PY BUNDLE=$WORK/no-bundle BUDGET_LEFT=600 OUT=$WORK/out
"$ROOT/launch/gpu_check.sh" __part bench >"$WORK/bench.log" 2>&1 ||
  { cat "$WORK/bench.log"; fail "the bench part exited $?"; }
"$PY" "$ROOT/launch/gpu_check_report.py" merge "$WORK" "$WORK/out"

"$PY" - "$WORK" <<'PY' || fail "the bench record (above)"
import json, os, sys
work = sys.argv[1]
summary = json.load(open(os.path.join(work, "out", "summary.json")))
bench = summary["parts"]["bench"]
print(json.dumps(bench, indent=1)[:3000])
runs = bench["runs"]["fp32"]
assert bench["forward_flops_per_image"] > 16e9, "the CIFAR-10 model's forward is 16.8 GFLOP"
for impl in ("difftrain", "pytorch_plain", "pytorch_tuned"):
    rate = runs[impl]["images_per_s"]
    assert rate > 0, impl
    # 3 x forward FLOPs per image against the H200's 989 TFLOP/s, rounded to 5 decimals.
    mfu = 3 * bench["forward_flops_per_image"] * rate / 989e12
    assert abs(runs[impl]["mfu"] - mfu) <= 1e-5 + 1e-2 * mfu, (impl, runs[impl]["mfu"], mfu)
for impl in ("pytorch_plain", "pytorch_tuned"):
    check = runs[impl]["same_computation_check"]
    assert check["ok"], f"{impl} computes another step than difftrain's: {check}"
assert runs["ratio_vs_plain"] > 0 and runs["ratio_vs_tuned"] > 0
# What the published tables say of the step: its batch, model size, timing and phases.
assert bench["batch"] == 2 and 52e6 < bench["parameters"] < 53e6, bench
# The phases in a repeat of their own (the GPU's way), so that the timed steps run unsynchronised.
assert bench["timing"] == {"warmup": 0, "repeats": 1, "steps_per_repeat": 1,
                           "phase_timing": "separate"}, bench["timing"]
for impl in ("difftrain", "pytorch_plain", "pytorch_tuned"):
    phases = runs[impl]["phases_ms"]
    assert phases["forward"] > 0 and phases["backward"] > 0 and phases["optimizer"] > 0, phases
    assert "all_reduce" not in phases, "an untimed phase (null) is left out"
trace = runs["difftrain"]["cuda_trace"]
assert trace["steps"] == 3 and trace["wall_ms_per_step"] > 0, trace
assert trace["gpu_busy_ms_per_step"] == 0, "the CPU has no GPU activity"
events = json.load(open(os.path.join(work, "logs", "bench", "fp32_difftrain_trace.json")))
assert len(events["traceEvents"]) > 100, "the Chrome trace has the step's ops"
# The variants, each against the default step: in fp32 the other layout is channels-last.
layout = bench["runs"]["other_layout_fp32"]
assert layout["channels_last"] and not layout["default_channels_last"], layout
assert layout["images_per_s"] > 0 and layout["speed_vs_default"] > 0, layout
fused = bench["runs"]["fused_group_norm_fp32"]
assert fused["fused_group_norm"], fused
assert fused["channels_last"] == layout["default_channels_last"], (fused, layout)
assert fused["images_per_s"] > 0 and fused["speed_vs_default"] > 0, fused
assert bench["runs"]["checkpointed_fp32"]["images_per_s"] > 0
assert bench["runs"]["cudnn_heuristics_fp32"]["images_per_s"] > 0
PY
echo "PASSED"

#!/usr/bin/env bash
# bench/publish_gpu_check.py on the summary of a GPU check made by the check's own report
# (launch/gpu_check_report.py: machine, tests, bench, real_run, merge) from the files each part
# leaves on a GPU machine: JUnit files, bench_train_step's and the baseline's JSON, a run's
# metrics. nvidia-smi is a script that names an H200. The summary is kept under its date and GPU,
# its figures land in copies of docs/performance.md and README.md between the markers and
# nowhere else, what they decide is said, a newer check replaces an older one, rendering twice
# changes nothing, and a --cpu run's or a foreign file is refused. Last, the repository's own
# docs are what the script renders from bench/results/.
#   tests/launch/test_publish_gpu_check.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/difftrain_test_publish_gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
REPORT="$ROOT/launch/gpu_check_report.py"
PUBLISH="$ROOT/bench/publish_gpu_check.py"

# make_check DIR STARTED BF16_RATE: a GPU check's work directory and its summary.json in DIR/out.
make_check() {
  local dir=$1 started=$2 bf16_rate=$3
  mkdir -p "$dir/logs/bench" "$dir/records" "$dir/run" "$dir/bin"
  cat >"$dir/bin/nvidia-smi" <<'SMI'
#!/bin/sh
case "$*" in
  *compute_mode*) echo "Default, Disabled" ;;
  *) echo "NVIDIA H200, 143771 MiB, 580.95.05" ;;
esac
SMI
  chmod +x "$dir/bin/nvidia-smi"
  echo "{\"mode\": \"gpu\", \"budget_s\": 540, \"started\": \"$started\"," \
    "\"commit\": \"abc1234\", \"finished\": \"$started\", \"total_s\": 512}" \
    >"$dir/records/check.json"
  PATH=$dir/bin:$PATH python3 "$REPORT" machine "$dir" >/dev/null
  for part in setup:38 build:171 tests:64 bench:151 real_run:88; do
    python3 "$REPORT" status "$dir" "${part%:*}" passed "${part#*:}"
  done
  python3 - "$dir" "$bf16_rate" <<'PY'
import json, os, sys
d, bf16_rate = sys.argv[1], float(sys.argv[2])
logs = os.path.join(d, "logs")
case = '<testcase name="{}" classname="{}" time="1.5"{}>'
with open(os.path.join(logs, "ctest_cuda.xml"), "w") as f:
    f.write('<testsuite>' + case.format("Cuda.TrainingStepMatchesTheCpuInFp32", "x", "/") +
            case.format("Cuda.FusedGroupNormKernelsMatchTheReference", "x", "/") +
            case.format("Cuda.Fp16LossScalerSeesARealOverflowAndRecovers", "x", "") +
            '<failure message="scale never fell"/></testcase></testsuite>')
with open(os.path.join(logs, "collectives_ranks2_rank0.xml"), "w") as f:
    f.write('<testsuites><testsuite>' + case.format("AllReduceSumAvgMaxMin/cuda", "Collectives",
                                                    "/") + '</testsuite></testsuites>')
def stat(v):
    return {"min": v, "median": v, "max": v, "values": [v]}
def step(rate, memory, channels_last, fused=False, check=None, trace=None):
    j = {"images_per_s": stat(rate), "step_ms": stat(128e3 / rate), "batch": 128,
         "parameters": 52546438, "warmup": 3, "repeats": 3, "steps_per_repeat": 10,
         "phase_timing": "separate",
         "cuda_peak_allocated_mb": memory,
         "breakdown_ms": {"forward": stat(10.0), "backward": stat(20.0), "optimizer": stat(1.5),
                          "ema": stat(0.5), "all_reduce": None},
         "model": {"channels_last": channels_last, "fused_group_norm": fused}}
    if check:
        j["check"] = {"same_precision_as_export": True, "ok": True, "loss_rel_diff": 2e-7,
                      "grad_norm_rel_diff": 3e-6, "tolerance": 1e-4}
    if trace:
        j["cuda_trace"] = trace
    return j
trace = {"steps": 3, "wall_ms_per_step": 40.0, "gpu_busy_ms_per_step": 30.0,
         "gpu_busy_fraction": 0.75, "gpu_activities_per_step": 2100.0,
         "top_gpu_activities": [{"name": "sm90_xmma_fprop_implicit_gemm_bf16|nhwc",
                                 "ms_per_step": 9.25, "count_per_step": 180}]}
files = {
    "flops.json": {"forward_flops_per_image": 16773414912},
    "bf16_difftrain.json": step(bf16_rate, 20000.0, True, trace=trace),
    "bf16_pytorch_plain.json": step(bf16_rate / 1.5, 30000.0, False, check=True),
    "bf16_pytorch_tuned.json": step(bf16_rate / 1.1, 21000.0, True, check=True),
    # A profiler that failed on the machine (no CUPTI access, say) costs the trace only.
    "fp32_difftrain.json": step(1500.0, 36000.0, False,
                                trace={"error": "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES"}),
    "fp32_pytorch_plain.json": step(1400.0, 40000.0, False, check=True),
    "fp32_pytorch_tuned.json": step(1450.0, 37000.0, True, check=True),
    # channels-first 10 % faster; the fused GroupNorm 20 % faster in 0.8x the memory.
    "layout_bf16_difftrain.json": step(bf16_rate * 1.1, 21000.0, False),
    "fused_bf16_difftrain.json": step(bf16_rate * 1.2, 16000.0, True, fused=True),
    "checkpointed_bf16_difftrain.json": step(bf16_rate * 0.8, 9000.0, True),
}
for name, j in files.items():
    json.dump(j, open(os.path.join(logs, "bench", name), "w"))
lines = [{"step": 0, "bpd_estimate": 7.06, "bpd_standard_error": 0.15}]
lines += [{"step": s, "images_per_s": 900.0 + s, "step_time_ms": 35.0, "data_wait_max_ms": 0.4,
           "loss": 1.0 / (1 + s), "device_peak_allocated_mb": 812.0} for s in (20, 40, 60)]
with open(os.path.join(d, "run", "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(j) + "\n" for j in lines)
json.dump({"step": 60, "ema_rate": 0.999, "num_images": 256, "total_bpd": 4.48,
           "total_bpd_stderr": 0.05, "prior_bpd": 0.0, "decoder_bpd": 1.3, "terms_bpd": 3.18,
           "seconds": 9.5}, open(os.path.join(d, "run", "eval.json"), "w"))
PY
  python3 "$REPORT" tests "$dir" "$dir/logs"
  python3 "$REPORT" bench "$dir" "$dir/logs/bench" 989
  python3 "$REPORT" real_run "$dir" "$dir/run" "$dir/run/eval.json" 120
  python3 "$REPORT" merge "$dir" "$dir/out"
}

make_check "$WORK/first" 2026-12-08T10:00:00Z 4000
make_check "$WORK/second" 2026-12-09T10:00:00Z 4400
mkdir -p "$WORK/repo/docs" "$WORK/results"
cp "$ROOT/README.md" "$ROOT/docs/performance.md" "$WORK/repo/"
cp "$ROOT/README.md" "$WORK/repo/README.orig"
cp "$ROOT/docs/performance.md" "$WORK/repo/performance.orig"
publish() { python3 "$PUBLISH" --results "$WORK/results" --doc "$WORK/repo/performance.md" \
  --readme "$WORK/repo/README.md" "$@"; }

publish "$WORK/first/out/summary.json" || fail "publishing the first check"
publish "$WORK/first/out/summary.json" || fail "publishing it again"
[ "$(ls "$WORK/results")" = gpu_check_2026-12-08_nvidia-h200.json ] ||
  fail "kept as $(ls "$WORK/results"), not once as gpu_check_2026-12-08_nvidia-h200.json"
same_json() { python3 -c 'import json, sys
assert json.load(open(sys.argv[1])) == json.load(open(sys.argv[2]))' "$1" "$2"; }
same_json "$WORK/first/out/summary.json" "$WORK/results/gpu_check_2026-12-08_nvidia-h200.json" ||
  fail "the kept summary differs from the check's"

python3 - "$WORK/repo" <<'PY' || fail "the rendered blocks (above)"
import os, re, sys
repo = sys.argv[1]
def block(path, name):
    text = open(path).read()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    i, j = text.index(begin), text.index(end)
    return text[:i], text[i + len(begin):j], text[j:]
doc_before, doc, doc_after = block(os.path.join(repo, "performance.md"), "gpu-check")
orig_before, _, orig_after = block(os.path.join(repo, "performance.orig"), "gpu-check")
assert (doc_before, doc_after) == (orig_before, orig_after), "text outside the markers changed"
readme_before, readme, readme_after = block(os.path.join(repo, "README.md"), "gpu")
orig_before, _, orig_after = block(os.path.join(repo, "README.orig"), "gpu")
assert (readme_before, readme_after) == (orig_before, orig_after), "README outside the markers"
print(doc)
print(readme)
expect_doc = [
    "### 2026-12-08: NVIDIA H200",
    "`bench/results/gpu_check_2026-12-08_nvidia-h200.json`",
    "NVIDIA H200, 143771 MiB, 580.95.05 (compute mode, MIG: Default, Disabled)",
    "commit abc1234", "512 s of its 540 s budget",
    "| build | passed | 171 |",
    # One CUDA test failed, by name; the collectives' one passed.
    "**CUDA tests (`ctest -L cuda`)**: 2 passed, 1 failed, 0 skipped. Failed: "
    "`Cuda.Fp16LossScalerSeesARealOverflowAndRecovers`.",
    "1 and 2 ranks on the one GPU**: 1 passed, 0 failed",
    "the CIFAR-10 model (52.55 M parameters", "batch 128", "3 warm-up steps",
    "3 × 10 timed steps", "3 × 16.77 GFLOP forward",
    "the phases in 10 more steps, the device synchronised at each phase boundary",
    # images/s, step ms, phases, MFU = 3 x 16.77e9 x 4000 / 989e12 = 20.4 %, memory, ratio.
    "| bf16 | difftrain | 4000 | 32.0 | 10.0 / 20.0 / 1.5 / 0.5 | 20.4 % | 20000 | – | – |",
    "| bf16 | PyTorch eager, plain | 2667 | 48.0 |", "| 1.50× | yes (loss 2e-07",
    "| bf16 | PyTorch eager, tuned | 3636 |", "| 1.10× |",
    "| fp32 | difftrain | 1500 |",
    "bf16 images/s against plain PyTorch eager 1.50× (target 1.30×: met); bf16 MFU 20.4 % "
    "(target 20.0 %: met)",
    "the GPU busy 30.0 ms of 40.0 ms a step (75.0 %), 2100 GPU activities a step",
    "**Where the time goes** (difftrain, fp32): no kernel trace, the Kineto profiler failed: "
    "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES",
    r"| `sm90_xmma_fprop_implicit_gemm_bf16\|nhwc` | 9.25 | 180 |",
    "| channels-first, bf16 | 4400 | 1.10× | 21000 | – |",
    "| fused GroupNorm (`model.fused_group_norm`), bf16 | 4800 | 1.20× | 16000 | 0.80× |",
    "| gradient checkpointing (`model.use_checkpoint`), bf16 | 3200 | 0.80× | 9000 | 0.45× |",
    "channels-first against the default channels-last: 1.10× the speed; "
    "`model.channels_last: auto` should resolve to channels-first on CUDA in bf16",
    "against the default: 1.20× the speed, 0.80× the peak memory; its kernels are right and "
    "faster: make `auto` its default",
    "the GPU was busy 75.0 % of the traced step's wall time; the GPU waits for the host",
    "for 120 s: 60 steps, 950 images/s", "peak device memory 812 MiB",
    "7.06 ± 0.15 at step 0", "**4.48 ± 0.05 bits/dim**",
]
missing = [e for e in expect_doc if e not in doc]
assert not missing, f"not in the performance block: {missing}"
flat = " ".join(readme.split())
expect_readme = [
    "- **GPUs** (2026-12-08, one NVIDIA H200;", "(docs/performance.md#gpu-check-results)",
    "batch 128, bf16: **4000 images/s**, MFU 20.4 %, 1.50× plain eager PyTorch and 1.10× a tuned "
    "eager step; fp32: **1500 images/s**",
    "trained at 950 images/s on it (4.48 bits/dim after 120 s)",
    "2 of 3 CUDA tests passed; 1 of 1 NCCL tests passed.",
]
missing = [e for e in expect_readme if e not in flat]
assert not missing, f"not in the README bullet: {missing}"
assert all(len(line) <= 100 for line in readme.splitlines()), "README lines over 100 columns"
assert "\n## GPU check results\n" in doc_before, "the section the README links to"
PY

# Rendering again from what is kept changes nothing.
cp "$WORK/repo/README.md" "$WORK/repo/README.first"
cp "$WORK/repo/performance.md" "$WORK/repo/performance.first"
publish >/dev/null || fail "rendering again"
cmp "$WORK/repo/README.md" "$WORK/repo/README.first" || fail "a second rendering changed README.md"
cmp "$WORK/repo/performance.md" "$WORK/repo/performance.first" || fail "... performance.md"

# A newer check replaces the older one in both blocks; both summaries stay kept.
publish "$WORK/second/out/summary.json" >/dev/null || fail "publishing the second check"
[ "$(ls "$WORK/results" | wc -l)" = 2 ] || fail "not two summaries kept: $(ls "$WORK/results")"
grep -q "### 2026-12-09: NVIDIA H200" "$WORK/repo/performance.md" || fail "not the newer check"
grep -q "bf16: \*\*4400 images/s\*\*" "$WORK/repo/README.md" || fail "README not the newer check"
grep -q "2026-12-08" "$WORK/repo/performance.md" && fail "the older check is still rendered"

# Refused, saying why, and nothing written: a --cpu run's summary, a file that is no summary.
python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
s["check"]["mode"] = "cpu"
json.dump(s, open(sys.argv[2], "w"))' "$WORK/first/out/summary.json" "$WORK/cpu_summary.json"
echo '{"generated": "2026-12-06"}' >"$WORK/not_a_summary.json"
for bad in cpu_summary:"a --cpu run's summary" not_a_summary:"no check, machine, parts record"; do
  rc=0
  publish "$WORK/${bad%%:*}.json" >"$WORK/refused.log" 2>&1 || rc=$?
  ((rc != 0)) || fail "${bad%%:*} was published"
  grep -q "${bad#*:}" "$WORK/refused.log" || { cat "$WORK/refused.log"; fail "no reason given"; }
done
[ "$(ls "$WORK/results" | wc -l)" = 2 ] || fail "a refused summary was kept"

# The repository's docs are what the script renders from what bench/results/ holds.
mkdir -p "$WORK/own"
cp "$ROOT/README.md" "$ROOT/docs/performance.md" "$WORK/own/"
python3 "$PUBLISH" --results "$ROOT/bench/results" --doc "$WORK/own/performance.md" \
  --readme "$WORK/own/README.md" >/dev/null || fail "rendering the repository's results"
{ cmp "$WORK/own/README.md" "$ROOT/README.md" &&
  cmp "$WORK/own/performance.md" "$ROOT/docs/performance.md"; } ||
  fail "README.md or docs/performance.md is not what bench/publish_gpu_check.py renders: run it"
echo "PASSED"

#!/usr/bin/env python3
"""The JSON side of launch/gpu_check.sh (stdlib only): reads what each part left in its work
directory and writes the part's record, then merges every record into OUTDIR/summary.json.

  gpu_check_report.py machine WORK                  machine.json: GPU, driver, cores, compilers
  gpu_check_report.py tests WORK LOGS               per-test results: cuda_tests and nccl
  gpu_check_report.py real_run WORK RUN_DIR EVAL S  images/s, held-out and full-bound bits/dim
  gpu_check_report.py bench WORK DIR PEAK_TFLOPS    images/s, ratios, MFU, peak device memory
  gpu_check_report.py status WORK PART STATUS S [NOTE]  a part's status and seconds
  gpu_check_report.py merge WORK OUTDIR             summary.json from every record
"""
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET


def write(work, name, record):
    path = os.path.join(work, "records", name + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    previous = {}
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    previous.update(record)
    with open(path, "w") as f:
        json.dump(previous, f, indent=1)


def sh(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"failed: {e}"


def machine(work):
    python = os.environ.get("PYTHON", "python3")
    write(work, "machine", {
        "gpu": sh("nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader")
        if shutil.which("nvidia-smi") else "none (no nvidia-smi)",
        # What would stop 2 ranks sharing the GPU (an exclusive compute mode) or split it (MIG);
        # asked apart, so that a field an old driver lacks cannot cost the GPU's name above.
        "gpu_modes": sh("nvidia-smi --query-gpu=compute_mode,mig.mode.current "
                        "--format=csv,noheader") if shutil.which("nvidia-smi") else None,
        "cores": os.cpu_count(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), platform.processor()),
        "kernel": platform.release(),
        "os": sh("grep PRETTY_NAME /etc/os-release | cut -d= -f2"),
        "cxx": sh("${CXX:-c++} --version | head -1"),
        "cmake": sh("cmake --version | head -1"),
        "nvcc": sh("nvcc --version | tail -2 | head -1") if shutil.which("nvcc") else None,
        "torch": sh(f"{python} -c 'import torch; print(torch.__version__, torch.version.cuda, "
                    f"torch.cuda.is_available())'"),
    })


RETRY_ENV = "NCCL_CUMEM_ENABLE=0 NCCL_DEBUG=INFO"  # gpu_check.sh's retry of what failed


def tests(work, logs):
    """ctest's JUnit file and the collectives' gtest XML files (one per rank): two records,
    nccl (NCCL under mpirun: collectives, reducer, 2 ranks on one GPU, watchdog; and every test of
    the collectives' mpirun runs, the RankDevice ones too) and cuda_tests.
    A file named *_retry* holds the second try of what failed: a test's status is its last try's,
    with first_try "failed" and the retry's environment."""
    parts = {"cuda_tests": {}, "nccl": {}}
    for path in sorted(glob.glob(os.path.join(logs, "*.xml")),
                       key=lambda p: ("_retry" in p, p)):
        base = os.path.basename(path)
        retry = "_retry" in base
        for case in ET.parse(path).getroot().iter("testcase"):
            name = case.get("name")
            if base.startswith("collectives_"):  # collectives_ranks2[_retry]_rank1.xml
                name = f"{case.get('classname')}.{name} [{base[12:-4].replace('_retry', '')}]"
            failed = case.find("failure") is not None or case.get("status") == "fail"
            skipped = (case.find("skipped") is not None or case.get("result") == "skipped" or
                       case.get("status") in ("notrun", "disabled"))
            status = "failed" if failed else "skipped" if skipped else "passed"
            nccl = base.startswith("collectives_") or "nccl" in name.lower()
            entry = {"name": name, "status": status,
                     "seconds": round(float(case.get("time") or 0), 2)}
            cases = parts["nccl" if nccl else "cuda_tests"]
            if retry and name in cases:
                entry.update(first_try=cases[name]["status"], retry_env=RETRY_ENV)
            cases[name] = entry
    for part, by_name in parts.items():
        cases = list(by_name.values())
        counts = {s: sum(t["status"] == s for t in cases) for s in ("passed", "failed", "skipped")}
        counts["passed_on_retry"] = sum(t["status"] == "passed" and "first_try" in t
                                        for t in cases)
        status = ("failed" if counts["failed"] else "passed on retry" if counts["passed_on_retry"]
                  else "passed" if counts["passed"] else "skipped")
        write(work, part, {"status": status, "counts": counts, "tests": cases})


def median(values):
    v = sorted(values)
    n = len(v)
    return None if not n else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))


def real_run(work, run_dir, eval_json, seconds):
    lines = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    steps = [j for j in lines if "images_per_s" in j]
    bpd = [j for j in lines if "bpd_estimate" in j]
    record = {
        "training_seconds": int(seconds),
        "steps": steps[-1]["step"] if steps else 0,
        "images_per_s_median": median([j["images_per_s"] for j in steps[1:]] or
                                      [j["images_per_s"] for j in steps]),
        # Input-bound or not: the slowest rank's wait for batches against the whole step.
        "step_time_ms_median": median([j["step_time_ms"] for j in steps[1:]] or
                                      [j["step_time_ms"] for j in steps]),
        "data_wait_max_ms_median": median([j["data_wait_max_ms"] for j in steps[1:]
                                           if "data_wait_max_ms" in j]),
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]] if steps else None,
        "device_peak_allocated_mb": max((j["device_peak_allocated_mb"] for j in steps
                                         if "device_peak_allocated_mb" in j), default=None),
        "heldout_bpd": [{"step": j["step"], "bpd": round(j["bpd_estimate"], 4),
                         "stderr": round(j["bpd_standard_error"], 4)} for j in bpd],
    }
    if os.path.exists(eval_json):
        with open(eval_json) as f:
            e = json.load(f)
        record["eval"] = {k: e.get(k) for k in ("step", "ema_rate", "num_images", "total_bpd",
                                                "total_bpd_stderr", "prior_bpd", "decoder_bpd",
                                                "terms_bpd", "seconds")}
    write(work, "real_run", record)


def bench(work, directory, peak_tflops):
    def load(name):
        p = os.path.join(directory, name)
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    flops = load("flops.json")
    forward = flops["forward_flops_per_image"] if flops else None
    runs, setup = {}, {}
    for precision in ("fp32", "bf16"):
        row, rates = {}, {}
        for impl in ("difftrain", "pytorch_plain", "pytorch_tuned"):
            j = load(f"{precision}_{impl}.json")
            if not j or not j.get("images_per_s"):
                continue
            rate = j["images_per_s"]["median"]
            rates[impl] = rate
            entry = {"images_per_s": round(rate, 2),
                     "step_ms": round(j["step_ms"]["median"], 3),
                     "peak_device_memory_mb": j.get("cuda_peak_allocated_mb"),
                     # Medians of the step's phases (forward, backward, optimizer, EMA, ...).
                     "phases_ms": {k: round(v["median"], 3)
                                   for k, v in (j.get("breakdown_ms") or {}).items() if v}}
            setup.setdefault("batch", j.get("batch"))
            setup.setdefault("parameters", j.get("parameters"))
            setup.setdefault("timing", {k: j.get(k) for k in ("warmup", "repeats",
                                                              "steps_per_repeat", "phase_timing")})
            if forward:
                entry["mfu"] = round(3 * forward * rate / (peak_tflops * 1e12), 5)
            if impl != "difftrain" and j.get("check", {}).get("same_precision_as_export"):
                c = j["check"]
                entry["same_computation_check"] = {
                    "ok": c["ok"], "loss_rel_diff": c["loss_rel_diff"],
                    "grad_norm_rel_diff": c["grad_norm_rel_diff"], "tolerance": c["tolerance"]}
            if j.get("cuda_trace"):
                entry["cuda_trace"] = j["cuda_trace"]
            row[impl] = entry
        if "difftrain" in rates:
            for base in ("pytorch_plain", "pytorch_tuned"):
                if base in rates:
                    row["ratio_vs_" + base[8:]] = round(rates["difftrain"] / rates[base], 3)
        if row:
            runs[precision] = row

    def against_default(variant):
        """The first precision with both VARIANT_{p}_difftrain.json and {p}_difftrain.json timed:
        (precision, the variant's JSON, the default step's JSON), or None."""
        for precision in ("bf16", "fp32"):
            j = load(f"{variant}_{precision}_difftrain.json")
            default = load(f"{precision}_difftrain.json")
            if j and j.get("images_per_s") and default and default.get("images_per_s"):
                return precision, j, default
        return None

    # The variants of difftrain's step, each against the default step at the same precision.
    if found := against_default("layout"):
        precision, j, default = found
        runs["other_layout_" + precision] = {
            "channels_last": j["model"]["channels_last"],
            "default_channels_last": default["model"]["channels_last"],
            "images_per_s": round(j["images_per_s"]["median"], 2),
            "speed_vs_default": round(j["images_per_s"]["median"] /
                                      default["images_per_s"]["median"], 3),
            "peak_device_memory_mb": j.get("cuda_peak_allocated_mb"),
        }
    if found := against_default("fused"):
        precision, j, default = found
        rate, memory = j["images_per_s"]["median"], j.get("cuda_peak_allocated_mb")
        default_memory = default.get("cuda_peak_allocated_mb")
        runs["fused_group_norm_" + precision] = {
            "fused_group_norm": j["model"].get("fused_group_norm"),
            "channels_last": j["model"]["channels_last"],
            "images_per_s": round(rate, 2),
            "speed_vs_default": round(rate / default["images_per_s"]["median"], 3),
            "peak_device_memory_mb": memory,
            "memory_vs_default": round(memory / default_memory, 3)
            if memory and default_memory else None,
        }
    if found := against_default("heuristics"):
        precision, j, default = found
        rate = j["images_per_s"]["median"]
        runs["cudnn_heuristics_" + precision] = {
            "images_per_s": round(rate, 2),
            "speed_vs_benchmark_mode": round(rate / default["images_per_s"]["median"], 3),
        }
    if found := against_default("checkpointed"):
        precision, j, plain = found
        rate, plain_rate = j["images_per_s"]["median"], plain["images_per_s"]["median"]
        memory, plain_memory = j.get("cuda_peak_allocated_mb"), plain.get("cuda_peak_allocated_mb")
        runs["checkpointed_" + precision] = {
            "images_per_s": round(rate, 2),
            "speed_vs_without": round(rate / plain_rate, 3),
            "peak_device_memory_mb": memory,
            "memory_vs_without": round(memory / plain_memory, 3) if memory and plain_memory else None,
        }
    # The targets for the CIFAR-10 model in bf16 on one H200 (docs/gpu-check.md).
    bf16 = runs.get("bf16", {})
    targets = {}
    if "ratio_vs_plain" in bf16:
        targets["bf16_ratio_vs_plain"] = {"value": bf16["ratio_vs_plain"], "target": 1.3,
                                          "met": bf16["ratio_vs_plain"] >= 1.3}
    if "mfu" in bf16.get("difftrain", {}):
        mfu = bf16["difftrain"]["mfu"]
        targets["bf16_mfu"] = {"value": mfu, "target": 0.20, "met": mfu >= 0.20}
    write(work, "bench", {
        "targets": targets,
        "forward_flops_per_image": forward,
        "batch": setup.get("batch"),
        "parameters": setup.get("parameters"),
        "timing": setup.get("timing"),
        "mfu_note": f"MFU = 3 x forward FLOPs (2 per multiply-add: convolutions, linears, "
                    f"attention matmuls) x images/s / {peak_tflops} TFLOP/s (H100/H200 SXM dense "
                    f"bf16 peak, used for fp32/TF32 runs too)",
        "runs": runs,
    })


def merge(work, outdir):
    summary = {"parts": {}}
    for path in sorted(glob.glob(os.path.join(work, "records", "*.json"))):
        name = os.path.basename(path)[:-5]
        with open(path) as f:
            record = json.load(f)
        if name in ("machine", "check"):
            summary[name] = record
        else:
            summary["parts"][name] = record
    order = ["setup", "build", "tests", "cuda_tests", "nccl", "bench", "real_run"]
    summary["parts"] = {k: summary["parts"][k] for k in order + sorted(summary["parts"])
                        if k in summary["parts"]}
    os.makedirs(outdir, exist_ok=True)
    tmp = os.path.join(outdir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(outdir, "summary.json"))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "machine":
        machine(*args)
    elif cmd == "tests":
        tests(*args)
    elif cmd == "real_run":
        real_run(*args)
    elif cmd == "bench":
        bench(args[0], args[1], float(args[2]))
    elif cmd == "merge":
        merge(*args)
    elif cmd == "status":  # status WORK PART STATUS SECONDS [NOTE]
        write(args[0], args[1], {"status": args[2], "seconds": int(args[3]),
                                 **({"note": args[4]} if len(args) > 4 and args[4] else {})})
    else:
        sys.exit(f"unknown command {cmd}")

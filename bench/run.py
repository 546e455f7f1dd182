#!/usr/bin/env python3
"""Runs every benchmark and writes bench/results/latest.json (bench/run.sh calls this; stdlib
only, so any python3 runs it; the PyTorch baseline runs in the venv's python).

  bench/run.py [--quick] [--out bench/results/latest.json] [--python .venv/bin/python]

Figures: loader throughput (build/bench_loader); training-step throughput and breakdown of
difftrain's own step (train::train_step) against the PyTorch eager baseline, plain and tuned
(build/bench_train_step, bench/baseline/train_step.py) for the demo model and the CIFAR-10 hybrid model, fp32 and bf16,
1 and 2 threads, with the achieved FLOP/s against this CPU's peak; `difftrain train` end to end
(the quickstart's 2 ranks, images/s from its metrics); sampling throughput (DDIM-50,
DDPM) and peak RSS over a demo training run (build/difftrain); gradient checkpointing's speed
and memory on the CIFAR-10 model, difftrain and the baseline; bench/bench_scaling.sh's results
when that script exists. Every timed figure has min / median / max over repeats.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import profile_summary  # bench/, next to this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")

# (name, config, --set overrides so that the model needs no data)
MODELS = [
    ("fashion_mnist", "configs/fashion_mnist.yaml",
     ["model.image_size=28", "model.in_channels=1"]),
    ("cifar10_hybrid", "configs/cifar10_hybrid.yaml", []),
    # The CIFAR-10 model's layers (the same ops, in the same order) at a quarter of the width on
    # 8 x 8 images, batch 1: so little arithmetic that the step's time is the host's, dispatching
    # each op. What a GPU step must hide behind its kernels, Python's share of it included.
    ("cifar10_host_bound", "configs/cifar10_hybrid.yaml",
     ["model.image_size=8", "model.model_channels=32", "model.attention_resolutions=[4,2]"]),
]
# The same-computation check compares the first step's loss and gradient norm, but at 1 x 1 the
# host-bound model's GroupNorms of 64 channels normalise 2 values a group, whose gradient is
# rounding noise (zero in exact arithmetic) amplified by 1 / sqrt(eps): there the loss alone.
CHECK = {"cifar10_host_bound": "loss"}


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def run(cmd, env, cwd=ROOT, timeout=None):
    """Runs cmd; returns (returncode, stdout, stderr, wall seconds, peak RSS MiB of the process
    and the descendants it waited for)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.monotonic() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        wall = time.monotonic() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"), wall, usage.ru_maxrss / 1024.0)


def check_run(cmd, env, what, **kw):
    rc, out, err, wall, rss = run(cmd, env, **kw)
    if rc != 0:
        log(f"{what} FAILED (exit {rc}): {' '.join(cmd)}\n{err[-3000:]}")
    return rc, out, err, wall, rss


def summary(values):
    v = sorted(values)
    n = len(v)
    if not n:
        return None
    median = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
    return {"min": v[0], "median": median, "max": v[-1], "values": values}


def read_cpuinfo():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    first = text.split("\n\n")[0]
    for line in first.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    info["_mhz_all"] = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)]
    return info


def machine_description():
    ci = read_cpuinfo()
    flags = set(ci.get("flags", "").split())
    if "avx512f" in flags:
        width, isa = 16, "avx512f"
    elif "avx2" in flags and "fma" in flags:
        width, isa = 8, "avx2+fma"
    elif "avx" in flags:
        width, isa = 8, "avx (no fma)"
    else:
        width, isa = 4, "sse"
    fma = "fma" in flags or "avx512f" in flags
    # Two vector FMA pipes per core (Zen 2+, Skylake+); without FMA, one add + one multiply.
    flops_per_cycle = width * 2 * (2 if fma else 1)
    mhz_all = ci.get("_mhz_all") or [0.0]
    mhz = max(mhz_all)
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = int(line.split()[1]) / 1024.0 / 1024.0
    except OSError:
        pass
    gpu = "CPU-only"
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and "GPU" in r.stdout:
                gpu = r.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {
        "cpu_model": ci.get("model name", platform.processor()),
        "cores": os.cpu_count(),
        "cpu_mhz": mhz,
        "isa": isa,
        "vector_width_fp32": width,
        "fp32_flops_per_cycle_per_core": flops_per_cycle,
        "fp32_peak_gflops_per_core": flops_per_cycle * mhz / 1000.0,
        "peak_note": ("peak = threads x clock (cpu MHz from /proc/cpuinfo) x fp32 lanes x 2 "
                      "(multiply-add) x 2 (FMA pipes per core, assumed)"),
        "memory_gib": mem_total,
        "kernel": platform.release(),
        "gpu": gpu,
        "cpu_only": gpu == "CPU-only",
        "load_average_start": os.getloadavg(),
    }


def versions(python):
    v = {"python_baseline": None, "torch": None, "git_commit": None, "git_dirty": None,
         "compiler": None}
    try:
        r = subprocess.run([python, "-c", "import sys, torch; print(sys.version.split()[0]); "
                            "print(torch.__version__)"], capture_output=True, text=True)
        lines = r.stdout.split()
        v["python_baseline"], v["torch"] = lines[0], lines[1]
        v["libtorch"] = lines[1] + " (the same wheel: difftrain links its LibTorch)"
    except (OSError, IndexError):
        pass
    try:
        v["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                                         capture_output=True, text=True).stdout.strip()
        v["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                             capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            cache = f.read()
        cxx = re.search(r"CMAKE_CXX_COMPILER:\w+=(.*)", cache).group(1)
        bt = re.search(r"CMAKE_BUILD_TYPE:\w+=(.*)", cache)
        first = subprocess.run([cxx, "--version"], capture_output=True,
                               text=True).stdout.splitlines()[0]
        v["compiler"] = first
        v["build_type"] = bt.group(1) if bt else None
    except (OSError, AttributeError, IndexError):
        pass
    return v


def run_into(row, key, cmd, env, out):
    """Runs one training-step benchmark; its JSON (written even when the baseline's check fails,
    which the exit code says) goes to row[key] with the process's peak RSS and wall time."""
    rc, _, _, wall, rss = check_run(cmd, env, key)
    if os.path.exists(out):
        with open(out) as f:
            row[key] = json.load(f)
        row[key]["peak_rss_mb"] = rss
        row[key]["wall_s"] = wall
    return rc


def train_step_benchmarks(args, env, tmp, plan):
    """plan: {model name: [(precision, threads, steps, repeats, warmup), ...]}"""
    out = {}
    for name, config, sets in MODELS:
        if name not in plan:
            continue
        export = os.path.join(tmp, name + ".pt")
        set_args = sum((["--set", s] for s in sets), [])
        entry = {"config": config, "sets": sets, "runs": []}
        exported = False
        for precision, threads, steps, repeats, warmup in plan[name]:
            common = ["--threads", str(threads), "--precision", precision, "--steps", str(steps),
                      "--repeats", str(repeats), "--warmup", str(warmup), "--device", args.device]
            # Three more steps under the profiler, for the table of where the time goes by op.
            profile = name in ("fashion_mnist", "cifar10_host_bound") and precision == "fp32" and \
                threads == max(t for p, t, *_ in plan[name] if p == "fp32")
            profiles = {}
            e = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            row = {"precision": precision, "threads": threads}
            res_path = os.path.join(tmp, f"{name}_{precision}_{threads}_cpp.json")
            cmd = [os.path.join(BUILD, "bench_train_step"), "--config", config] + set_args + \
                common + ["--batch", str(args.batch[name]), "--out", res_path]
            if profile:
                profiles["difftrain"] = os.path.join(tmp, f"{name}_difftrain.trace")
                cmd += ["--profile", profiles["difftrain"]]
            if not exported:
                cmd += ["--export", export]
            log(f"train step {name} {precision} {threads} thread(s): difftrain")
            if run_into(row, "difftrain", cmd, e, res_path) == 0:
                exported = exported or precision == "fp32"
            if args.channels_last_everywhere and precision == "fp32":
                # model.channels_last is auto: channels-last under bf16 autocast, channels-first
                # in fp32 (faster here); this also times fp32 channels-last.
                log(f"train step {name} {precision} {threads} thread(s): difftrain channels_last")
                res_cl = res_path.replace("_cpp.json", "_cpp_cl.json")
                cmd_cl = [os.path.join(BUILD, "bench_train_step"), "--config", config] + \
                    set_args + ["--set", "model.channels_last=true"] + common + \
                    ["--batch", str(args.batch[name]), "--out", res_cl]
                run_into(row, "difftrain_channels_last", cmd_cl, e, res_cl)
            if not os.path.exists(export):
                entry["runs"].append(row)
                continue
            if "parameters" not in entry:
                with open(export + ".json") as f:
                    meta = json.load(f)
                entry["parameters"] = meta["parameters"]
                entry["model"] = meta["model"]
                rc, o, _, _, _ = check_run([args.python, "-W", "ignore",
                                            "bench/baseline/train_step.py", "--export", export,
                                            "--flops"], e, "flop count")
                if rc == 0:
                    entry["forward_flops_per_image"] = json.loads(o)["forward_flops_per_image"]
                    entry["train_flops_per_image"] = 3 * entry["forward_flops_per_image"]
                    entry["flops_note"] = ("convolutions, linears and attention matmuls, 2 FLOPs "
                                           "per multiply-add; training = 3 x forward (backward "
                                           "= 2 x forward)")
            for variant in ["plain", "tuned"]:
                log(f"train step {name} {precision} {threads} thread(s): pytorch {variant}")
                res = os.path.join(tmp, f"{name}_{precision}_{threads}_{variant}.json")
                cmd = [args.python, "-W", "ignore", "bench/baseline/train_step.py", "--export",
                       export, "--variant", variant, "--out", res,
                       "--check", CHECK.get(name, "loss-and-gradient")] + common
                if profile:
                    profiles["pytorch_" + variant] = os.path.join(tmp, f"{name}_{variant}.trace")
                    cmd += ["--profile", profiles["pytorch_" + variant]]
                run_into(row, "pytorch_" + variant, cmd, e, res)
            d = row.get("difftrain", {}).get("images_per_s")
            dcl = row.get("difftrain_channels_last", {}).get("images_per_s")
            for variant in ["plain", "tuned"]:
                b = row.get("pytorch_" + variant, {}).get("images_per_s")
                if d and b:
                    row["ratio_vs_" + variant] = d["median"] / b["median"]
                if dcl and b:
                    row["channels_last_ratio_vs_" + variant] = dcl["median"] / b["median"]
            if profiles:
                row["profile"] = profile_tables(profiles)
            if d and "train_flops_per_image" in entry and args.device == "cpu":
                gflops = entry["train_flops_per_image"] * d["median"] / 1e9
                peak = args.machine["fp32_peak_gflops_per_core"] * threads
                row["achieved_gflops"] = gflops
                row["peak_gflops"] = peak
                row["fraction_of_peak"] = gflops / peak if peak else None
                for variant in ["plain", "tuned"]:
                    b = row.get("pytorch_" + variant, {}).get("images_per_s")
                    if b and peak:
                        row[f"fraction_of_peak_{variant}"] = \
                            entry["train_flops_per_image"] * b["median"] / 1e9 / peak
            entry["runs"].append(row)
        checks = [r["pytorch_" + v]["check"] for r in entry["runs"] for v in ["plain", "tuned"]
                  if "pytorch_" + v in r and r["pytorch_" + v]["check"]["same_precision_as_export"]]
        entry["same_computation_check"] = {
            "what": ("first step, same weights and batch, dropout off, fp32: C++ vs PyTorch "
                     "loss and gradient norm"),
            "compared": CHECK.get(name, "loss-and-gradient"),
            "ok": bool(checks) and all(c["ok"] for c in checks),
            "max_loss_rel_diff": max((c["loss_rel_diff"] for c in checks), default=None),
            "max_grad_norm_rel_diff": max((c["grad_norm_rel_diff"] for c in checks),
                                          default=None),
        }
        out[name] = entry
    return out


def checkpointing_benchmark(args, env, tmp):
    """Gradient checkpointing (model.use_checkpoint) on the CIFAR-10 model, at a batch where the
    activations outweigh the weights and optimizer state: difftrain's training step and the
    PyTorch baseline's (torch.utils.checkpoint), each with and without it. Images/s, and peak
    memory: the process's peak RSS on the CPU, allocated device memory on a GPU."""
    name, config, sets = next(m for m in MODELS if m[0] == "cifar10_hybrid")
    batch, precision, (steps, repeats, warmup) = args.checkpointing
    threads = 2
    e = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    common = ["--threads", str(threads), "--precision", precision, "--steps", str(steps),
              "--repeats", str(repeats), "--warmup", str(warmup), "--device", args.device]
    memory_key = "cuda_peak_allocated_mb" if args.device == "cuda" else "peak_rss_mb"
    out = {"config": config, "batch": batch, "precision": precision, "threads": threads,
           "memory": memory_key, "runs": {}}
    for use_checkpoint in (False, True):
        key = "checkpointed" if use_checkpoint else "plain"
        row = out["runs"][key] = {}
        export = os.path.join(tmp, f"checkpointing_{key}.pt")
        res = os.path.join(tmp, f"checkpointing_{key}_cpp.json")
        log(f"checkpointing: difftrain {key}, {name} batch {batch} {precision}")
        cmd = [os.path.join(BUILD, "bench_train_step"), "--config", config] + \
            sum((["--set", s] for s in sets), []) + \
            ["--set", f"model.use_checkpoint={str(use_checkpoint).lower()}"] + common + \
            ["--batch", str(batch), "--export", export, "--out", res]
        run_into(row, "difftrain", cmd, e, res)
        if not os.path.exists(export):
            continue
        # The export's model JSON carries use_checkpoint: the baseline checkpoints the same blocks.
        log(f"checkpointing: pytorch {key}")
        res = os.path.join(tmp, f"checkpointing_{key}_pytorch.json")
        run_into(row, "pytorch", [args.python, "-W", "ignore", "bench/baseline/train_step.py",
                                  "--export", export, "--variant", "plain", "--out", res] + common,
                 e, res)

    def figures(key, impl):
        r = out["runs"].get(key, {}).get(impl, {})
        return (r.get("images_per_s") or {}).get("median"), r.get(memory_key)

    for impl in ("difftrain", "pytorch"):
        (plain_rate, plain_mem), (rate, mem) = figures("plain", impl), figures("checkpointed", impl)
        if plain_rate and rate and plain_mem and mem:
            out[impl] = {"images_per_s": [plain_rate, rate], "memory_mb": [plain_mem, mem],
                         "speed_vs_without": rate / plain_rate, "memory_vs_without": mem / plain_mem}
    if "difftrain" in out and "pytorch" in out:
        out["checkpointed_ratio_vs_pytorch"] = \
            out["difftrain"]["images_per_s"][1] / out["pytorch"]["images_per_s"][1]
    return out


def profile_tables(traces, top=14):
    """Self time per op (ms in the profiled step) of each implementation, for the top ops of
    difftrain's step (bench/profile_summary.py)."""
    tables = {k: profile_summary.self_times(p, steps=3) for k, p in traces.items()
              if os.path.exists(p)}
    if "difftrain" not in tables:
        return None
    first = tables["difftrain"]
    names = sorted(first, key=lambda n: -first[n][1])[:top]
    return {
        "what": "self time per op and step, mean of 3 profiled steps (LibTorch profiler / "
                "torch.profiler), ms; the profiler's own overhead is included, so the total "
                "exceeds the timed step",
        "ops_per_step": {k: profile_summary.ops_per_step(p, steps=3) for k, p in traces.items()
                         if os.path.exists(p)},
        "ops": [{"op": n, **{k: round(t[n][1], 3) if n in t else None for k, t in tables.items()}}
                for n in names],
        "total": {k: round(sum(v[1] for v in t.values()), 3) for k, t in tables.items()},
    }


def loader_benchmark(args, env, tmp):
    log("loader")
    path = os.path.join(tmp, "loader.json")
    cmd = [os.path.join(BUILD, "bench_loader"), "--out", path, "--epochs",
           "1" if args.quick else "2"]
    if os.path.exists(os.path.join(ROOT, "data/fashion_mnist/train/manifest.json")):
        cmd += ["--manifest", "data/fashion_mnist/train"]
    results = []
    for _ in range(args.loader_repeats):
        rc, _, _, _, _ = check_run(cmd, dict(env, OMP_NUM_THREADS="1"), "bench_loader")
        if rc == 0:
            with open(path) as f:
                results.append(json.load(f))
    if not results:
        return {"skipped": "bench_loader failed"}
    j = results[0]
    merged = []
    for i, r in enumerate(j["results"]):
        rates = [x["results"][i]["images_per_second"] for x in results]
        cpu_rates = [x["results"][i]["images_per_cpu_second"] for x in results]
        merged.append({"name": r["name"], "what": r["what"], "images_per_s": summary(rates),
                       "images_per_cpu_s": summary(cpu_rates)})
    j["results"] = merged
    j["repeats"] = len(results)
    return j


def rss_trend(rss, steps):
    """Growth of RSS past warm-up (the first fifth of the run): the least-squares slope over the
    readings times the steps they span, so that the allocator's churn (RSS going up and down by
    tens of MiB as buffers are freed and reused) does not pass for a leak, and a steady climb does
    not hide behind a low last reading."""
    after = [(s, r) for s, r in rss if s >= steps // 5] or rss
    if len(after) < 2:
        return {"rss_growth_mb_after_warmup": None, "flat": False}
    n = len(after)
    ms = sum(s for s, _ in after) / n
    mr = sum(r for _, r in after) / n
    var = sum((s - ms) ** 2 for s, _ in after)
    slope = sum((s - ms) * (r - mr) for s, r in after) / var if var else 0.0
    span = after[-1][0] - after[0][0]
    growth = slope * span
    return {
        "rss_growth_mb_after_warmup": growth,
        "rss_growth_mb_per_1000_steps": 1000.0 * slope,
        "rss_band_mb_after_warmup": [min(r for _, r in after), max(r for _, r in after)],
        "flat": growth < 0.02 * max(r for _, r in after) + 16,
        "flat_rule": "least-squares growth over the run after its first fifth < 2% of RSS "
                     "+ 16 MiB",
    }


def training_run(args, env, tmp, steps, log_every, threads):
    """The demo config for `steps` steps: RSS per log line, peak RSS, and the final checkpoint."""
    if not os.path.exists(os.path.join(ROOT, "data/fashion_mnist/train/manifest.json")):
        return {"skipped": "no data/fashion_mnist/train (launch/fashion_mnist_shards.sh makes it)"}, None
    run_dir = os.path.join(tmp, "rss_run")
    cmd = [os.path.join(BUILD, "difftrain"), "train", "--config", "configs/fashion_mnist.yaml",
           "--set", f"training.max_steps={steps}", "--set", f"logging.log_every={log_every}",
           "--set", f"logging.run_dir={run_dir}", "--set", "training.max_time=0",
           "--set", f"training.checkpoint_every={10 * steps}", "--set",
           f"training.threads={threads}", "--set", f"logging.timestep_stats_every={10 * steps}"]
    log(f"training run: demo config, {steps} steps, {threads} threads (RSS)")
    rc, _, _, wall, peak = check_run(cmd, dict(env, OMP_NUM_THREADS=str(threads)),
                                     "difftrain train")
    if rc != 0:
        return {"skipped": "difftrain train failed"}, None
    lines = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "rss_mb" in j:
                lines.append(j)
    rss = [(j["step"], j["rss_mb"]) for j in lines]
    result = {
        "config": "configs/fashion_mnist.yaml",
        "ranks": 1,
        "threads": threads,
        "steps": steps,
        "log_every": log_every,
        "wall_s": wall,
        "peak_rss_mb_per_rank": peak,
        "rss_mb": rss,
        **rss_trend(rss, steps),
        "images_per_s": summary([j["images_per_s"] for j in lines[1:]] or
                                [j["images_per_s"] for j in lines]),
    }
    ckpts = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    return result, os.path.join(run_dir, "checkpoints", ckpts[-1]) if ckpts else None


def end_to_end_run(args, env, tmp, seconds):
    """`difftrain train` as the quickstart runs it (the demo config, 2 ranks x 1 thread under
    mpirun, data loading, logging and all) for `seconds`: images/s from its metrics.jsonl, every
    log line but the first (start-up)."""
    if not os.path.exists(os.path.join(ROOT, "data/fashion_mnist/train/manifest.json")):
        return {"skipped": "no data/fashion_mnist/train (launch/fashion_mnist_shards.sh makes it)"}
    run_dir = os.path.join(tmp, "end_to_end")
    cmd = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", "-x",
           "OMP_NUM_THREADS=1", "-x", "OMP_WAIT_POLICY"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [os.path.join(BUILD, "difftrain"), "train", "--config", "configs/fashion_mnist.yaml",
            "--set", f"training.max_time={seconds}", "--set", "training.max_steps=0",
            "--set", f"logging.run_dir={run_dir}", "--set", "logging.log_every=20",
            "--set", "logging.bpd_every=0", "--set", "training.checkpoint_every=100000"]
    log(f"end to end: difftrain train, demo config, 2 ranks x 1 thread, {seconds} s")
    rc, _, _, wall, peak = check_run(cmd, dict(env, OMP_NUM_THREADS="1"), "difftrain train")
    if rc != 0:
        return {"skipped": "difftrain train failed"}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [j for j in map(json.loads, f) if "images_per_s" in j]
    return {
        "config": "configs/fashion_mnist.yaml",
        "ranks": 2,
        "threads_per_rank": 1,
        "seconds": seconds,
        "steps": lines[-1]["step"] if lines else 0,
        "wall_s": wall,
        "peak_rss_mb": peak,
        "images_per_s": summary([j["images_per_s"] for j in lines[1:]] or
                                [j["images_per_s"] for j in lines]),
        "what": "difftrain train under mpirun, data loading, logging and checkpointing included",
    }


def sampling_benchmark(args, env, tmp, checkpoint, threads):
    if not checkpoint:
        return {"skipped": "no checkpoint (the training run did not run)"}
    out = {"checkpoint": "demo config after the RSS run", "threads": threads, "runs": []}
    for sampler, steps, num in args.sampling:
        rates = []
        for rep in range(args.sampling_repeats):
            log(f"sampling {sampler}-{steps}, {num} images")
            cmd = [os.path.join(BUILD, "difftrain"), "sample", "--checkpoint", checkpoint,
                   "--num", str(num), "--batch", str(num), "--sampler", sampler,
                   "--steps", str(steps), "--out", os.path.join(tmp, f"samples_{sampler}")]
            rc, o, err, wall, rss = check_run(cmd, dict(env, OMP_NUM_THREADS=str(threads)),
                                              "difftrain sample")
            if rc != 0:
                continue
            m = re.search(r"(\d+) images in ([\d.]+) s", o + err)
            seconds = float(m.group(2)) if m else wall
            rates.append(num / seconds)
        out["runs"].append({"sampler": sampler, "steps": steps, "images": num, "batch": num,
                            "images_per_s": summary(rates),
                            "network_evals_per_s": summary([r * steps for r in rates])})
    return out


def fid_benchmark(args, env, tmp):
    """`difftrain fid` against pytorch-fid's network in eager PyTorch (tests/quality/
    fid_reference.py) on the same random weights and images, batches and threads: both sets'
    features and statistics, the network already loaded."""
    reference = os.path.join(ROOT, "tests/quality/fid_reference.py")
    images, batch, threads, repeats = args.fid
    weights = os.path.join(tmp, "fid_inception.pt")
    check_run([args.python, reference, "write-weights", weights, "0"], env, "fid weights")
    sets = [os.path.join(tmp, f"fid_{name}.npz") for name in ("a", "b")]
    check_run([args.python, "-c", "import numpy as np, sys; r = np.random.default_rng(0); "
               f"[np.savez(p, r.integers(0, 256, ({images}, 28, 28), dtype=np.uint8)) "
               "for p in sys.argv[1:]]"] + sets, env, "fid images")
    thread_env = dict(env, OMP_NUM_THREADS=str(threads))
    rates = {"difftrain": [], "pytorch": []}
    for rep in range(repeats):
        log(f"fid: difftrain, 2 x {images} images, batch {batch}")
        report = os.path.join(tmp, "fid.json")
        rc, *_ = check_run([os.path.join(BUILD, "difftrain"), "fid", *sets, "--inception",
                            weights, "--batch", str(batch), "--device", args.device, "--out",
                            report], thread_env, "difftrain fid")
        if rc == 0:
            with open(report) as f:
                rates["difftrain"].append(2 * images / json.load(f)["seconds"])
        log(f"fid: PyTorch eager, 2 x {images} images, batch {batch}")
        rc, o, *_ = check_run([args.python, reference, "time", weights, *sets, str(batch),
                               str(threads), args.device], thread_env, "fid_reference.py time")
        if rc == 0:
            t = json.loads(o.strip().splitlines()[-1])
            rates["pytorch"].append(t["images"] / t["seconds"])
    ratio = [a / b for a, b in zip(rates["difftrain"], rates["pytorch"])]
    return {"images_per_set": images, "image_size": 28, "batch": batch, "threads": threads,
            "device": args.device, "difftrain_images_per_s": summary(rates["difftrain"]),
            "pytorch_images_per_s": summary(rates["pytorch"]), "ratio": summary(ratio)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/latest.json"))
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv/bin/python"))
    ap.add_argument("--channels-last-everywhere", action="store_true",
                    help="also time difftrain with model.channels_last for fp32")
    ap.add_argument("--only", help="comma-separated subset: loader,train_step,end_to_end,"
                                   "training,sampling,scaling,checkpointing,fid")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    want = (lambda k: only is None or k in only)
    t_start = time.monotonic()
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as launch/local.sh; for every process alike
    args.machine = machine_description()
    result = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": args.machine,
        "versions": versions(args.python),
        "environment": {"OMP_WAIT_POLICY": env["OMP_WAIT_POLICY"],
                        "threads": "OMP_NUM_THREADS and at::set_num_threads / "
                                   "torch.set_num_threads per measurement"},
    }
    # bf16 without native bf16 instructions (avx512_bf16 / amx_bf16) is emulated by oneDNN and
    # runs 8-25x slower than fp32 here: fewer steps, and the CIFAR-10 model once, on 2 threads.
    flags = set(read_cpuinfo().get("flags", "").split())
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    args.machine["native_bf16"] = native_bf16
    # With a GPU the training-step figures run on it (difftrain and both baselines), at a
    # GPU-sized batch; threads then only drive the host side.
    args.device = "cpu" if args.machine["cpu_only"] else "cuda"
    args.batch = {"fashion_mnist": 8, "cifar10_hybrid": 8, "cifar10_host_bound": 1} \
        if args.device == "cpu" else \
        {"fashion_mnist": 128, "cifar10_hybrid": 64, "cifar10_host_bound": 1}
    result["train_step_device"] = args.device
    if args.device == "cuda":
        n = (3, 3, 2) if args.quick else (20, 5, 5)
        plan = {"fashion_mnist": [("fp32", 2) + n, ("bf16", 2) + n],
                "cifar10_hybrid": [("fp32", 2) + n, ("bf16", 2) + n],
                "cifar10_host_bound": [("fp32", 2) + n, ("bf16", 2) + n]}
        args.loader_repeats = 1 if args.quick else 3
        train_steps, log_every = (30, 3) if args.quick else (1000, 50)
        args.sampling = [("ddim", 50, 8), ("ddpm", 1000, 1)] if args.quick else \
            [("ddim", 50, 16), ("ddpm", 1000, 4)]
        args.sampling_repeats = 1 if args.quick else 2
        args.checkpointing = (128, "bf16", (3, 2, 1) if args.quick else (10, 3, 3))
        args.fid = (256, 128, 2, 1) if args.quick else (2048, 128, 2, 2)
    elif args.quick:
        plan = {"fashion_mnist": [("fp32", 1, 2, 3, 1), ("fp32", 2, 2, 3, 1),
                                  ("bf16", 2, 1, 2, 0)],
                "cifar10_hybrid": [("fp32", 2, 1, 2, 0)],
                "cifar10_host_bound": [("fp32", 1, 5, 3, 1)]}
        args.loader_repeats = 1
        train_steps, log_every = 30, 3
        args.sampling = [("ddim", 50, 8), ("ddpm", 1000, 1)]
        args.sampling_repeats = 1
        args.checkpointing = (8, "fp32", (1, 1, 0))
        args.fid = (16, 16, 2, 1)
    else:
        bf16_steps = (5, 5, 2) if native_bf16 else (1, 3, 0)
        plan = {"fashion_mnist": [("fp32", 1, 5, 5, 2), ("fp32", 2, 5, 5, 2),
                                  ("bf16", 1) + bf16_steps, ("bf16", 2) + bf16_steps],
                "cifar10_hybrid": [("fp32", 1, 1, 3, 0), ("fp32", 2, 1, 3, 0)] +
                                  ([("bf16", 1, 1, 3, 0), ("bf16", 2, 1, 3, 0)]
                                   if native_bf16 else [("bf16", 2, 1, 1, 0)]),
                "cifar10_host_bound": [("fp32", 1, 20, 5, 2)]}
        args.loader_repeats = 3
        train_steps, log_every = 1000, 50
        args.sampling = [("ddim", 50, 16), ("ddpm", 1000, 4)]
        args.sampling_repeats = 2
        args.checkpointing = (32, "fp32", (1, 2, 1))
        args.fid = (64, 32, 2, 2)
    tmp = tempfile.mkdtemp(prefix="difftrain-bench-")
    seconds = result["section_seconds"] = {}

    def timed(name, fn, *a):
        t0 = time.monotonic()
        r = fn(*a)
        seconds[name] = round(time.monotonic() - t0, 1)
        return r

    try:
        if want("loader"):
            result["loader"] = timed("loader", loader_benchmark, args, env, tmp)
        if want("train_step"):
            result["train_step"] = timed("train_step", train_step_benchmarks, args, env, tmp,
                                           plan)
        if want("end_to_end"):
            result["end_to_end"] = timed("end_to_end", end_to_end_run, args, env, tmp,
                                         30 if args.quick else 120)
        checkpoint = None
        if want("training") or want("sampling"):
            result["training_memory"], checkpoint = timed(
                "training", training_run, args, env, tmp, train_steps, log_every, 2)
        if want("sampling"):
            result["sampling"] = timed("sampling", sampling_benchmark, args, env, tmp,
                                       checkpoint, 2)
        if want("checkpointing"):
            result["checkpointing"] = timed("checkpointing", checkpointing_benchmark, args, env,
                                            tmp)
        if want("fid"):
            result["fid"] = timed("fid", fid_benchmark, args, env, tmp)
        scaling = os.path.join(ROOT, "bench/bench_scaling.sh")
        if want("scaling") and os.path.exists(scaling):
            log("scaling (bench/bench_scaling.sh)")
            t0 = time.time()
            rc, _, _, wall, _ = check_run(["bash", scaling] + (["--quick"] if args.quick else []),
                                          env, "bench_scaling.sh")
            seconds["scaling"] = round(wall, 1)
            path = os.path.join(ROOT, "bench/results/scaling.json")
            if rc != 0 and not (os.path.exists(path) and os.path.getmtime(path) >= t0):
                result["scaling"] = {"skipped": f"bench/bench_scaling.sh failed (exit {rc})"}
            elif os.path.exists(path):
                with open(path) as f:
                    result["scaling"] = json.load(f)
                if rc != 0:
                    result["scaling"]["exit_code"] = rc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if only and os.path.exists(args.out):
        # A partial run updates its sections of the existing results and keeps the others.
        with open(args.out) as f:
            previous = json.load(f)
        previous.update({k: v for k, v in result.items() if k not in ("section_seconds",)})
        previous.setdefault("section_seconds", {}).update(seconds)
        previous["partial_update"] = sorted(set(previous.get("partial_update", [])) | only)
        result = previous
    result["machine"]["load_average_end"] = os.getloadavg()
    result["total_seconds"] = time.monotonic() - t_start
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    os.replace(args.out + ".tmp", args.out)
    log(f"wrote {args.out} ({result['total_seconds']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Publishes what a GPU check found (launch/gpu_check.sh, docs/gpu-check.md; stdlib only): keeps
its summary.json in bench/results/ under the date and the GPU, then regenerates, from the newest
one kept there, the GPU section of docs/performance.md (between <!-- gpu-check:begin --> and
<!-- gpu-check:end -->) and the GPU bullet of README.md (between <!-- gpu:begin --> and
<!-- gpu:end -->).

  bench/publish_gpu_check.py SUMMARY.json   keep it (bench/results/gpu_check_DATE_GPU.json), render
  bench/publish_gpu_check.py                render again from what bench/results/ holds
Options: --results DIR, --doc FILE, --readme FILE (the repository's by default); --print writes
the two blocks to stdout instead; --allow-cpu keeps a --cpu run's summary too (to test this
script: its figures are a CPU's, and the blocks say so).

A summary is refused, naming what is wrong, when it is not a GPU check's (no check, machine or
parts record) or comes from a --cpu run. Keeping the same check twice rewrites one file.
"""
import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_MARKERS = ("<!-- gpu-check:begin -->", "<!-- gpu-check:end -->")
README_MARKERS = ("<!-- gpu:begin -->", "<!-- gpu:end -->")
NONE_YET = ("- **GPUs**: no figures yet. The [GPU check](docs/gpu-check.md) is ready for the "
            "first GPU; it\n  also tests and times `model.fused_group_norm`, CUDA kernels for "
            "GroupNorm + SiLU that read\n  channels-last bf16 in place (off by default until "
            "then).")
# A variant within this much of the default step's speed is the same speed: the bench times
# 3 repeats of 10 steps, and the medians of two runs of the same step differ by a few percent.
SAME_SPEED = 0.03
IMPLEMENTATIONS = {"difftrain": "difftrain", "pytorch_plain": "PyTorch eager, plain",
                   "pytorch_tuned": "PyTorch eager, tuned"}
PHASES = ("forward", "backward", "optimizer", "ema")


def fail(message):
    sys.exit(f"publish_gpu_check: {message}")


def load_summary(path, allow_cpu):
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: not a readable JSON file ({e})")
    missing = [k for k in ("check", "machine", "parts") if k not in summary]
    if missing:
        fail(f"{path}: not a GPU check's summary.json: no {', '.join(missing)} record")
    if summary["check"].get("mode") != "gpu" and not allow_cpu:
        fail(f"{path}: a --cpu run's summary (mode {summary['check'].get('mode')!r}); its "
             "figures are not a GPU's (--allow-cpu keeps it anyway)")
    if "started" not in summary["check"]:
        fail(f"{path}: the check record has no start time")
    return summary


def gpu_name(summary):
    """'NVIDIA H200' from nvidia-smi's 'NVIDIA H200, 143771 MiB, 580.95.05'; 'CPU' without one."""
    gpu = summary["machine"].get("gpu") or ""
    if summary["check"].get("mode") != "gpu" or gpu.startswith("none"):
        return "CPU"
    return gpu.splitlines()[0].split(",")[0].strip() or "unknown GPU"


def result_name(summary):
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name(summary).lower()).strip("-")
    return f"gpu_check_{summary['check']['started'][:10]}_{slug}.json"


def newest(results_dir):
    """(file name, summary) of the latest check kept in results_dir, or None."""
    found = []
    for path in glob.glob(os.path.join(results_dir, "gpu_check_*.json")):
        with open(path) as f:
            summary = json.load(f)
        found.append((summary["check"]["started"], os.path.basename(path), summary))
    if not found:
        return None
    _, name, summary = max(found)
    return name, summary


def num(v, fmt="{:.1f}", missing="–"):
    return missing if v is None else fmt.format(v)


def percent(v):
    return num(None if v is None else 100 * v, "{:.1f} %")


def rate(v):
    """images/s: whole numbers from 100 up, three significant digits below"""
    return num(v, "{:.0f}" if v is not None and v >= 100 else "{:.3g}")


def phases(entry):
    p = entry.get("phases_ms") or {}
    return " / ".join(num(p.get(k), "{:.1f}") for k in PHASES)


def decisions(bench, cuda_tests):
    """What the variants decide (docs/gpu-check.md, "What the figures decide"), one line each."""
    runs, out = bench.get("runs", {}), []

    def compare(speed):
        if speed is None:
            return "not timed"
        if abs(speed - 1) <= SAME_SPEED:
            return "the same speed within the bench's noise (±3 %)"
        return f"{speed:.2f}× the speed"

    for key, layout in runs.items():
        if not key.startswith("other_layout_"):
            continue
        precision = key[len("other_layout_"):]
        other = "channels-last" if layout.get("channels_last") else "channels-first"
        default = "channels-last" if layout.get("default_channels_last") else "channels-first"
        speed = layout.get("speed_vs_default")
        verdict = ("keep `model.channels_last: auto` as it is on CUDA" if speed is None or
                   speed <= 1 + SAME_SPEED else
                   f"`model.channels_last: auto` should resolve to {other} on CUDA in {precision}")
        out.append(f"- **Memory layout** ({precision}): {other} against the default "
                   f"{default}: {compare(speed)}; {verdict}.")
    for key, fused in runs.items():
        if not key.startswith("fused_group_norm_"):
            continue
        precision = key[len("fused_group_norm_"):]
        speed = fused.get("speed_vs_default")
        test = next((t["status"] for t in cuda_tests.get("tests", [])
                     if t["name"].endswith("FusedGroupNormKernelsMatchTheReference")), "not run")
        if test != "passed":
            verdict = (f"keep it off: `Cuda.FusedGroupNormKernelsMatchTheReference` {test}")
        elif speed is not None and speed > 1 + SAME_SPEED:
            verdict = "its kernels are right and faster: make `auto` its default, fusing on CUDA"
        else:
            verdict = "its kernels are right but not faster: keep it off"
        memory = fused.get("memory_vs_default")
        out.append(f"- **Fused GroupNorm** ({precision}, "
                   f"{'channels-last' if fused.get('channels_last') else 'channels-first'}) "
                   f"against the default: {compare(speed)}"
                   + (f", {memory:.2f}× the peak memory" if memory else "") + f"; {verdict}.")
    trace = runs.get("bf16", {}).get("difftrain", {}).get("cuda_trace") or \
        runs.get("fp32", {}).get("difftrain", {}).get("cuda_trace")
    if trace and trace.get("gpu_busy_ms_per_step"):  # nothing to say of a CPU's trace
        busy = trace.get("gpu_busy_fraction") or 0
        verdict = ("the GPU is the bottleneck: faster kernels, not fewer launches, would help"
                   if busy >= 0.9 else
                   "the GPU waits for the host for part of each step: launch gaps or host "
                   "syncs (the Chrome trace in logs.tar.gz shows where)")
        out.append(f"- **Host or GPU**: the GPU was busy {percent(busy)} of the traced step's "
                   f"wall time; {verdict}.")
    return out


def header(name, s):
    check, machine = s["check"], s["machine"]
    cpu_note = (" **A `--cpu` rehearsal: these are a CPU's figures, not a GPU's.**"
                if check.get("mode") != "gpu" else "")
    return [f"### {check['started'][:10]}: {gpu_name(s)}", "",
            f"Generated by `bench/publish_gpu_check.py` from "
            f"[`bench/results/{name}`](../bench/results/{name}): `launch/gpu_check.sh` at commit "
            f"{check.get('commit', '?')}, started {check['started']}, "
            f"{num(check.get('total_s'), '{:.0f}', '?')} s of its {check.get('budget_s', '?')} s "
            f"budget.{cpu_note} Machine: {machine.get('gpu', '?')}"
            + (f" (compute mode, MIG: {machine['gpu_modes']})" if machine.get("gpu_modes") else "")
            + f"; {machine.get('cores', '?')} "
            f"cores ({machine.get('cpu', '?')}); torch {machine.get('torch', '?')}; "
            f"{machine.get('nvcc') or 'no nvcc'}."]


def parts_table(parts):
    out = ["| part | status | seconds | note |", "|---|---|---|---|"]
    for part in ("setup", "build", "tests", "bench", "real_run"):
        p = parts.get(part)
        if p:
            note = (p.get("note") or "").replace("|", "\\|")
            out.append(f"| {part} | {p.get('status', '?')} | {p.get('seconds', '–')} | {note} |")
        else:
            out.append(f"| {part} | not run | – | |")
    return out


def test_counts(parts, part, title):
    p = parts.get(part)
    if not p:
        return [f"**{title}**: not run."]
    c = p.get("counts", {})
    retried = (f", {c['passed_on_retry']} of them only on the retry with `NCCL_CUMEM_ENABLE=0`"
               if c.get("passed_on_retry") else "")
    failed = [t["name"] for t in p.get("tests", []) if t["status"] == "failed"]
    return [f"**{title}**: {c.get('passed', 0)} passed{retried}, {c.get('failed', 0)} failed, "
            f"{c.get('skipped', 0)} skipped."
            + (f" Failed: {', '.join('`' + n + '`' for n in failed)}." if failed else "")]


def step_table(bench):
    """The training step of every implementation at each precision, as the bench record has it."""
    runs, timing = bench.get("runs", {}), bench.get("timing") or {}
    flops, parameters = bench.get("forward_flops_per_image"), bench.get("parameters")
    out = [f"**Training step**: the CIFAR-10 model "
           f"({num(None if parameters is None else parameters / 1e6, '{:.2f}', '?')} M "
           f"parameters, `configs/cifar10_hybrid.yaml`), batch {bench.get('batch', '?')} on the "
           f"one device, {timing.get('warmup', '?')} warm-up steps, then the median of "
           f"{timing.get('repeats', '?')} × {timing.get('steps_per_repeat', '?')} timed steps"
           + (f" run as the trainer runs them; the phases in {timing.get('steps_per_repeat')} "
              f"more steps, the device synchronised at each phase boundary (they add up to more "
              f"than the step)" if timing.get("phase_timing") == "separate" else "")
           + f". MFU = 3 × {num(None if flops is None else flops / 1e9, '{:.2f}')} GFLOP "
           f"forward × images/s / 989 TFLOP/s (dense bf16, for fp32 too). fp32 is LibTorch's "
           f"default TF32 (convolutions in TF32, matmuls in fp32) on both sides. Ratio: "
           f"difftrain's images/s over the row's.", "",
           "| precision | implementation | images/s | step, ms | forward / backward / optimizer "
           "/ EMA, ms | MFU | peak memory, MiB | difftrain's ratio | same step as difftrain's |",
           "|---|---|---|---|---|---|---|---|---|"]
    for precision in ("bf16", "fp32"):
        row = runs.get(precision) or {}
        for impl, label in IMPLEMENTATIONS.items():
            e = row.get(impl)
            if not e:
                continue
            ratio = row.get("ratio_vs_" + impl[8:]) if impl != "difftrain" else None
            c = e.get("same_computation_check")
            same = ("–" if not c else
                    f"{'yes' if c['ok'] else '**no**'} (loss {c['loss_rel_diff']:.0e}, "
                    f"gradient norm {c['grad_norm_rel_diff']:.0e} apart)")
            out.append(f"| {precision} | {label} | {rate(e.get('images_per_s'))} | "
                       f"{num(e.get('step_ms'))} | {phases(e)} | {percent(e.get('mfu'))} | "
                       f"{num(e.get('peak_device_memory_mb'), '{:.0f}')} | "
                       f"{num(ratio, '{:.2f}×')} | {same} |")
    return out


def targets_line(bench):
    labels = {"bf16_ratio_vs_plain": ("bf16 images/s against plain PyTorch eager", "{:.2f}×"),
              "bf16_mfu": ("bf16 MFU", None)}
    items = []
    for key, t in (bench.get("targets") or {}).items():
        label, fmt = labels.get(key, (key, "{}"))
        show = percent if fmt is None else fmt.format
        items.append(f"{label} {show(t['value'])} (target {show(t['target'])}: "
                     f"{'met' if t['met'] else '**not met**'})")
    return ["**Targets**: " + "; ".join(items) + "."] if items else []


def trace_lines(runs, precision):
    trace = runs.get(precision, {}).get("difftrain", {}).get("cuda_trace")
    if not trace:
        return []
    if "error" in trace:  # CUPTI refused, say; the timings stand without it
        return [f"**Where the time goes** (difftrain, {precision}): no kernel trace, the Kineto "
                f"profiler failed: {trace['error']}"]
    out = [f"**Where the time goes** (difftrain, {precision}, {trace.get('steps')} steps under "
           f"the Kineto profiler): the GPU busy {num(trace.get('gpu_busy_ms_per_step'))} ms of "
           f"{num(trace.get('wall_ms_per_step'))} ms a step "
           f"({percent(trace.get('gpu_busy_fraction'))}), "
           f"{num(trace.get('gpu_activities_per_step'), '{:.0f}')} GPU activities a step."]
    top = trace.get("top_gpu_activities") or []
    if top:
        out += ["", "| GPU activity | ms a step | count a step |", "|---|---|---|"]
        for a in top[:8]:
            name = a["name"].replace("|", "\\|")
            out.append(f"| `{name[:90]}` | {num(a['ms_per_step'], '{:.2f}')} | "
                       f"{num(a['count_per_step'], '{:.0f}')} |")
    return out


VARIANTS = {"other_layout_": None,  # named by the layout it ran in
            "fused_group_norm_": "fused GroupNorm (`model.fused_group_norm`)",
            "cudnn_heuristics_": "cuDNN's heuristics (`training.cudnn_benchmark: false`)",
            "checkpointed_": "gradient checkpointing (`model.use_checkpoint`)"}


def variants_table(runs):
    variants = [(k, v) for k, v in runs.items() if k not in ("fp32", "bf16")]
    if not variants:
        return []
    out = ["**Variants of difftrain's step**, each against the default step at the same "
           "precision:", "", "| variant | images/s | speed | peak memory, MiB | memory |",
           "|---|---|---|---|---|"]
    for key, v in variants:
        prefix, precision = key.rsplit("_", 1)[0] + "_", key.rsplit("_", 1)[1]
        label = VARIANTS.get(prefix, key) or (
            "channels-last" if v.get("channels_last") else "channels-first")
        speed = next((v[k] for k in ("speed_vs_default", "speed_vs_benchmark_mode",
                                     "speed_vs_without") if k in v), None)
        memory = next((v[k] for k in ("memory_vs_default", "memory_vs_without") if k in v), None)
        out.append(f"| {label}, {precision} | {rate(v.get('images_per_s'))} | "
                   f"{num(speed, '{:.2f}×')} | {num(v.get('peak_device_memory_mb'), '{:.0f}')} | "
                   f"{num(memory, '{:.2f}×')} |")
    return out


def real_run_line(r):
    if not r or not r.get("steps"):
        return ["**The real run**: " + (r.get("status", "not run") if r else "not run") + "."]
    e = r.get("eval") or {}
    bpd = r.get("heldout_bpd") or []
    return [f"**The real run**: `configs/fashion_mnist.yaml` on one device for "
            f"{r.get('training_seconds')} s: {r.get('steps')} steps, "
            f"{rate(r.get('images_per_s_median'))} images/s (median of the log lines), "
            f"{num(r.get('step_time_ms_median'))} ms a step, of which "
            f"{num(r.get('data_wait_max_ms_median'), '{:.2f}')} ms waiting for data"
            + (f"; peak device memory {r['device_peak_allocated_mb']:.0f} MiB"
               if r.get("device_peak_allocated_mb") else "")
            + ". Held-out bits/dim while training: "
            + ", ".join(f"{b['bpd']:.2f} ± {b['stderr']:.2f} at step {b['step']}" for b in bpd)
            + (f". The full bound on {e.get('num_images')} test images (EMA "
               f"{e.get('ema_rate')}): **{num(e.get('total_bpd'), '{:.2f}')} ± "
               f"{num(e.get('total_bpd_stderr'), '{:.2f}')} bits/dim**, in "
               f"{num(e.get('seconds'))} s." if e else ".")]


def render_doc(name, s):
    """The performance.md section: one block of lines each, blank lines between them."""
    parts = s["parts"]
    bench = parts.get("bench", {})
    runs = bench.get("runs", {})
    found = decisions(bench, parts.get("cuda_tests", {}))
    blocks = [header(name, s), parts_table(parts),
              test_counts(parts, "cuda_tests", "CUDA tests (`ctest -L cuda`)"),
              test_counts(parts, "nccl", "NCCL under mpirun, 1 and 2 ranks on the one GPU"),
              step_table(bench), targets_line(bench),
              trace_lines(runs, "bf16"), trace_lines(runs, "fp32"), variants_table(runs),
              (["**What the figures decide** ([gpu-check.md](gpu-check.md#what-the-figures-"
                "decide)):", ""] + found) if found else [],
              real_run_line(parts.get("real_run"))]
    return "\n\n".join("\n".join(b) for b in blocks if b)


def render_readme(name, s):
    runs = s["parts"].get("bench", {}).get("runs", {})
    gpu = gpu_name(s)
    date = s["check"]["started"][:10]
    what = []
    for precision in ("bf16", "fp32"):
        row = runs.get(precision, {})
        d = row.get("difftrain")
        if not d:
            continue
        vs = [f"{row[k]:.2f}× {label}" for k, label in
              (("ratio_vs_plain", "plain eager PyTorch"), ("ratio_vs_tuned", "a tuned eager step"))
              if k in row]
        what.append(f"{precision}: **{rate(d['images_per_s'])} images/s**"
                    + (f", MFU {percent(d.get('mfu'))}" if d.get("mfu") is not None else "")
                    + (f", {' and '.join(vs)}" if vs else ""))
    counts = []
    for part, label in (("cuda_tests", "CUDA tests"), ("nccl", "NCCL tests")):
        c = s["parts"].get(part, {}).get("counts")
        if c:
            counts.append(f"{c['passed']} of {c['passed'] + c['failed']} {label} passed")
    real = s["parts"].get("real_run", {})
    rehearsal = " (a `--cpu` rehearsal, not a GPU)" if s["check"].get("mode") != "gpu" else ""
    text = (f"- **GPUs** ({date}, one {gpu}{rehearsal}; "
            f"[details](docs/performance.md#gpu-check-results)): the CIFAR-10 model's step at "
            f"batch {s['parts'].get('bench', {}).get('batch', '?')}, "
            + ("; ".join(what) if what else "not measured")
            + ". Targets: 1.3× plain PyTorch and 20 % MFU in bf16.")
    if real.get("images_per_s_median"):
        text += (f" The demo config trained at {rate(real['images_per_s_median'])} images/s on it"
                 + (f" ({real['eval']['total_bpd']:.2f} bits/dim after {real['training_seconds']}"
                    f" s)" if real.get("eval") else "") + ".")
    if counts:
        text += " " + "; ".join(counts) + "."
    return wrap(text, 100)


def wrap(text, width):
    """A bullet wrapped to width, its continuation lines indented by two spaces."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "  " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join(lines + [line])


def replace_block(path, markers, block):
    with open(path) as f:
        text = f.read()
    begin, end = markers
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        fail(f"{path}: no {begin} ... {end} block to replace")
    new = text[:i + len(begin)] + "\n" + block + "\n" + text[j:]
    if new != text:
        with open(path + ".tmp", "w") as f:
            f.write(new)
        os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", nargs="?", help="a GPU check's summary.json to keep")
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "performance.md"))
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    ap.add_argument("--print", action="store_true", help="the blocks to stdout, no file written")
    ap.add_argument("--allow-cpu", action="store_true", help="keep a --cpu run's summary too")
    a = ap.parse_args()

    if a.summary:
        summary = load_summary(a.summary, a.allow_cpu)
        name = result_name(summary)
        if not a.print:
            os.makedirs(a.results, exist_ok=True)
            path = os.path.join(a.results, name)
            with open(path + ".tmp", "w") as f:
                json.dump(summary, f, indent=1)
                f.write("\n")
            os.replace(path + ".tmp", path)
            print(f"kept {path}")
        found = (name, summary)
    else:
        found = newest(a.results)
    if found:
        doc, readme = render_doc(*found), render_readme(*found)
    else:
        doc, readme = "None yet: no GPU check has been published.", NONE_YET
    if a.print:
        print(doc + "\n\n" + readme)
        return
    replace_block(a.doc, DOC_MARKERS, doc)
    replace_block(a.readme, README_MARKERS, readme)
    print(f"rendered {found[0] if found else 'no GPU check'} into {a.doc} and {a.readme}")


if __name__ == "__main__":
    main()

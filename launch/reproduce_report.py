#!/usr/bin/env python3
"""Writes the report of launch/reproduce.sh (docs/results.md and its plot) from the runs' outputs
alone: every number in it is read from the files below. Standard library only.

  python3 launch/reproduce_report.py [--runs runs/reproduce] [--report docs/results.md]
                                     [--bin build/difftrain]

Reads, for every run directory under --runs that finished training (RUN/trained.cmd):
  RUN/config.yaml              the resolved config (objective, batch, time limit)
  RUN/metrics.jsonl            log lines (loss, grad_norm, images_per_s) and held-out estimates
  RUN/timestep_metrics.jsonl   draws per band of timesteps (importance sampling at work)
  RUN/machine.txt              the CPU and its load average before and after training
  RUN/eval/ema_sweep.csv       the post-hoc EMA sweep on validation images
  RUN/eval/test.json           the full bound of the chosen EMA weights on the test images
  RUN/*.cmd.seconds            how long each step took
Writes REPORT (Markdown) and REPORT's stem + _heldout_bpd.png / .csv (the plot is drawn by
`difftrain plot`). The paper comparison is prose written by hand between the markers
<!-- prose:NAME --> and <!-- /prose -->: regenerating keeps what is there.
"""
import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The runs, as launch/reproduce.sh names them.
RUNS = {
    "a": "L_simple, fixed small variance (σ² = β̃)",
    "b": "L_simple, fixed large variance (σ² = β)",
    "c": "L_hybrid, learned range, cosine schedule",
    "d": "L_hybrid, learned range, linear schedule",
    "e": "L_vlb, uniform timesteps",
    "f": "L_vlb, importance sampling (loss-second-moment)",
}
# The paper's findings as pairs (baseline, the run the paper says is better).
FINDINGS = [
    ("finding1", "1. A learned variance with L_hybrid beats L_simple with a fixed variance "
     "(§3.1, Table 1)", [("a", "c"), ("b", "c")]),
    ("finding2", "2. The cosine schedule beats the linear one (§3.2)", [("d", "c")]),
    ("finding3", "3. L_vlb trains smoothly and reaches the best NLL with importance sampling "
     "(§3.3, Figures 6-7)", [("e", "f"), ("c", "f")]),
]
PLACEHOLDER = ("_Placeholder, to be written by hand after the full run: did it reproduce at this "
               "scale, by how much, with what uncertainty._")
# The share of timestep draws in the lowest tenth of t that uniform sampling gives.
UNIFORM_SHARE = 0.1


def fail(msg):
    print(f"reproduce_report.py: {msg}", file=sys.stderr)
    sys.exit(2)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_config(path):
    """The two-level keys of difftrain's resolved config.yaml ("diffusion.loss": "hybrid")."""
    keys, section = {}, ""
    with open(path) as f:
        for line in f:
            m = re.match(r"^(\s*)([A-Za-z_]+):\s*(.*?)\s*$", line)
            if not m:
                continue
            indent, key, value = m.groups()
            if not indent:
                section = key
                if value:
                    keys[key] = value
            elif len(indent) == 2:
                keys[f"{section}.{key}"] = value
    return keys


def read_seconds(path):
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def read_machine(path):
    """RUN/machine.txt's "before training: cpu: X" lines as {"before training.cpu": "X"}."""
    lines = {}
    try:
        with open(path) as f:
            for line in f:
                phase, _, rest = line.rstrip("\n").partition(": ")
                name, _, value = rest.partition(": ")
                lines[f"{phase}.{name}"] = value
    except OSError:
        return {}
    return lines


class Run:
    def __init__(self, path):
        self.path = path
        self.dir = os.path.basename(path)
        m = re.match(r"^([a-f])_.*?(?:_seed(\d+))?$", self.dir)
        if not m:
            raise ValueError(f"{path}: not a run of launch/reproduce.sh (a_... to f_...)")
        self.letter, self.seed = m.group(1), int(m.group(2) or 0)
        self.config = read_config(os.path.join(path, "config.yaml"))
        metrics = read_jsonl(os.path.join(path, "metrics.jsonl"))
        self.logs = [r for r in metrics if "images_per_s" in r]
        self.heldout = [r for r in metrics if "bpd_estimate" in r]
        if not self.logs:
            raise ValueError(f"{path}/metrics.jsonl: no log lines")
        self.batch = int(self.config["training.batch_size"])
        self.steps = self.logs[-1]["step"]
        self.elapsed = self.logs[-1]["elapsed_s"]
        self.timesteps = read_jsonl(os.path.join(path, "timestep_metrics.jsonl")) \
            if os.path.exists(os.path.join(path, "timestep_metrics.jsonl")) else []
        self.machine = read_machine(os.path.join(path, "machine.txt"))
        self.sweep = []
        sweep_csv = os.path.join(path, "eval", "ema_sweep.csv")
        if os.path.exists(sweep_csv):
            with open(sweep_csv) as f:
                self.sweep = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        test_json = os.path.join(path, "eval", "test.json")
        self.test = None
        if os.path.exists(test_json):
            with open(test_json) as f:
                self.test = json.load(f)
        self.seconds = {part: read_seconds(os.path.join(path, stamp)) for part, stamp in
                        [("training", "trained.cmd.seconds"), ("sweep", "eval/ema.cmd.seconds"),
                         ("test", "eval/test.cmd.seconds")]}

    @property
    def label(self):
        return self.letter if self.seed == 0 else f"{self.letter} (seed {self.seed})"

    def images_per_s(self):
        # The first line includes start-up; the lines with a held-out estimate or a snapshot
        # in their interval are slower, hence the median.
        v = [r["images_per_s"] for r in self.logs[1:]] or [self.logs[0]["images_per_s"]]
        return statistics.median(v), min(v), max(v)

    def chosen_sigma(self):
        return min(self.sweep, key=lambda r: r["bits_per_dim"]) if self.sweep else None

    def last_third(self):
        return self.logs[len(self.logs) - max(len(self.logs) // 3, 1):]

    def low_t_share(self):
        """Share of the timestep draws in the lowest tenth of t over the last third of the
        per-t statistics lines (None without them)."""
        lines = self.timesteps[len(self.timesteps) - max(len(self.timesteps) // 3, 1):] \
            if self.timesteps else []
        total = low = 0
        for line in lines:
            buckets = line["timestep_buckets"]
            T = buckets[-1]["t_end"]
            for b in buckets:
                total += b["count"]
                if b["t_end"] <= T / 10:
                    low += b["count"]
        return low / total if total else None


def fmt(v, digits=3):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) \
        else f"{v:.{digits}f}"


def duration(seconds):
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def paired(first, second):
    """Mean and standard error over images of second - first, image by image: the runs were
    evaluated on the same images with the same noise (launch/reproduce.sh's --seed)."""
    a, b = first.test, second.test
    if a["seed"] != b["seed"] or a["data"] != b["data"]:
        return None
    ia = dict(zip(a["per_image"]["index"], a["per_image"]["total_bpd"]))
    ib = dict(zip(b["per_image"]["index"], b["per_image"]["total_bpd"]))
    common = sorted(set(ia) & set(ib))
    # Per real pixel dim (cli/bound_eval.hpp): equal to per dim for unpadded models.
    fa = a["dims"] / a["real_dims"]
    fb = b["dims"] / b["real_dims"]
    d = [ib[i] * fb - ia[i] * fa for i in common]
    if not d:
        return None
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return statistics.mean(d), se, len(d)


def write_plot(runs, report, binary):
    """Held-out bits/dim against training images, one column per run: the runs share the
    estimate's interval, so their rows line up; a run with fewer steps leaves nan (a gap)."""
    stem = os.path.splitext(report)[0] + "_heldout_bpd"
    steps = sorted({r["step"] for run in runs for r in run.heldout})
    by_run = [{r["step"]: r["bpd_estimate"] for r in run.heldout} for run in runs]
    batch = runs[0].batch
    columns = [run.dir for run in runs]
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["training_images"] + columns)
        for s in steps:
            w.writerow([s * batch] + [repr(v[s]) if s in v else "nan" for v in by_run])
    if any(run.batch != batch for run in runs):
        fail("the runs have different batch sizes: their held-out curves do not share an x axis")
    cmd = [binary, "plot", "--csv", stem + ".csv", "--x", "training_images", "--width", "1000",
           "--title", "held-out bits/dim (validation, raw weights) against training images",
           "--out", stem + ".png"]
    for c in columns:
        cmd += ["--y", c]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return stem + ".png"


def old_prose(report):
    """The hand-written blocks of an existing report, by name."""
    if not os.path.exists(report):
        return {}
    with open(report) as f:
        text = f.read()
    return dict(re.findall(r"<!-- prose:(\w+) -->\n(.*?)\n<!-- /prose -->", text, re.S))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/reproduce", help="launch/reproduce.sh's --out")
    ap.add_argument("--report", default="docs/results.md")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "difftrain"))
    args = ap.parse_args()
    if not os.path.isdir(args.runs):
        fail(f"--runs {args.runs}: no such directory (run launch/reproduce.sh first)")
    runs = []
    for name in sorted(os.listdir(args.runs)):
        path = os.path.join(args.runs, name)
        if os.path.isfile(os.path.join(path, "trained.cmd")):
            try:
                runs.append(Run(path))
            except (OSError, ValueError, KeyError) as e:
                fail(str(e))
    if not runs:
        fail(f"{args.runs}: no finished runs (RUN/trained.cmd)")
    runs.sort(key=lambda r: (r.seed, r.letter))
    prose = old_prose(args.report)
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    png = write_plot(runs, args.report, args.bin)

    out = []
    emit = out.append
    regenerate = (f"python3 launch/reproduce_report.py --runs {args.runs} "
                  f"--report {args.report}")
    emit("# Results: Improved DDPM's likelihood findings at small scale\n")
    emit("Generated from the outputs of `launch/reproduce.sh` (how the runs are made and chosen: "
         "[reproduce.md](reproduce.md)); every number below is read from them. Regenerate with\n")
    emit(f"```sh\n{regenerate}\n```\n")
    emit("The paper comparison (the prose under each finding) is written by hand; regenerating "
         "keeps it.\n")

    # Where and how.
    machines = sorted({(r.machine.get("after training.cpu", "unknown"),
                        r.machine.get("after training.cores", "?"),
                        r.machine.get("after training.avx512_bf16", "?")) for r in runs})
    emit("## Setup\n")
    for cpu, cores, bf16 in machines:
        emit(f"- Machine: {cpu}, {cores} cores, AVX-512 BF16: {bf16}.")
    first = runs[0].config
    emit(f"- Data: {first.get('data.train', '?')} (training), "
         f"{first.get('data.validation', '?')} (validation: EMA choice and held-out curve), "
         f"{runs[0].test['data'] if runs[0].test else '?'} (test: the numbers below).")
    size = first.get("model.image_size", "?")
    padded = first.get("data.pad_to", "0") not in ("0", "")
    emit(f"- Model: {size}x{size} input ({'padded' if padded else 'unpadded'}), channel_mult "
         f"{first.get('model.channel_mult', '?')}, attention at "
         f"{first.get('model.attention_resolutions', '?')}; T = {first.get('diffusion.steps', '?')}; "
         f"global batch {runs[0].batch} on 2 ranks x 1 thread; lr "
         f"{float(first.get('training.lr', 'nan')):g}; training seed(s) "
         f"{', '.join(sorted({str(r.seed) for r in runs}))}.")
    emit(f"- Training time limit per run: {float(first.get('training.max_time', 'nan')):g} s.\n")

    # The table.
    emit("## Bits/dim on the test images\n")
    test_runs = [r for r in runs if r.test]
    if test_runs:
        t0 = test_runs[0].test
        emit(f"The full variational bound (T network calls per image) of each run's post-hoc EMA "
             f"weights on the same {t0['num_images']} test images with the same noise "
             f"(`--seed {t0['seed']}`), per real pixel dim ({t0['real_dims']} dims per image); "
             f"± is the standard error over images. Steps and images/s are the training run's "
             f"(images/s: median of the log lines, min–max in brackets). The EMA σ_rel is the "
             f"sweep point with the lowest bound on the validation images.\n")
    emit("| run | objective | steps | training images | images/s | EMA σ_rel | "
         "held-out estimate at the end (validation, raw weights) | **test bits/dim** | L_0 | "
         "Σ L_t (t ≥ 1) |")
    emit("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        med, lo, hi = r.images_per_s()
        best = r.chosen_sigma()
        last = r.heldout[-1] if r.heldout else None
        held = (f"{fmt(last['bpd_estimate'])} ± {fmt(last['bpd_standard_error'])} "
                f"(step {last['step']})" if last else "n/a")
        if r.test:
            t = r.test
            bpd = (f"**{fmt(t['total_bpd_real_pixels'])} ± "
                   f"{fmt(t['total_bpd_real_pixels_stderr'])}**")
            if t["dims"] != t["real_dims"]:
                bpd += f" ({fmt(t['total_bpd'])} per padded dim)"
            l0, lt = fmt(t["decoder_bpd"]), fmt(t["terms_bpd"])
        else:
            bpd = l0 = lt = "not evaluated"
        emit(f"| {r.label} | {RUNS[r.letter]} | {r.steps} | {r.steps * r.batch} | "
             f"{med:.1f} ({lo:.1f}–{hi:.1f}) | {fmt(best['sigma_rel'], 2) if best else 'n/a'} | "
             f"{held} | {bpd} | {l0} | {lt} |")
    emit("")
    emit("L_0 (the decoder) and Σ L_t are per dim of the model's input; L_T (the prior) is "
         "negligible.\n")

    # The findings, paired image by image.
    emit("## The findings, image by image\n")
    emit("Differences of the test bound, the paper's better run minus its baseline, image by "
         "image (same images, same noise): negative means the paper's better run is better "
         "here. ± is the standard error of the mean difference; z = difference / standard "
         "error.\n")
    for seed in sorted({r.seed for r in runs}):
        by_letter = {r.letter: r for r in runs if r.seed == seed and r.test}
        if len(by_letter) < 2:
            continue
        if seed:
            emit(f"Training seed {seed}:\n")
        emit("| finding | baseline → paper's better run | baseline | better run | difference | z |")
        emit("|---|---|---|---|---|---|")
        for _, title, pairs in FINDINGS:
            for base, better in pairs:
                if base not in by_letter or better not in by_letter:
                    continue
                p = paired(by_letter[base], by_letter[better])
                if not p:
                    continue
                d, se, n = p
                z = f"{d / se:+.1f}" if se > 0 else "n/a"  # se is nan for one image
                emit(f"| {title.split('.')[0]} | {base} → {better} | "
                     f"{fmt(by_letter[base].test['total_bpd_real_pixels'])} | "
                     f"{fmt(by_letter[better].test['total_bpd_real_pixels'])} | "
                     f"{d:+.3f} ± {fmt(se)} ({n} images) | {z} |")
        emit("")

    # Across training seeds: how much of a difference is the seed's.
    by_seed = {}
    for r in runs:
        if r.test:
            by_seed.setdefault(r.letter, {})[r.seed] = r
    if any(len(seeds) > 1 for seeds in by_seed.values()):
        emit("Across training seeds: each run trained again with another seed (same data, "
             "steps limited by the same wall time) and evaluated on the same images with the same "
             "noise. ± is the standard deviation over seeds, the spread that the standard errors "
             "above (over images, one seed) leave out.\n")
        emit("| run | seeds | test bits/dim, mean ± sd over seeds | per seed |")
        emit("|---|---|---|---|")
        for letter in sorted(by_seed):
            seeds = sorted(by_seed[letter])
            if len(seeds) < 2:
                continue
            v = [by_seed[letter][s].test["total_bpd_real_pixels"] for s in seeds]
            emit(f"| {letter} | {', '.join(map(str, seeds))} | {fmt(statistics.mean(v))} ± "
                 f"{fmt(statistics.stdev(v))} | {', '.join(fmt(x) for x in v)} |")
        emit("")
        rows = []
        for _, title, pairs in FINDINGS:
            for base, better in pairs:
                seeds = sorted(set(by_seed.get(base, {})) & set(by_seed.get(better, {})))
                diffs = [paired(by_seed[base][s], by_seed[better][s]) for s in seeds]
                d = [p[0] for p in diffs if p]
                if len(d) < 2:
                    continue
                rows.append(f"| {title.split('.')[0]} | {base} → {better} | {len(d)} | "
                            f"{statistics.mean(d):+.3f} ± {fmt(statistics.stdev(d))} | "
                            f"{', '.join(f'{x:+.3f}' for x in d)} |")
        if rows:
            emit("| finding | baseline → paper's better run | seeds | difference, mean ± sd over "
                 "seeds | per seed |")
            emit("|---|---|---|---|---|")
            out.extend(rows)
            emit("")

    # Gradient noise, e against f.
    emit("## Gradient noise: L_vlb with uniform timesteps (e) against importance sampling (f)\n")
    emit("Over the last third of each run's log lines: the logged `grad_norm` (each line the "
         "mean, over its log interval of steps, of the global gradient norm after the all-reduce: "
         "the norm of the gradient the optimizer takes). Noisier gradients have a larger norm "
         "(its square is the true gradient's plus the noise's variance) and a norm that varies "
         "more from interval to interval. The logged loss is not used: under importance sampling "
         "it is the unweighted L_t at the drawn timesteps, not the objective the gradient "
         "estimates. The share of timestep draws in the lowest tenth of t (uniform: 10 %) "
         "shows whether importance sampling was active (it samples uniformly until every t has "
         "10 losses in its history).\n")
    emit("| run | log lines | steps | grad_norm mean | grad_norm standard deviation | "
         "coefficient of variation | draws with t < T/10 |")
    emit("|---|---|---|---|---|---|---|")
    for r in runs:
        if r.letter not in "ef":
            continue
        tail = r.last_third()
        g = [x["grad_norm"] for x in tail]
        mean = statistics.mean(g)
        sd = statistics.stdev(g) if len(g) > 1 else float("nan")
        share = r.low_t_share()
        emit(f"| {r.label} | {len(g)} | {tail[0]['step']}–{tail[-1]['step']} | {fmt(mean)} | "
             f"{fmt(sd)} | {fmt(sd / mean if mean else None, 2)} | "
             f"{'n/a' if share is None else f'{100 * share:.1f} %'} |")
    emit("")

    # The curves.
    emit("## Held-out bits/dim while training\n")
    emit(f"![held-out bits/dim against training images]({os.path.basename(png)})\n")
    emit(f"The trainer's unbiased estimate (`logging.bpd_every`: the first "
         f"{first.get('logging.bpd_batch', '?')} validation images, "
         f"{first.get('logging.bpd_timesteps', '?')} stratified timesteps each, the same "
         f"timesteps and noise every time, raw weights) every "
         f"{first.get('logging.bpd_every', '?')} steps; the table is "
         f"[{os.path.basename(os.path.splitext(png)[0])}.csv]"
         f"({os.path.basename(os.path.splitext(png)[0])}.csv).\n")

    # The EMA sweeps.
    emit("## The EMA choice: post-hoc EMA sweeps on the validation images\n")
    emit("Bits/dim of the reconstruction for each σ_rel (chosen: bold); the profile error says "
         "how closely the snapshots can make the asked-for average.\n")
    emit("| run | σ_rel: bits/dim on validation images (profile error) |")
    emit("|---|---|")
    for r in runs:
        best = r.chosen_sigma()
        cells = []
        for p in r.sweep:
            cell = f"{p['sigma_rel']:g}: {p['bits_per_dim']:.4f} ({p['profile_error']:.1e})"
            cells.append(f"**{cell}**" if p is best else cell)
        emit(f"| {r.label} | {'; '.join(cells) or 'no sweep'} |")
    emit("")
    edge = [r.label for r in runs if r.sweep and r.chosen_sigma() in (r.sweep[0], r.sweep[-1])]
    if edge:
        emit(f"Chosen at the edge of the sweep (a σ_rel outside it might do better): "
             f"{', '.join(edge)}.\n")

    # Time.
    emit("## Time\n")
    emit("Wall time of each step of `launch/reproduce.sh` (start-up included), and the load "
         "average (1, 5, 15 min) at the end of training: the run's own 2 ranks make about 2, "
         "more means that something else ran too (so do dips in the images/s range above).\n")
    emit("| run | training | EMA sweep | test bound | load at the end of training |")
    emit("|---|---|---|---|---|")
    totals = {"training": 0.0, "sweep": 0.0, "test": 0.0}
    for r in runs:
        cells = []
        for part in ("training", "sweep", "test"):
            cells.append(duration(r.seconds[part]))
            totals[part] += r.seconds[part] or 0
        emit(f"| {r.label} | {' | '.join(cells)} | "
             f"{r.machine.get('after training.load average', 'n/a')} |")
    emit(f"| all | {duration(totals['training'])} | {duration(totals['sweep'])} | "
         f"{duration(totals['test'])} | |")
    emit("")

    # The hand-written comparison.
    emit("## Comparison with the paper\n")
    for name, title, _ in FINDINGS:
        emit(f"**{title}**\n")
        emit(f"<!-- prose:{name} -->\n{prose.get(name, PLACEHOLDER)}\n<!-- /prose -->\n")
    emit("**Summary**\n")
    emit(f"<!-- prose:summary -->\n{prose.get('summary', PLACEHOLDER)}\n<!-- /prose -->")

    with open(args.report, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {args.report} and {png} ({len(runs)} runs)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How close DDIM and DPM-Solver++(2M) come, in K steps, to the probability-flow ODE's solution.

Both samplers are deterministic (DDIM with eta 0) and start from the same x_T for a given
`--seed`, so with many steps they converge to the same images: the ODE's solution. This script
draws the reference with `--sampler dpm++2m --steps REF` (1000 by default: every step of the demo),
then each sampler at each K, and reports the distance of each set to the reference in pixel
levels (0..255): RMS over all pixels, and the share of pixels more than 8 levels off. It also
reports the time per image. Results go to bench/results/sampler_steps.json (and a markdown table on
stdout).

    .venv/bin/python bench/sampler_steps.py --run runs/fashion_mnist [--num 64] [--ref 1000]
        [--steps 10,20,50,100] [--ddim-steps 10,20,50,100,250] [--out bench/results/sampler_steps.json]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIFFTRAIN = os.path.join(ROOT, "build", "difftrain")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sample(run, sampler, steps, num, seed, out):
    """Draws `num` images; returns (uint8 [N, H, W, C], seconds)."""
    cmd = [DIFFTRAIN, "sample", "--run", run, "--num", str(num), "--seed", str(seed),
           "--sampler", sampler, "--steps", str(steps), "--device", "cpu", "--out", out]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    return np.load(out + ".npz")["arr_0"], seconds


def distance(images, reference):
    diff = images.astype(np.float64) - reference.astype(np.float64)
    return {"rms_levels": float(np.sqrt(np.mean(diff ** 2))),
            "share_over_8_levels": float(np.mean(np.abs(diff) > 8))}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/fashion_mnist")
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref", type=int, default=1000, help="dpm++2m steps of the reference")
    ap.add_argument("--steps", default="10,20,50,100", help="dpm++2m step counts")
    ap.add_argument("--ddim-steps", default="10,20,50,100,250", help="ddim step counts")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sampler_steps.json"))
    args = ap.parse_args()
    if not os.path.exists(DIFFTRAIN):
        sys.exit(f"{DIFFTRAIN} is missing: build the project first (launch/setup.sh)")

    with tempfile.TemporaryDirectory() as tmp:
        reference, ref_seconds = sample(args.run, "dpm++2m", args.ref, args.num, args.seed,
                                        os.path.join(tmp, "ref"))
        print(f"reference: dpm++2m, {args.ref} steps, {ref_seconds:.1f} s", file=sys.stderr)
        rows = []
        plan = [("ddim", int(k)) for k in args.ddim_steps.split(",")] + \
               [("dpm++2m", int(k)) for k in args.steps.split(",")]
        for sampler, steps in plan:
            images, seconds = sample(args.run, sampler, steps, args.num, args.seed,
                                     os.path.join(tmp, f"{sampler}_{steps}"))
            row = {"sampler": sampler, "steps": steps, "seconds": seconds,
                   "images_per_s": args.num / seconds, **distance(images, reference)}
            print(row, file=sys.stderr)
            rows.append(row)

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "run": args.run, "num": args.num, "seed": args.seed,
        "reference": {"sampler": "dpm++2m", "steps": args.ref, "seconds": ref_seconds},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)

    print(f"| sampler | steps | RMS to the ODE solution (levels) | pixels > 8 levels off | images/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['rms_levels']:.2f} | "
              f"{100 * r['share_over_8_levels']:.1f} % | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How well a Fashion-MNIST upsampler (configs/fashion_mnist_upsampler.yaml, 14x14 -> 28x28)
upsamples the test images, against bilinear and nearest-neighbour upsampling of the same inputs.

The first --num test images, area-downsampled to 14x14 as difftrain does (`sample --low-res
data/fashion_mnist/test` downsamples the 28x28 shard itself), are upsampled by the run with each
sampler of --samplers (on --ranks MPI ranks), and by F.interpolate's "bilinear" and "nearest".
Each set is compared with the originals:

- psnr: PSNR in dB of each image against its original, averaged over images;
- psnr_low_res: the same after area-downsampling both to 14x14: how well the output agrees with
  the input it was given (nearest neighbour is exact here, up to rounding);
- fd, precision, recall, accuracy: launch/sample_quality.py (a Fashion-MNIST classifier's features
  and its class agreement with the originals' labels, which the outputs carry).

Results go to --out (bench/results/upsampler.json) and a markdown table on stdout.

    .venv/bin/python bench/upsampler_quality.py --run runs/fashion_mnist_upsampler [--num 500]
        [--samplers "ddpm:100,ddim:50:1,dpm++2m:20"] [--ranks 2] [--out ...]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIFFTRAIN = os.path.join(ROOT, "build", "difftrain")
QUALITY = os.path.join(ROOT, "launch", "sample_quality.py")
sys.path.insert(0, os.path.join(ROOT, "launch"))
from sample_quality import DATA, read_idx  # noqa: E402
from sampler_steps import cpu_model  # noqa: E402


def area_down(images):
    """uint8 [N, 28, 28] -> float [N, 1, 14, 14] in [-1, 1], as Denoiser::low_res_of."""
    x = torch.from_numpy(images.astype(np.float32)).div(127.5).sub(1).unsqueeze(1)
    return F.interpolate(x, (14, 14), mode="area")


def to_uint8(x):
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


def sample(run, spec, num, ranks, out):
    """spec "ddpm:100" or "ddim:50:1" (eta 1); returns seconds."""
    sampler, steps, *eta = spec.split(":")
    cmd = [DIFFTRAIN, "sample", "--run", run, "--low-res",
           os.path.join(ROOT, "data", "fashion_mnist", "test"), "--num", str(num), "--sampler",
           sampler, "--steps", steps, "--device", "cpu", "--out", out]
    if eta:
        cmd += ["--eta", eta[0]]
    if ranks > 1:
        mpirun = ["mpirun", "-np", str(ranks), "--bind-to", "none", "-x", "OMP_NUM_THREADS=1",
                  "--mca", "btl", "self,vader,tcp", "--mca", "btl_tcp_if_include", "lo"]
        if os.geteuid() == 0:
            mpirun.append("--allow-run-as-root")
        cmd = mpirun + cmd
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/fashion_mnist_upsampler")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--samplers", default="ddpm:100,ddim:50:1,dpm++2m:20",
                    help="sampler:steps[:eta], comma-separated")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "upsampler.json"))
    args = ap.parse_args()
    if not os.path.exists(DIFFTRAIN):
        sys.exit(f"{DIFFTRAIN} is missing: build the project first (launch/setup.sh)")
    if not os.path.isdir(os.path.join(ROOT, "data", "fashion_mnist", "test")):
        sys.exit("data/fashion_mnist/test is missing: launch/quickstart.sh converts it")

    originals = read_idx(f"{DATA}/t10k-images-idx3-ubyte.gz")[:args.num]
    labels = read_idx(f"{DATA}/t10k-labels-idx1-ubyte.gz")[:args.num].astype(np.int64)
    low = area_down(originals)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for name, mode in [("bilinear", "bilinear"), ("nearest", "nearest")]:
            path = os.path.join(tmp, name + ".npz")
            np.savez(path, to_uint8(F.interpolate(low, (28, 28), mode=mode)), labels)
            sets[name] = (path, None)
        for spec in args.samplers.split(","):
            path = os.path.join(tmp, spec.replace(":", "_").replace("+", "p"))
            seconds = sample(args.run, spec, args.num, args.ranks, path)
            print(f"{spec}: {seconds:.1f} s", file=sys.stderr)
            sets[spec] = (path + ".npz", seconds)
        quality_json = os.path.join(tmp, "quality.json")
        subprocess.run([sys.executable, QUALITY, *[p for p, _ in sets.values()], "--json",
                        quality_json, "--cache",
                        os.path.join(ROOT, "runs", "fashion_mnist_classifier.pt")],
                       check=True, cwd=ROOT)
        with open(quality_json) as f:
            quality = {row["file"]: row for row in json.load(f)["samples"]}
        for name, (path, seconds) in sets.items():
            images = np.load(path)["arr_0"][..., 0]
            q = quality[path]
            rows.append({"method": name, "seconds": seconds,
                         "psnr": psnr(images, originals),
                         "psnr_low_res": psnr(to_uint8(area_down(images)),
                                              to_uint8(low)),
                         **{k: q[k] for k in ("fd", "precision", "recall", "accuracy",
                                              "fd_real") if k in q}})

    result = {"date": datetime.date.today().isoformat(),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, {args.ranks} MPI ranks",
              "run": args.run, "num": args.num, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("| method | PSNR (dB) | PSNR at 14x14 (dB) | FD | precision / recall "
          "| classified as the original's class | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "—"
        print(f"| {r['method']} | {r['psnr']:.2f} | {r['psnr_low_res']:.2f} | {r['fd']:.1f} | "
              f"{r['precision']:.2f} / {r['recall']:.2f} | {100 * r.get('accuracy', 0):.1f} % "
              f"| {seconds} |")


if __name__ == "__main__":
    main()

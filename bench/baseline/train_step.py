#!/usr/bin/env python3
"""The PyTorch eager baseline of bench_train_step: the same UNet, hybrid loss, AdamW and EMA step
from the same initial weights and batch (exported by `bench_train_step --export FILE`), timed the
same way (repeats x steps after warm-up, per-phase means per repeat, min/median/max over repeats).

  python bench/baseline/train_step.py --export FILE --variant plain|tuned [--threads 1]
      [--precision fp32|bf16] [--device cpu|cuda] [--steps 5] [--repeats 3] [--warmup 1]
      [--out FILE] [--flops] [--profile TRACE] [--check loss-and-gradient|loss]
      [--phase-timing same|separate]

plain: the way improved-diffusion's TrainLoop runs it: zero_grad in place, the QKVAttention
       einsums, torch.optim.AdamW with its defaults (the per-parameter loop on CPU), the gradient
       norm logged with one .item() per parameter, EMA by mul_/add_ per parameter.
tuned: channels_last, F.scaled_dot_product_attention, AdamW(fused=True), zero_grad to None,
       torch._foreach_norm with one host sync, EMA by torch._foreach_lerp_, cuDNN's benchmark
       mode (on a GPU).

Before timing it checks that the first step's losses and gradient norm (dropout off) match the
C++ ones stored in the export: the same computation. --flops counts the forward FLOPs per image
(convolutions, linears, attention matmuls; 2 FLOPs per multiply-add) and exits. --profile
writes 3 more steps, after the timed ones, as a torch.profiler Chrome trace (for
bench/profile_summary.py). Each repeat is timed as a whole, the device synchronised at its ends;
the phases are timed with the device synchronised at every boundary, in the timed steps
(--phase-timing same, the CPU's default) or in one more repeat (separate, CUDA's default, so
that the timed steps run as a training loop runs them).
"""
import argparse
import json
import os
import resource
import sys
import time

import torch as th
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gaussian_diffusion import GaussianDiffusion  # noqa: E402
from unet import QKVAttention, model_from_difftrain  # noqa: E402


def load_export(path):
    import torch.jit._pickle  # noqa: F401  (restore_type_tag, named by the C++ pickler)

    with th.serialization.safe_globals([th.jit._pickle.restore_type_tag]):
        d = th.load(path)
    with open(path + ".json") as f:
        meta = json.load(f)
    return dict(d), meta


def build_model(meta, tuned):
    return model_from_difftrain(meta["model"], tuned)


def summary(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    median = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
    return {"min": v[0], "median": median, "max": v[-1], "values": values}


def count_forward_flops(model, meta):
    """Forward FLOPs of one image: 2 x multiply-adds of every conv, linear and attention matmul."""
    m = meta["model"]
    total = [0]

    def conv_hook(mod, inp, out):
        k = 1
        for s in mod.kernel_size:
            k *= s
        total[0] += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    def linear_hook(mod, inp, out):
        total[0] += 2 * out.numel() * mod.in_features

    def attn_hook(mod, inp, out):
        qkv = inp[0]  # [B*H, 3d, T]
        bh, d3, t = qkv.shape
        total[0] += 2 * 2 * bh * t * t * (d3 // 3)  # q k^T and weights v

    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, QKVAttention):
            hooks.append(mod.register_forward_hook(attn_hook))
    x = th.zeros(1, m["in_channels"], m["image_size"], m["image_size"])
    y = th.zeros(1, dtype=th.long) if m["num_classes"] else None
    with th.no_grad():
        model.eval()
        model(x, th.zeros(1), **({"y": y} if y is not None else {}))
    for h in hooks:
        h.remove()
    return total[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", required=True)
    ap.add_argument("--variant", choices=["plain", "tuned"], default="plain")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument("--flops", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--profile")
    ap.add_argument("--phase-timing", choices=["same", "separate"],
                    help="the phases timed in the timed steps or in one more repeat (default: "
                         "same on the CPU, separate on CUDA)")
    ap.add_argument("--check", choices=["loss-and-gradient", "loss"], default="loss-and-gradient",
                    help="what the same-computation check compares; `loss` for a model whose "
                         "gradient norm is rounding noise in part (GroupNorms of 2 values a group at 1 x 1)")
    args = ap.parse_args()
    dev = th.device(args.device)
    th.set_num_threads(args.threads)

    d, meta = load_export(args.export)
    tuned = args.variant == "tuned"
    model = build_model(meta, tuned)
    state = {k[len("state/"):]: v for k, v in d.items() if k.startswith("state/")}
    model.load_state_dict(state, strict=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == meta["parameters"], (n_params, meta["parameters"])
    if args.flops:
        flops = count_forward_flops(model, meta)
        print(json.dumps({"forward_flops_per_image": flops, "parameters": n_params}))
        return

    diffusion = GaussianDiffusion(d["diffusion/betas"], rescale_timesteps=True)
    assert abs(meta["timestep_scale"] - 1000.0 / diffusion.num_timesteps) < 1e-12, \
        "the baseline implements rescale_timesteps = true"
    assert abs(meta["vb_scale"] - diffusion.num_timesteps / 1000.0) < 1e-9, \
        "the baseline implements the hybrid loss with vlb_weight 0.001 (RESCALED_MSE)"
    model = model.to(dev)
    x, t0, noise0 = d["batch/x"].to(dev), d["batch/t"].to(dev), d["batch/noise"].to(dev)
    labels = d.get("batch/labels")
    labels = labels.to(dev) if labels is not None else None
    kwargs = {"y": labels} if labels is not None else {}
    B = x.shape[0]
    T = diffusion.num_timesteps
    autocast = args.precision == "bf16"
    if tuned:
        model = model.to(memory_format=th.channels_last)
        x = x.contiguous(memory_format=th.channels_last)
        th.backends.cudnn.benchmark = True  # as EDM's training loop (difftrain's default too)
    params = list(model.parameters())

    def losses(x_start, t, noise):
        x_t = diffusion.q_sample(x_start, t, noise)
        with th.autocast(dev.type, dtype=th.bfloat16, enabled=autocast):
            out = model(x_t, diffusion.scale_timesteps(t), **kwargs)
        return diffusion.losses_from_output(out, x_start, x_t, t, noise)

    # The same computation: first-step losses and gradient norm against the C++ ones.
    model.eval()
    terms = losses(x, t0, noise0)
    terms["loss"].mean().backward()
    gnorm = th.stack(th._foreach_norm([p.grad for p in params])).float().norm().item()
    model.train()
    for p in params:
        p.grad = None

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-30)

    cpp = meta["check"]
    tol = 1e-4 if args.precision == "fp32" else 3e-2
    check = {
        "precision": args.precision,
        "cpp_precision": cpp["precision"],
        "loss_mean": terms["loss"].mean().item(), "cpp_loss_mean": cpp["loss_mean"],
        "mse_mean": terms["mse"].mean().item(), "cpp_mse_mean": cpp["mse_mean"],
        "vb_mean": terms["vb"].mean().item(), "cpp_vb_mean": cpp["vb_mean"],
        "grad_norm": gnorm, "cpp_grad_norm": cpp["grad_norm"],
        "per_sample_loss_max_rel_diff": (
            ((terms["loss"].double() - d["check/loss"]).abs()
             / d["check/loss"].abs().clamp(min=1e-30)).max().item())
            if args.device == "cpu" else None,
    }
    check["loss_rel_diff"] = rel(check["loss_mean"], cpp["loss_mean"])
    check["grad_norm_rel_diff"] = rel(gnorm, cpp["grad_norm"])
    check["tolerance"] = tol
    check["same_precision_as_export"] = args.precision == cpp["precision"]
    check["compared"] = args.check
    check["ok"] = (not check["same_precision_as_export"]) or (
        check["loss_rel_diff"] < tol and
        (args.check == "loss" or check["grad_norm_rel_diff"] < max(tol, 1e-3)))

    if tuned:
        opt = th.optim.AdamW(params, lr=meta["lr"], weight_decay=meta["weight_decay"], fused=True)
    else:  # improved-diffusion: AdamW(master_params, lr, weight_decay), default implementation
        opt = th.optim.AdamW(params, lr=meta["lr"], weight_decay=meta["weight_decay"])
    rates = meta["ema_rates"]
    emas = [[p.detach().clone() for p in params] for _ in rates]

    def now():
        if dev.type == "cuda":
            th.cuda.synchronize()
        return time.perf_counter() * 1000.0

    def one_step(ph=None):
        """One training step; with ph (phase -> list of ms), each phase timed into it, the device
        synchronised at every boundary. Without, nothing synchronises but the step's own."""
        clock = now if ph is not None else (lambda: 0.0)

        def ended(phase, since):
            t = clock()
            if ph is not None:
                ph[phase].append(t - since)
            return t

        start = clock()
        noise = th.randn_like(x)
        a = ended("data", start)
        t = th.randint(0, T, (B,), device=dev)  # UniformSampler: uniform t, weights 1
        weights = th.ones(B, device=dev)
        b = ended("sampler", a)
        if tuned:
            opt.zero_grad(set_to_none=True)
        else:  # improved-diffusion's zero_grad(model_params)
            for p in params:
                if p.grad is not None:
                    p.grad.detach_()
                    p.grad.zero_()
        terms = losses(x, t, noise)
        loss = (terms["loss"] * weights).mean()
        c = ended("forward", b)
        loss.backward()
        e = ended("backward", c)
        if tuned:
            norm = th.stack(th._foreach_norm([p.grad for p in params])).norm().item()
        else:  # TrainLoop._log_grad_norm
            sqsum = 0.0
            for p in params:
                sqsum += (p.grad ** 2).sum().item()
            norm = sqsum ** 0.5
        if norm == norm:
            opt.step()
        f = ended("optimizer", e)
        with th.no_grad():
            for rate_, ema in zip(rates, emas):
                if tuned:
                    th._foreach_lerp_(ema, params, 1 - rate_)
                else:  # improved-diffusion's update_ema
                    for targ, src in zip(ema, params):
                        targ.detach().mul_(rate_).add_(src, alpha=1 - rate_)
        ended("ema", f)

    # Each repeat timed as a whole; the phases in the timed steps (--phase-timing same, the
    # CPU's default) or in one more repeat (separate, CUDA's: bench_train_step says why).
    phase_timing = args.phase_timing or ("separate" if dev.type == "cuda" else "same")
    phases = ["data", "sampler", "forward", "backward", "optimizer", "ema"]
    rate, r = [], {k: [] for k in ["step"] + phases}

    def record(ph):  # a repeat's phases, a mean per step
        for k in phases:
            r[k].append(sum(ph[k]) / args.steps)

    for rep in range(-1, args.repeats):
        count = args.warmup if rep < 0 else args.steps
        ph = {k: [] for k in phases} if phase_timing == "same" else None
        start = now()
        for _ in range(count):
            one_step(ph)
        ms = now() - start
        if rep < 0:
            continue
        rate.append(1000.0 * B * args.steps / ms)
        r["step"].append(ms / args.steps)
        if ph is not None:
            record(ph)
    if phase_timing == "separate":
        ph = {k: [] for k in phases}
        for _ in range(args.steps):
            one_step(ph)
        record(ph)

    result = {
        "benchmark": "train_step",
        "implementation": "pytorch_" + args.variant,
        "torch": th.__version__,
        "parameters": n_params,
        "batch": B,
        "threads": args.threads,
        "precision": args.precision,
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "phase_timing": phase_timing,
        "images_per_s": summary(rate),
        "step_ms": summary(r["step"]),
        "breakdown_ms": {
            "data": summary(r["data"]), "sampler": summary(r["sampler"]),
            "forward": summary(r["forward"]), "backward": summary(r["backward"]),
            "forward_backward": summary([a + b for a, b in zip(r["forward"], r["backward"])]),
            "all_reduce": None, "optimizer": summary(r["optimizer"]), "ema": summary(r["ema"]),
        },
        "check": check,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if dev.type == "cuda":  # as bench_train_step's cuda_peak_allocated_mb
        result["cuda_peak_allocated_mb"] = th.cuda.max_memory_allocated(dev) / 2**20
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(3):  # as bench_train_step: one step is too noisy
                one_step()
        prof.export_chrome_trace(args.profile)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if not check["ok"]:
        print("check FAILED: the baseline does not compute what difftrain computes", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()

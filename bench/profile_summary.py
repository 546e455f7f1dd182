#!/usr/bin/env python3
"""Self time per op from Chrome traces: bench_train_step --profile (LibTorch's profiler) or
bench/baseline/train_step.py --profile (torch.profiler). Self time = an event's duration minus
that of the events nested directly inside it on the same thread, so the table adds up to the
step. Standard library only.

    bench/profile_summary.py TRACE [TRACE ...] [--top 25] [--steps 3]

With several traces the columns stand side by side, ordered by the first; --steps divides by the
number of steps each trace holds (bench_train_step and baseline/train_step.py profile 3).
"""
import argparse
import collections
import json
import os


def self_times(path, steps=1):
    """{op name: [calls, self ms]} over every thread of one trace, per step."""
    with open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    totals = collections.defaultdict(lambda: [0, 0.0])
    for evs in by_thread.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack = []  # [end, event, child time]
        for e in evs:
            ts, dur = float(e["ts"]), float(e["dur"])
            while stack and ts >= stack[-1][0]:
                _close(stack.pop(), totals)
            if stack:
                stack[-1][2] += dur
            stack.append([ts + dur, e, 0.0])
        while stack:
            _close(stack.pop(), totals)
    return {n: [c / steps, ms / steps] for n, (c, ms) in totals.items()}


def ops_per_step(path, steps=1):
    """The ops the host dispatched per step: the outermost op events of each thread (category
    cpu_op; LibTorch's legacy profiler writes no category), an autograd node's evaluation counting
    as one; the ops nested inside them are their implementation."""
    with open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e and e.get("cat", "cpu_op") == "cpu_op":
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    outermost = 0
    for evs in by_thread.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        end = float("-inf")
        for e in evs:
            if float(e["ts"]) >= end:
                outermost += 1
                end = float(e["ts"]) + float(e["dur"])
    return outermost / steps


def _close(frame, totals):
    _, e, child = frame
    t = totals[e["name"]]
    t[0] += 1
    t[1] += (float(e["dur"]) - child) / 1000.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--steps", type=int, default=1, help="steps in each trace")
    args = ap.parse_args()
    tables = [self_times(p, args.steps) for p in args.traces]
    names = sorted(tables[0], key=lambda n: -tables[0][n][1])
    extra = set().union(*(t.keys() for t in tables[1:])) - set(names)
    names += sorted(extra, key=lambda n: -max(t.get(n, [0, 0])[1] for t in tables))
    heads = [os.path.basename(p) for p in args.traces]
    print(f"{'op':<48}" + "".join(f"{h[:22]:>24}" for h in heads))
    for n in names[:args.top]:
        cells = "".join(f"{t[n][1]:>14.2f} ms {t[n][0]:>5g}x" if n in t else f"{'-':>24}"
                        for t in tables)
        print(f"{n[:48]:<48}{cells}")
    print(f"{'total (every op)':<48}" +
          "".join(f"{sum(v[1] for v in t.values()):>14.2f} ms {'':>6}" for t in tables))


if __name__ == "__main__":
    main()

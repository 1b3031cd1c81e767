"""Parameter counts and median CPU latency of the registered models, measured side by side in one run.

Usage::

    python -m training.bench_models [--size 352] [--threads 2] [--repeats 15] [--json OUT]

Models run interleaved (round-robin, one forward each per round) so that machine-load drift hits all of them
alike; the table gives median and p90 latency in ms and the ratio to the first row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Sequence

import torch

from common.cli import entry

from .models.registry import create_model

DEFAULT = ("msnet", "m2snet:conv", "m2snet:boxsum", "msnet_effl0", "m2snet_effl0")


def _variant(entry: str) -> tuple[str, torch.nn.Module]:
    name, _, mode = entry.partition(":")
    model = create_model(name).eval()
    if mode:
        model.set_fixed_conv(mode)
    return entry, model


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.bench_models", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT), help="names; m2snet:conv / m2snet:boxsum pick a form")
    p.add_argument("--size", type=int, default=352)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [_variant(m) for m in args.models]
    x = torch.randn(1, 3, args.size, args.size)
    times: dict[str, list[float]] = {n: [] for n, _ in models}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for _, m in models:
                m(x)
        for _ in range(args.repeats):
            for n, m in models:
                t = time.perf_counter()
                m(x)
                times[n].append((time.perf_counter() - t) * 1e3)
    rows = []
    for n, m in models:
        params = sum(q.numel() for q in m.parameters())
        med = statistics.median(times[n])
        p90 = sorted(times[n])[int(0.9 * (len(times[n]) - 1))]
        rows.append({"model": n, "params": params, "median_ms": med, "p90_ms": p90})
    ref = rows[0]["median_ms"]
    print(f"PyTorch {torch.__version__} eager, CPU, {args.threads} threads, batch 1, {args.size}x{args.size}, "
          f"{args.repeats} interleaved rounds")
    print(f"{'model':<16}{'params':>12}{'median ms':>11}{'p90 ms':>9}{'ratio':>8}")
    for r in rows:
        r["ratio"] = r["median_ms"] / ref
        print(f"{r['model']:<16}{r['params']:>12,}{r['median_ms']:>11.1f}{r['p90_ms']:>9.1f}{r['ratio']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

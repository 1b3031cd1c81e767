"""Throughput of :mod:`runtime.batch`: the same job with 1 and N local worker processes and 1 and N Ray actors, side
by side, and Ray's overhead as a ratio.

Usage::

    python -m runtime.batch_bench ../shared/data/cvc-clinicdb-clips --repeat 8 --json bench.json

Frame folders among the sources become MP4s first (each repeated ``--repeat`` times, ``--copies`` files each, so that
decoding is measured, start-up is amortised and the workers stay evenly loaded). Each configuration runs the whole
job into a fresh folder; the table gives its wall time
(worker start-up and model loading included), frames per second, the workers' busy time and the results' agreement
with the first configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from common.cli import entry
from common.io import check_destination, write_json_atomic

from .batch import default_model_path, discover_sources, run_batch
from .batch_job import BatchSettings, result_identity
from .errors import RuntimeInputError
from .video import make_video

__all__ = ["main"]


def _configs(workers: list[int], ray: bool) -> list[tuple[str, int]]:
    out = [("local", w) for w in workers]
    if ray:
        out += [("ray", w) for w in workers]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.batch_bench", description=__doc__.split("\n")[0])
    p.add_argument("sources", nargs="+")
    p.add_argument("--onnx", help="model (default: the cached INT8 export of msnet_effl0, as runtime.batch)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--repeat", type=int, default=4, help="frame folders become MP4s of the folder repeated N times")
    p.add_argument("--copies", type=int, default=4,
                   help="... and COPIES such MP4s each (more videos than workers: the workers stay evenly loaded)")
    p.add_argument("--workers", default="1,2", help="worker counts to compare (1,2)")
    p.add_argument("--rounds", type=int, default=1, help="runs per configuration (the median is reported)")
    p.add_argument("--no-ray", dest="ray", action="store_false")
    p.add_argument("--json", help="write the table here")
    a = p.parse_args(argv)
    if a.repeat < 1 or a.rounds < 1 or a.copies < 1:
        raise RuntimeInputError("--repeat, --copies and --rounds must be >= 1")
    try:
        workers = [int(x) for x in a.workers.split(",")]
    except ValueError:
        workers = []
    if not workers or min(workers) < 1:
        raise RuntimeInputError(f"--workers must be a comma-separated list of positive integers, got {a.workers!r}")
    if a.json and (why := check_destination(a.json, (".json",))):
        raise RuntimeInputError(f"--json: {why}")
    if a.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise RuntimeInputError("Ray is not installed (pip install 'polypseg[ray]'), or pass --no-ray") from None
    sources = discover_sources(a.sources)
    model = Path(a.onnx) if a.onnx else default_model_path("msnet_effl0", a.backend, print)
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="polypseg-batch-bench-") as tmp:
        vids = []
        for s in sources:
            if s.is_dir():
                name = s.parent.name if s.name == "images" else s.name
                first = make_video(s, Path(tmp) / "videos" / f"{name}-1.mp4", 25.0, a.repeat)
                vids.append(str(first))
                for c in range(2, a.copies + 1):
                    copy = first.with_name(f"{name}-{c}.mp4")
                    copy.write_bytes(first.read_bytes())
                    vids.append(str(copy))
            else:
                vids.append(str(s))
        reference = None
        ray_start = None
        if a.ray:  # one local cluster for all Ray rows (a real cluster outlives its jobs); its start-up is reported
            import time

            from .batch_ray import connect

            t0 = time.perf_counter()
            connect("", cpus=cores)
            ray_start = time.perf_counter() - t0
        for executor, w in _configs(workers, a.ray):
            runs = []
            for r in range(a.rounds):
                out = Path(tmp) / f"{executor}-{w}-{r}"
                job = run_batch(vids, out, model, backend=a.backend, workers=w, threads=max(1, cores // w),
                                settings=BatchSettings(), ray_address="auto" if executor == "ray" else None, force=True,
                                log=lambda m: None)
                results = {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
                           if p.name != "job.json"}
                busy = sum(x.get("timing", {}).get("seconds", 0) for x in results.values())
                ident = {k: result_identity(v) for k, v in results.items()}
                if reference is None:
                    reference = ident
                runs.append({"seconds": job["seconds"], "frames": job["frames"], "busy": busy,
                             "same": ident == reference, "failed": job["failed"]})
            sec = statistics.median(x["seconds"] for x in runs)
            frames = runs[0]["frames"]
            busy = statistics.median(x["busy"] for x in runs)
            rows.append({"executor": executor, "workers": w, "threads_per_worker": max(1, cores // w),
                         "videos": len(vids), "frames": frames, "seconds": round(sec, 2),
                         "frames_per_second": round(frames / sec, 1), "busy_seconds": round(busy, 2),
                         "utilisation": round(busy / (sec * w), 3), "same_results": all(x["same"] for x in runs),
                         "failed": runs[0]["failed"], "rounds": a.rounds})
            print(f"{executor} × {w}: {rows[-1]['frames_per_second']} frames/s", file=sys.stderr, flush=True)
    by = {(r["executor"], r["workers"]): r for r in rows}
    for r in rows:
        loc = by.get(("local", r["workers"]))
        r["vs_local_same_workers"] = round(r["frames_per_second"] / loc["frames_per_second"], 3) if loc else None
    print(f"\n{'executor':<8} {'workers':>7} {'threads':>7} {'frames':>7} {'seconds':>8} {'frames/s':>9} "
          f"{'busy':>6} {'vs local':>9} {'same':>5}")
    for r in rows:
        print(f"{r['executor']:<8} {r['workers']:>7} {r['threads_per_worker']:>7} {r['frames']:>7} "
              f"{r['seconds']:>8.2f} {r['frames_per_second']:>9.1f} {r['utilisation']:>6.0%} "
              f"{r['vs_local_same_workers']:>9.3f} "
              f"{'yes' if r['same_results'] else 'NO':>5}")
    print(f"(model {model.name}, {cores} cores; wall time includes worker start-up and model loading; busy = the "
          "workers' per-video processing time / (wall × workers)"
          + (f"; the local Ray cluster took {ray_start:.1f} s to start, not counted)" if ray_start else ")"))
    if a.ray:
        import ray

        ray.shutdown()
    if a.json:
        write_json_atomic(a.json, {"model": str(model), "cores": cores, "ray_cluster_start_s": ray_start,
                                   "rows": rows})
    return 0 if all(r["same_results"] and not r["failed"] for r in rows) else 2


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

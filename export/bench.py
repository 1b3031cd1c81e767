"""Benchmarks of registry models, exported on the fly (cached): network latency of every model × row, or — with
``--source`` — the whole video pipeline per row against PyTorch and the naive seed loop.

Usage::

    python -m export.bench --models msnet,m2snet,msnet_effl0 [--rows ort-fp32,openvino-int8] [--json OUT]
    python -m export.bench --models msnet_effl0 --source ../shared/data/cvc-clinicdb-clips/seq01/images \\
        --rows naive,torch,ort-fp32,ort-int8,openvino-int8 --json bench.json --plot bench.png

Rows are named as in :data:`runtime.bench.ROWS` (``ort-fp32``, ``openvino-int8`` = the full-graph uint8 Q/DQ graph
the demo runs on the CPU, ``openvino-int8-s8`` = the TensorRT graph, ``trt-fp16`` …, each optionally ``@STREAMS``),
plus ``torch`` (PyTorch eager) and, with ``--source``, ``naive`` (the per-frame loop a seed repository runs: OpenCV →
PyTorch eager → NumPy overlay, sequential).

Latency mode: every session is opened, then timed in interleaved rounds on one real frame so that load drift hits
every row alike; ratios are to ``ort-fp32`` of the same model and to the first model's ``ort-fp32``.
Pipeline mode (``--source``): :func:`runtime.bench.measure` per row (latency, pipeline FPS, end-to-end latency,
Dice against the ground truth and against PyTorch through the one comparator), ``--input-size H W`` repeatable to
compare sizes side by side, speed-ups against the naive loop at the same size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from common.cli import entry
from common.io import write_json_atomic
from kernels.frame_reference import preprocess_reference
from runtime import bench as rb
from runtime.backends import open_backend
from runtime.backends.openvino import openvino_available
from runtime.errors import BackendUnavailableError, RuntimeInputError
from runtime.manifest import Manifest, manifest_path

from .cache import cached_export
from .compare import TorchBackend
from .onnx import check_input_size, load_for_export

EXTRA_ROWS = ("torch", "naive")
LATENCY_DEFAULT = "ort-fp32,ort-fp16,ort-int8,ort-int8-s8,openvino-fp32,openvino-fp32-bf16,openvino-int8-s8," \
                  "openvino-int8-s8-f32"


def _export(args, model: str, row: str, hw) -> Path:
    """The row's graph from the export cache. Benchmarks measure: a graph outside its parity tolerance is kept (the
    Dice columns show it; the gate's verdict is in its manifest)."""
    _, prec, flav, _ = rb.ROWS[row]
    return cached_export(args.work_dir, model, checkpoint=args.checkpoint, precision=prec, parity_gate=False,
                         int8_flavour=flav or "qdq-s8", input_hw=hw, calib_data=args.calib_data,
                         calib_split=args.calib_split, calib_count=args.calib_count, log=lambda *a: None)


# --------------------------------------------------------------------------------------------- latency mode
def latency(args, rows: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    data = Path(args.calib_data)
    frame_path = Path(args.frame) if args.frame else data / "images" / (
        (data / "splits" / "val.txt").read_text().split()[0] + ".jpg")
    bgr = cv2.imread(str(frame_path))
    if bgr is None:
        raise RuntimeInputError(f"cannot read frame {frame_path}")
    sessions = []
    for model in args.models:
        for row, streams in rows:
            if row == "torch":
                net, _ = load_for_export(model, args.checkpoint)
                hw = check_input_size(model, net.spec, args.input_size[0] if args.input_size else None)
                x = preprocess_reference(bgr, hw, net.spec.mean, net.spec.std)
                sessions.append({"model": model, "row": row, "backend": TorchBackend(net, hw, args.threads).open(),
                                 "x": x, "path": None, "times": []})
                continue
            kind, _, _, opts = rb.ROWS[row]
            hw = args.input_size[0] if args.input_size else None
            path = _export(args, model, row, hw)
            man = Manifest.load(path)
            b = open_backend(kind, path, threads=args.threads, streams=streams or args.streams, log=lambda *a: None,
                             **opts)
            x = preprocess_reference(bgr, man.input_hw, man.mean, man.std)
            name = row + (f"@{streams}" if streams is not None else "")
            sessions.append({"model": model, "row": name, "backend": b, "x": x, "path": path, "times": []})
    for _ in range(args.warmup):
        for s in sessions:
            s["backend"].infer(s["x"], check=False)
    for _ in range(args.rounds):
        for s in sessions:
            t = time.perf_counter()
            s["backend"].infer(s["x"], check=False)
            s["times"].append((time.perf_counter() - t) * 1e3)
    out, first_ref = [], None
    print(f"CPU, {args.threads} threads, batch 1, {args.rounds} interleaved rounds on {frame_path.name}")
    print(f"{'model':<14}{'row':<24}{'MB':>7}{'p50 ms':>9}{'p99 ms':>9}{'vs ort-fp32':>12}{'vs first':>10}")
    for model in dict.fromkeys(s["model"] for s in sessions):
        mine = [s for s in sessions if s["model"] == model]
        ref = next((np.median(s["times"]) for s in mine if s["row"] == "ort-fp32"), None)
        first_ref = first_ref or ref
        for s in mine:
            p50, p99 = float(np.median(s["times"])), float(np.percentile(s["times"], 99))
            size = s["path"].stat().st_size / 2**20 if s["path"] else float("nan")
            r = {"model": model, "row": s["row"], "size_mb": size, "p50_ms": p50, "p99_ms": p99,
                 "vs_ort_fp32": p50 / ref if ref else None,
                 "vs_first_model_ort_fp32": p50 / first_ref if first_ref else None}
            out.append(r)
            f = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
            print(f"{model:<14}{s['row']:<24}{size:>7.1f}{p50:>9.1f}{p99:>9.1f}{f(r['vs_ort_fp32']):>12}"
                  f"{f(r['vs_first_model_ort_fp32']):>10}")
    for s in sessions:
        s["backend"].close()
    if args.json:
        write_json_atomic(args.json, out)
    return out


# --------------------------------------------------------------------------------------------- pipeline mode
def pipeline(args, rows: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    if len(args.models) != 1:
        raise RuntimeInputError("--source benchmarks one model at a time: give one --models name")
    model, src = load_for_export(args.models[0], args.checkpoint)
    spec = model.spec
    data = rb.BenchData(args.source, args.accuracy_frames)
    out: list[dict[str, Any]] = []
    print(rb.HEADER, flush=True)
    for hw in [check_input_size(args.models[0], spec, s) for s in (args.input_size or [None])]:
        torch_man = Manifest(model=args.models[0], input_hw=list(hw), mean=list(spec.mean), std=list(spec.std),
                             threshold=spec.threshold)
        with TorchBackend(model, hw, args.threads) as torch_be:
            ref = [torch_be.infer(x) for x in data.inputs(torch_man)]
            for row, streams in rows:
                r = _pipeline_row(args, row, streams, model, hw, data, ref, torch_be, torch_man)
                if r is not None:
                    out.append(r)
                    print(rb._fmt(r), flush=True)
    rb.report(out, args.json, args.plot)
    return out


def _pipeline_row(args, row, streams, model, hw, data, ref, torch_be, torch_man) -> dict[str, Any] | None:
    if row == "naive":
        from .baselines import naive_loop

        seq = [f for s in data.sources for f in data.frames[s]] * 2
        nl = naive_loop(model, seq, hw, torch_man.mean, torch_man.std, args.threads)
        lat = nl["latency_ms"]
        acc = rb.compare(ref, ref, threshold=torch_man.threshold, gt=data.all_masks())
        return {"backend": "naive", "input_hw": list(hw), "precision": "fp32", "streams": 1, "size_mb": None,
                "p50_ms": float(np.median(lat)), "p99_ms": float(np.percentile(lat, 99)), "fps": nl["fps"],
                "e2e_p50_ms": float(np.median(lat)), "e2e_p99_ms": float(np.percentile(lat, 99)),
                "dice_vs_gt": acc.dice_vs_gt, "dice_vs_torch": 1.0}
    if row == "torch":
        return rb.measure("torch", torch_be, torch_man, data, rounds=args.rounds,
                          pipeline_frames=args.pipeline_frames, reference=ref)
    kind, _, _, opts = rb.ROWS[row]
    path = _export(args, args.models[0], row, hw)
    man = Manifest.load(manifest_path(path))
    try:
        # --streams is for the CPU backends; a TensorRT row runs one stream (ROW@N overrides per row)
        be = open_backend(kind, path, threads=args.threads, streams=streams or (1 if kind == "trt" else args.streams),
                          **opts)
    except BackendUnavailableError as e:
        print(f"{row}: skipped ({e})", file=sys.stderr, flush=True)
        return None
    with be:
        name = row + (f"@{streams}" if streams is not None else "")  # the row as named (streams column: what ran)
        return rb.measure(name, be, man, data, rounds=args.rounds, pipeline_frames=args.pipeline_frames,
                          reference=ref, size_mb=path.stat().st_size / 2**20)


# --------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.bench", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--models", "--model", help="comma-separated registry names (default: msnet,m2snet,msnet_effl0; "
                                               "with --source: msnet_effl0)")
    p.add_argument("--checkpoint", help="checkpoint (default: each model's shipped <model>-kvasir, else untrained)")
    p.add_argument("--rows", "--backends", help="comma-separated rows (runtime.bench.ROWS, torch, naive)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), action="append",
                   help="--source: network input size of every row (repeatable: sizes side by side)")
    p.add_argument("--frame", help="latency mode: image used as input (default: the first Kvasir-SEG val image)")
    p.add_argument("--warmup", type=int, default=5, help="latency mode: untimed rounds")
    p.add_argument("--calib-data", default="../shared/data/kvasir-seg", help="INT8 calibration data")
    p.add_argument("--calib-split", help="split file of calibration ids (default: <calib-data>/splits/train.txt when "
                                         "it exists)")
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--work-dir", default="artifacts/bench", help="export cache")
    rb.add_measure_args(p)
    p.set_defaults(source=None)
    for a in p._actions:  # --source is optional here: it selects the pipeline mode
        if a.dest == "source":
            a.required = False
    args = p.parse_args(argv)
    rb.check_measure_args(args)
    args.models = [m.strip() for m in (args.models or ("msnet_effl0" if args.source else "msnet,m2snet,msnet_effl0"))
                   .split(",") if m.strip()]
    from training import UnknownModelError, get_spec

    for m in args.models:  # every name checked before anything runs
        try:
            get_spec(m)
        except UnknownModelError as e:
            raise RuntimeInputError(str(e)) from None
    if args.calib_split is None and (Path(args.calib_data) / "splits" / "train.txt").is_file():
        args.calib_split = str(Path(args.calib_data) / "splits" / "train.txt")
    if not args.source and args.input_size and len(args.input_size) > 1:
        raise RuntimeInputError("several --input-size are for --source runs; the latency table takes one")
    default = "naive,torch,ort-fp32,ort-int8,openvino-int8" if args.source else LATENCY_DEFAULT
    rows = [rb.parse_row(r.strip(), tuple(rb.ROWS), EXTRA_ROWS) for r in (args.rows or default).split(",") if r.strip()]
    if not args.source and any(r == "naive" for r, _ in rows):
        raise RuntimeInputError("the naive row needs --source (it is a whole-pipeline baseline)")
    if not openvino_available():
        rows = [r for r in rows if not r[0].startswith("openvino")]
    (pipeline if args.source else latency)(args, rows)
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

"""CPU latency of exported graphs, every model × precision × backend side by side in one run.

Usage::

    python -m export.bench --models msnet,m2snet,msnet_effl0 [--threads 2] [--rounds 30] [--json OUT]

Each model is exported once per precision (cached in ``--work-dir``); all sessions are opened, then timed in
interleaved rounds on one real frame so that load drift hits every row alike. Ratios are to ONNX Runtime FP32 of the
same model (``vs ort-fp32``) and, for every model, to the first model's ONNX Runtime FP32 (``vs first``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from runtime.backends import create_backend
from runtime.backends.openvino import openvino_available
from runtime.manifest import write_json_atomic
from runtime.preprocess import preprocess_reference

from .errors import ExportError
from .onnx import export_onnx
from .precision import flavour_tag

# (label, precision, flavour, backend, backend options)
ROWS = (
    ("torch eager", "fp32", "", "torch", {}),
    ("ort fp32", "fp32", "", "ort", {}),
    ("ort fp16", "fp16", "", "ort", {}),
    ("ort int8 qdq-u8", "int8", "qdq-u8", "ort", {}),
    ("ort int8 qdq-s8", "int8", "qdq-s8", "ort", {}),
    ("openvino fp32", "fp32", "", "openvino", {"inference_precision": "f32"}),
    ("openvino fp32→bf16", "fp32", "", "openvino", {"inference_precision": None}),
    ("openvino int8 qdq-s8", "int8", "qdq-s8", "openvino", {"inference_precision": "auto"}),
    ("openvino int8, f32 rest", "int8", "qdq-s8", "openvino", {"inference_precision": "f32"}),
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="msnet,m2snet,msnet_effl0")
    p.add_argument("--frame", help="image used as input (default: the first Kvasir-SEG val image)")
    p.add_argument("--data", default="../shared/data/kvasir-seg", help="calibration data (images/ + splits/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--rows", help="comma-separated subset of row labels (default: all but torch eager)")
    p.add_argument("--work-dir", default="artifacts/bench")
    p.add_argument("--json")
    args = p.parse_args(argv)
    data = Path(args.data)
    frame_path = Path(args.frame) if args.frame else data / "images" / (
        (data / "splits" / "val.txt").read_text().split()[0] + ".jpg")
    bgr = cv2.imread(str(frame_path))
    if bgr is None:
        print(f"error: cannot read frame {frame_path}", file=sys.stderr)
        return 1
    rows_wanted = [r for r in ROWS if (r[0] in args.rows.split(",") if args.rows else r[3] != "torch")]
    if not openvino_available():
        rows_wanted = [r for r in rows_wanted if r[3] != "openvino"]
    sessions = []
    try:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for label, prec, flav, backend, opts in rows_wanted:
                if backend == "torch":
                    from .compare import TorchBackend
                    from .onnx import load_for_export

                    net, _ = load_for_export(model, None)
                    spec = net.spec
                    x = preprocess_reference(bgr, spec.input_hw, spec.mean, spec.std)
                    if spec.in_channels != 3:
                        x = x[:, : spec.in_channels]
                    b = TorchBackend(net, spec.input_hw, args.threads).open()
                    sessions.append({"model": model, "row": label, "backend": b, "x": x, "path": None, "times": []})
                    continue
                from training import get_spec

                h, w = get_spec(model).input_hw
                path = Path(args.work_dir) / f"{model}-{h}x{w}-{prec}{'-' + flavour_tag(flav) if flav else ''}.onnx"
                if not path.is_file():
                    print(f"exporting {path.name} …", flush=True)
                    try:
                        man = export_onnx(model, path, precision=prec, int8_flavour=flav or "qdq-s8",
                                          calib_data=str(data), calib_split=str(data / "splits" / "train.txt"),
                                          calib_count=args.calib_count, progress=False, log=lambda *a: None)
                    except ExportError as e:  # e.g. FP16 overflow of an untrained net: skip the row, keep the run
                        print(f"  {model} / {label}: skipped ({e})", flush=True)
                        continue
                else:
                    from runtime.manifest import Manifest

                    man = Manifest.load(path)
                x = preprocess_reference(bgr, man.input_hw, man.mean, man.std)
                b = create_backend(backend, path, threads=args.threads, **opts).open()
                sessions.append({"model": model, "row": label, "backend": b, "x": x, "path": path, "times": []})
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for _ in range(args.warmup):
        for s in sessions:
            s["backend"].infer(s["x"], check=False)
    for _ in range(args.rounds):
        for s in sessions:
            t = time.perf_counter()
            s["backend"].infer(s["x"], check=False)
            s["times"].append((time.perf_counter() - t) * 1e3)
    out = []
    first_ref = None
    print(f"CPU, {args.threads} threads, batch 1, {args.rounds} interleaved rounds on {frame_path.name}")
    print(f"{'model':<14}{'row':<24}{'MB':>7}{'p50 ms':>9}{'p99 ms':>9}{'vs ort-fp32':>12}{'vs first':>10}")
    for model in dict.fromkeys(s["model"] for s in sessions):
        rows = [s for s in sessions if s["model"] == model]
        ref = next((np.median(s["times"]) for s in rows if s["row"] == "ort fp32"), None)
        first_ref = first_ref or ref
        for s in rows:
            p50, p99 = float(np.median(s["times"])), float(np.percentile(s["times"], 99))
            size = s["path"].stat().st_size / 2**20 if s["path"] else float("nan")
            r = {"model": model, "row": s["row"], "size_mb": size, "p50_ms": p50,
                 "p99_ms": p99, "vs_ort_fp32": p50 / ref if ref else None,
                 "vs_first_model_ort_fp32": p50 / first_ref if first_ref else None}
            out.append(r)
            f = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
            print(f"{model:<14}{s['row']:<24}{r['size_mb']:>7.1f}{p50:>9.1f}{p99:>9.1f}{f(r['vs_ort_fp32']):>12}"
                  f"{f(r['vs_first_model_ort_fp32']):>10}")
    for s in sessions:
        s["backend"].close()
    if args.json:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    from runtime.errors import cli_warnings

    cli_warnings()
    raise SystemExit(main())

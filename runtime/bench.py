"""Benchmark backends side by side in one run: latency, pipeline FPS, accuracy, against the naive seed loop.

Usage::

    python -m runtime.bench --model msnet_effl0 --source ../shared/data/cvc-clinicdb-clips/seq01/images \\
        ../shared/data/cvc-clinicdb-clips/seq08/images ../shared/data/cvc-clinicdb-clips/seq19/images \\
        --backends torch,ort-fp32,ort-int8,openvino-int8 --json bench.json --plot bench.png

Rows: ``naive`` (the per-frame loop a seed repository runs: OpenCV → PyTorch eager → NumPy overlay, sequential),
``torch`` (PyTorch eager inside our pipeline), ``ort-fp32``, ``ort-fp16``, ``ort-int8`` / ``openvino-int8`` (the
full-graph uint8 Q/DQ graph, what the demo runs on the CPU), ``ort-int8-s8`` / ``openvino-int8-s8`` (symmetric Q/DQ
on the weighted ops' inputs: the TensorRT graph), ``openvino-fp32``, ``trt-fp16``/``trt-int8`` on GPU machines.
Columns: network input size, network latency p50/p99 (ms), pipeline FPS and end-to-end p50/p99 (capture → overlay,
no display, no video writing), mDice against the ground truth (when a ``masks/`` folder sits beside the frames) and
mask Dice against PyTorch at the same input size. ``--streams`` (default 1, or ``auto`` as in ``demos.live``) sets
the inference streams of the ONNX Runtime/OpenVINO rows, ``ROW@N`` (``openvino-int8@2``) those of one row; the
``str`` column says what each row ran with (network latency is then one request on its share of the threads).
``--input-size H W`` (repeatable) measures every row at each size, the naive loop included, so the cost of a
size is read side by side; exports are cached in ``--work-dir`` per model, size, precision and checkpoint.

The PyTorch rows import torch (through ``export``); the runtime itself never does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .backends import open_backend, parse_streams
from .errors import BackendUnavailableError, EngineError, RuntimeInputError
from .manifest import Manifest, manifest_path, write_json_atomic
from .pipeline import Pipeline, create_processor
from .video import SourceError, open_source

ROWS = {
    "ort-fp32": ("ort", "fp32", ""),
    "ort-fp16": ("ort", "fp16", ""),
    "ort-int8": ("ort", "int8", "qdq-u8"),
    "ort-int8-s8": ("ort", "int8", "qdq-s8"),
    "openvino-fp32": ("openvino", "fp32", ""),
    "openvino-int8": ("openvino", "int8", "qdq-u8"),
    "openvino-int8-s8": ("openvino", "int8", "qdq-s8"),
    "trt-fp16": ("trt", "fp16", ""),
    "trt-int8": ("trt", "int8", "qdq-s8"),
}


def _masks_for(src: str) -> list[Path] | None:
    p = Path(src)
    if not p.is_dir():
        return None
    mdir = p.parent / "masks"
    if not mdir.is_dir():
        return None
    files = sorted(q for q in p.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    masks = [mdir / f.name if (mdir / f.name).exists() else next(iter(mdir.glob(f.stem + ".*")), None) for f in files]
    return masks if all(m is not None for m in masks) else None


def _frames(src: str, limit: int) -> list[np.ndarray]:
    s = open_source(src)
    out = []
    while (f := s.read()) is not None and (not limit or len(out) < limit):
        out.append(f)
    s.close()
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from export.onnx import check_input_size, load_for_export

    for name in args.backends:  # every row name is checked before anything runs
        row_name, at, row_streams = name.partition("@")
        if name not in ("naive", "torch") and row_name not in ROWS:
            raise RuntimeInputError(f"unknown backend row {name!r}; valid: naive, torch, {', '.join(ROWS)} "
                                    f"(optionally with @STREAMS, e.g. openvino-int8@2)")
        if at:
            n = parse_streams(row_streams)
            if ROWS.get(row_name, ("",))[0] == "trt" and n != 1:
                raise RuntimeInputError(f"{name!r}: the TensorRT rows run one stream (drop the @{row_streams})")
    model, src_info = load_for_export(args.model, args.checkpoint)
    spec = model.spec
    sizes = [check_input_size(args.model, spec, hw) for hw in (args.input_size or [None])]
    # exports are cached per model, input size, precision/flavour and checkpoint (a new checkpoint re-exports)
    ckpt_tag = (src_info.get("checkpoint_sha256") or "")[:12] or "untrained"
    sources = list(args.source)
    frames = {s: _frames(s, args.accuracy_frames) for s in sources}
    masks = {s: _masks_for(s) for s in sources}
    work = Path(args.work_dir)
    rows: list[dict[str, Any]] = []
    for hw in sizes:
        rows += _run_size(args, model, spec, hw, ckpt_tag, frames, masks, work)
    return rows


def _run_size(args, model, spec, hw, ckpt_tag, frames, masks, work) -> list[dict[str, Any]]:
    """All rows at one network input size; ``speedup_vs_naive`` against the naive loop at that size."""
    from export.compare import TorchBackend
    from export.onnx import cache_name, export_onnx
    from training.metrics import SegMetrics

    sources = list(frames)
    rows: list[dict[str, Any]] = []
    # reference logits (PyTorch) for the agreement column
    from .preprocess import preprocess_reference

    torch_be = TorchBackend(model, hw, args.threads).open()
    ref = {s: [torch_be.infer(preprocess_reference(f, hw, spec.mean, spec.std)) for f in fs]
           for s, fs in frames.items()}

    def accuracy(backend, manifest) -> dict[str, float]:
        metrics, inter, tot, have_gt = SegMetrics(), 0, 0, False
        for s, fs in frames.items():
            for i, f in enumerate(fs):
                x = preprocess_reference(f, manifest.input_hw, manifest.mean, manifest.std)
                lg = backend.infer(x.astype(backend.input_spec().dtype), check=False).astype(np.float32)
                prob = 1 / (1 + np.exp(-cv2.resize(lg[0, 0], (f.shape[1], f.shape[0]))))
                rp = cv2.resize(ref[s][i][0, 0], (f.shape[1], f.shape[0])) > 0
                pm = prob > manifest.threshold
                inter += int(np.logical_and(pm, rp).sum())
                tot += int(pm.sum() + rp.sum())
                if masks[s]:
                    gt = (cv2.imread(str(masks[s][i]), cv2.IMREAD_GRAYSCALE) >= 128).astype(np.uint8)
                    metrics.step((prob * 255).astype(np.uint8), gt)
                    have_gt = True
        return {"dice_vs_gt": metrics.results()["mDice"] if have_gt else None,
                "dice_vs_torch": 2 * inter / tot if tot else 1.0}

    def pipeline_fps(backend, manifest) -> dict[str, Any]:
        proc = create_processor(backend, manifest, fast=True, threads=1)
        proc.warmup()
        n_frames, secs, e2e = 0, 0.0, []
        for s in sources:
            src = open_source(s, loop=True)
            n = args.pipeline_frames or (len(frames[s]) * 4)
            pipe = Pipeline(src, proc, max_frames=n)
            rep = pipe.run()
            if rep.error:
                raise RuntimeInputError(f"pipeline failed on {s}: {rep.error}")
            n_frames += rep.frames
            secs += rep.seconds
            e2e += pipe.stats["end_to_end"]
        return {"fps": n_frames / secs, "e2e_p50_ms": float(np.percentile(e2e, 50)),
                "e2e_p99_ms": float(np.percentile(e2e, 99)), "pipeline_frames": n_frames}

    def net_latency(backend, manifest) -> dict[str, float]:
        f = frames[sources[0]][0]
        x = preprocess_reference(f, manifest.input_hw, manifest.mean, manifest.std).astype(backend.input_spec().dtype)
        for _ in range(3):
            backend.infer(x, check=False)
        t = []
        for _ in range(args.rounds):
            backend.infer(x, check=False)
            t.append(backend.last_latency_ms)
        return {"p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99))}

    # the naive seed loop
    if "naive" in args.backends:
        from export.baselines import naive_loop

        seq = [f for s in sources for f in frames[s]] * 2
        nl = naive_loop(model, seq, hw, spec.mean, spec.std, args.threads)
        lat = nl["latency_ms"]
        rows.append({"backend": "naive", "input_hw": list(hw), "precision": "fp32", "streams": 1, "size_mb": None,
                     "p50_ms": float(np.median(lat)), "p99_ms": float(np.percentile(lat, 99)), "fps": nl["fps"],
                     "e2e_p50_ms": float(np.median(lat)), "e2e_p99_ms": float(np.percentile(lat, 99)),
                     **accuracy(torch_be, _torch_manifest(args.model, spec, hw))})
        print(_fmt(rows[-1]), flush=True)
    for name in args.backends:
        if name == "naive":
            continue
        if name == "torch":
            be, man = torch_be, _torch_manifest(args.model, spec, hw)
            size = None
        else:
            row_name, _, row_streams = name.partition("@")
            kind, prec, flav = ROWS[row_name]
            # --streams is for the CPU backends; a TensorRT row runs one stream (ROW@N overrides per row)
            streams = parse_streams(row_streams) if row_streams else (1 if kind == "trt" else args.streams)
            path = work / cache_name(args.model, hw, prec, flav, ckpt_tag, data=args.calib_data,
                                     split=args.calib_split, count=args.calib_count)
            if not path.is_file():
                print(f"exporting {path.name} …", file=sys.stderr, flush=True)
                export_onnx(args.model, path, checkpoint=args.checkpoint, precision=prec, int8_flavour=flav or "qdq-s8",
                            input_hw=hw,
                            calib_data=args.calib_data, calib_split=args.calib_split, calib_count=args.calib_count,
                            progress=False, log=lambda *a: None)
            man = Manifest.load(manifest_path(path))
            try:
                be = open_backend(kind, path, threads=args.threads, streams=streams,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
            except BackendUnavailableError as e:
                print(f"{name}: skipped ({e})", file=sys.stderr)
                continue
            size = path.stat().st_size / 2**20
        row = {"backend": name, "input_hw": list(man.input_hw), "precision": man.precision,
               "streams": getattr(be, "streams", 1), "size_mb": size, **net_latency(be, man),
               **pipeline_fps(be, man), **accuracy(be, man)}
        rows.append(row)
        print(_fmt(row), flush=True)
        if be is not torch_be:
            be.close()
    base = next((r["fps"] for r in rows if r["backend"] == "naive"), None)
    for r in rows:
        r["speedup_vs_naive"] = r["fps"] / base if base else None
    return rows


def _torch_manifest(model: str, spec, hw) -> Manifest:
    return Manifest(model=model, input_hw=list(hw), mean=list(spec.mean), std=list(spec.std),
                    threshold=spec.threshold)


HEADER = (f"{'backend':<18}{'input':<9}{'prec':<6}{'str':>4}{'MB':>6}{'net p50':>9}{'net p99':>9}{'FPS':>8}"
          f"{'e2e p50':>9}"
          f"{'e2e p99':>9}{'mDice/gt':>10}{'Dice/pt':>9}")


def _fmt(r: dict[str, Any]) -> str:
    f = lambda v, w, d: (f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}")  # noqa: E731
    hw = r.get("input_hw")
    return (f"{r['backend']:<18}{(f'{hw[0]}x{hw[1]}' if hw else '-'):<9}{r['precision']:<6}"
            f"{r.get('streams', 1):>4}{f(r['size_mb'], 6, 1)}{f(r['p50_ms'], 9, 1)}{f(r['p99_ms'], 9, 1)}"
            f"{f(r['fps'], 8, 1)}{f(r['e2e_p50_ms'], 9, 1)}{f(r['e2e_p99_ms'], 9, 1)}{f(r['dice_vs_gt'], 10, 4)}"
            f"{f(r['dice_vs_torch'], 9, 4)}")


def _labeller(rows: list[dict[str, Any]]):
    """Row label: the backend, plus the input size when the run measured several."""
    several = len({tuple(r.get("input_hw") or ()) for r in rows}) > 1
    return lambda r: (f"{r['backend']} {r['input_hw'][0]}x{r['input_hw'][1]}" if several else r["backend"])


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = _labeller(rows)
    names = [label(r) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.barh(names, [r["fps"] for r in rows], color="tab:green")
    a.set_xlabel("pipeline FPS (higher is better)")
    for i, r in enumerate(rows):
        a.text(r["fps"], i, f" {r['fps']:.0f}", va="center")
    y = np.arange(len(rows))
    b.barh(y - 0.2, [r["e2e_p50_ms"] for r in rows], 0.4, label="end-to-end p50")
    b.barh(y + 0.2, [r["e2e_p99_ms"] for r in rows], 0.4, label="end-to-end p99")
    b.set_yticks(y, names)
    b.set_xlabel("latency, ms (lower is better)")
    b.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="msnet_effl0")
    p.add_argument("--checkpoint")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), action="append",
                   help="network input size of every row, the naive loop's too (default: the model's); repeat it "
                        "to measure several sizes side by side in one run")
    p.add_argument("--source", nargs="+", required=True, help="frame folders or video files")
    p.add_argument("--backends", default="naive,torch,ort-fp32,ort-int8,openvino-int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--streams", default=1, type=parse_streams, metavar="auto|N",
                   help="inference streams of the ONNX Runtime/OpenVINO rows (default 1; auto as demos.live)")
    p.add_argument("--rounds", type=int, default=30, help="network-latency repetitions")
    p.add_argument("--pipeline-frames", type=int, default=0, help="frames per source in the FPS run (default 4× clip)")
    p.add_argument("--accuracy-frames", type=int, default=0, help="frames per source scored (default all)")
    p.add_argument("--calib-data", default="../shared/data/kvasir-seg")
    p.add_argument("--calib-split", default="../shared/data/kvasir-seg/splits/train.txt")
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--work-dir", default="artifacts/bench")
    p.add_argument("--json")
    p.add_argument("--plot")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    print(HEADER, flush=True)
    try:
        rows = run(args)
    except (RuntimeInputError, ValueError, SourceError, EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    base = [r for r in rows if r["backend"] == "naive"]
    if base:
        label = _labeller(rows)
        print("speed-up vs naive (same input size): " + ", ".join(
            f"{label(r)} {r['speedup_vs_naive']:.1f}×" for r in rows if r["backend"] != "naive"
            and r["speedup_vs_naive"] is not None))
    if args.json:
        write_json_atomic(args.json, rows)
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    from runtime.errors import cli_warnings

    cli_warnings()
    raise SystemExit(main())

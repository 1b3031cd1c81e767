"""Benchmark exported models through the runtime, side by side in one run: network latency, pipeline FPS, end-to-end
latency and accuracy. Torch-free: it runs model files (ONNX or engines with their manifests) on the machine's
backends, so it works on an edge box that has only the runtime installed.

Usage::

    python -m runtime.bench --onnx effl0-int8.onnx --onnx effl0-fp32.onnx \\
        --source ../shared/data/cvc-clinicdb-clips/seq01/images --backends ort,openvino,openvino@2 \\
        [--reference effl0-fp32.onnx] [--json bench.json] [--plot bench.png]

Rows: every model file × every backend of ``--backends`` (``ort``, ``openvino``, ``trt``; ``NAME@N`` runs N inference
streams). Columns: network input size, network latency p50/p99 (ms), pipeline FPS and end-to-end p50/p99
(capture → overlay, no display, no video writing), ``Dice/gt`` — per-frame Dice against the ground truth at the deploy
threshold, when a ``masks/`` folder sits beside the frames — and ``Dice/ref`` — mask agreement with ``--reference``
(the one comparator, :mod:`runtime.comparator`).

The same measurements, with exports made on the fly, the PyTorch rows and the naive seed loop:
``python -m export.bench --source …`` (it needs torch; this module does not).

:data:`ROWS` is the one vocabulary of benchmark rows (``export.bench`` names its rows the same way).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from common.cli import entry
from common.io import check_destination, write_json_atomic
from kernels.frame_reference import preprocess_reference

from .backends import open_backend, parse_streams
from .backends.base import Backend
from .comparator import compare
from .errors import BackendUnavailableError, RuntimeInputError
from .manifest import Manifest, manifest_path
from .pipeline import Pipeline, create_processor
from .video import open_source

__all__ = ["ROWS", "BenchData", "measure", "parse_row", "plot", "print_rows"]

#: row name → (backend, precision, INT8 flavour, backend options): the one benchmark vocabulary
ROWS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "ort-fp32": ("ort", "fp32", "", {}),
    "ort-fp16": ("ort", "fp16", "", {}),
    "ort-int8": ("ort", "int8", "qdq-u8", {}),
    "ort-int8-s8": ("ort", "int8", "qdq-s8", {}),
    "openvino-fp32": ("openvino", "fp32", "", {"inference_precision": "f32"}),
    "openvino-fp32-bf16": ("openvino", "fp32", "", {"inference_precision": None}),
    "openvino-int8": ("openvino", "int8", "qdq-u8", {}),
    "openvino-int8-s8": ("openvino", "int8", "qdq-s8", {}),
    "openvino-int8-s8-f32": ("openvino", "int8", "qdq-s8", {"inference_precision": "f32"}),
    "trt-fp16": ("trt", "fp16", "", {}),
    "trt-int8": ("trt", "int8", "qdq-s8", {}),
}


def parse_row(name: str, valid: Sequence[str], extra: Sequence[str] = ()) -> tuple[str, int | str | None]:
    """``ROW[@STREAMS]`` → (row, streams or None); a one-line error for an unknown row or stream count."""
    row, at, streams = name.partition("@")
    if row not in valid and row not in extra:
        raise RuntimeInputError(f"unknown row {name!r}; valid: {', '.join([*extra, *valid])} (optionally with "
                                "@STREAMS, e.g. openvino-int8@2)")
    n = parse_streams(streams) if at else None
    if at and (row.startswith("trt") or row in extra) and n != 1:
        raise RuntimeInputError(f"{name!r}: this row runs one stream (drop the @{streams})")
    return row, n


class BenchData:
    """The frames of every source (and their ground-truth masks when a ``masks/`` folder sits beside them)."""

    def __init__(self, sources: Sequence[str], limit: int = 0) -> None:
        self.sources = list(sources)
        self.frames = {s: self._frames(s, limit) for s in self.sources}
        self.masks = {s: self._masks(s, len(self.frames[s])) for s in self.sources}

    @staticmethod
    def _frames(src: str, limit: int) -> list[np.ndarray]:
        s = open_source(src)
        out = []
        while (not limit or len(out) < limit) and (f := s.read()) is not None:
            out.append(f)
        s.close()
        if not out:
            raise RuntimeInputError(f"source {src!r} holds no readable frame")
        return out

    @staticmethod
    def _masks(src: str, n: int) -> list[np.ndarray] | None:
        import cv2

        p = Path(src)
        mdir = p.parent / "masks"
        if not (p.is_dir() and mdir.is_dir()):
            return None
        files = sorted(q for q in p.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:n]
        paths = [mdir / f.name if (mdir / f.name).exists() else next(iter(mdir.glob(f.stem + ".*")), None)
                 for f in files]
        if not all(paths):
            return None
        return [(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) >= 128).astype(np.uint8) for m in paths]

    def inputs(self, manifest: Manifest, dtype: str = "float32") -> list[np.ndarray]:
        return [preprocess_reference(f, manifest.input_hw, manifest.mean, manifest.std).astype(dtype)
                for s in self.sources for f in self.frames[s]]

    def all_masks(self) -> list[np.ndarray] | None:
        if not all(self.masks[s] for s in self.sources):
            return None
        return [m for s in self.sources for m in self.masks[s]]


def net_latency(backend: Backend, x: np.ndarray, rounds: int) -> dict[str, float]:
    for _ in range(3):
        backend.infer(x, check=False)
    t = []
    for _ in range(rounds):
        backend.infer(x, check=False)
        t.append(backend.last_latency_ms)
    return {"p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99))}


def pipeline_fps(backend: Backend, manifest: Manifest, data: BenchData, frames_per_source: int) -> dict[str, Any]:
    """Frames per second and end-to-end latency of the real pipeline (capture, pre, inference, overlay)."""
    proc = create_processor(backend, manifest, fast=True, threads=1)
    proc.warmup()
    n_frames, secs, e2e = 0, 0.0, []
    for s in data.sources:
        pipe = Pipeline(open_source(s, loop=True), proc, max_frames=frames_per_source or len(data.frames[s]) * 4)
        rep = pipe.run()
        if rep.error:
            raise RuntimeInputError(f"pipeline failed on {s}: {rep.error}")
        n_frames += rep.frames
        secs += rep.seconds
        e2e += pipe.stats["end_to_end"]
    return {"fps": n_frames / secs, "e2e_p50_ms": float(np.percentile(e2e, 50)),
            "e2e_p99_ms": float(np.percentile(e2e, 99)), "pipeline_frames": n_frames}


def measure(name: str, backend: Backend, manifest: Manifest, data: BenchData, *, rounds: int = 30,
            pipeline_frames: int = 0, reference: Sequence[np.ndarray] | None = None,
            size_mb: float | None = None) -> dict[str, Any]:
    """One benchmark row: latency, pipeline, and accuracy through the one comparator (``reference``: logits of the
    reference model for the same frames, e.g. PyTorch's)."""
    xs = data.inputs(manifest, backend.input_spec().dtype)
    logits = [backend.infer(x, check=False).astype(np.float32) for x in xs]
    c = compare(reference if reference is not None else logits, logits, threshold=manifest.threshold,
                gt=data.all_masks())
    return {"backend": name, "input_hw": list(manifest.input_hw), "precision": manifest.precision,
            "streams": getattr(backend, "streams", 1), "size_mb": size_mb, **net_latency(backend, xs[0], rounds),
            **pipeline_fps(backend, manifest, data, pipeline_frames), "dice_vs_gt": c.dice_vs_gt,
            "dice_vs_torch": c.dice_vs_torch if reference is not None else None}


HEADER = (f"{'row':<22}{'input':<9}{'prec':<6}{'str':>4}{'MB':>6}{'net p50':>9}{'net p99':>9}{'FPS':>8}"
          f"{'e2e p50':>9}{'e2e p99':>9}{'Dice/gt':>9}{'Dice/ref':>9}")


def _fmt(r: dict[str, Any]) -> str:
    f = lambda v, w, d: (f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}")  # noqa: E731
    hw = r.get("input_hw")
    return (f"{r['backend']:<22}{(f'{hw[0]}x{hw[1]}' if hw else '-'):<9}{r['precision']:<6}"
            f"{r.get('streams', 1):>4}{f(r['size_mb'], 6, 1)}{f(r['p50_ms'], 9, 1)}{f(r['p99_ms'], 9, 1)}"
            f"{f(r['fps'], 8, 1)}{f(r['e2e_p50_ms'], 9, 1)}{f(r['e2e_p99_ms'], 9, 1)}{f(r['dice_vs_gt'], 9, 4)}"
            f"{f(r['dice_vs_torch'], 9, 4)}")


def print_rows(rows: Sequence[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    out(HEADER)
    for r in rows:
        out(_fmt(r))


def _labeller(rows: Sequence[dict[str, Any]]):
    """Row label: the backend, plus the input size when the run measured several."""
    several = len({tuple(r.get("input_hw") or ()) for r in rows}) > 1
    return lambda r: (f"{r['backend']} {r['input_hw'][0]}x{r['input_hw'][1]}" if several else r["backend"])


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """FPS and end-to-end latency bars, one row each; written atomically."""
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


def report(rows: list[dict[str, Any]], json_path: str | None, plot_path: str | None) -> None:
    """Speed-ups against the naive loop (when measured), then the JSON and the plot."""
    naive = {tuple(r["input_hw"]): r["fps"] for r in rows if r["backend"] == "naive"}
    for r in rows:  # each input size against its own naive loop
        base = naive.get(tuple(r["input_hw"]))
        r["speedup_vs_naive"] = r["fps"] / base if base else None
    if naive:
        label = _labeller(rows)
        print("speed-up vs naive (same input size): " + ", ".join(
            f"{label(r)} {r['speedup_vs_naive']:.1f}×" for r in rows
            if r["backend"] != "naive" and r["speedup_vs_naive"] is not None))
    if json_path:
        write_json_atomic(json_path, rows)
    if plot_path:
        plot(rows, plot_path)
        print(f"wrote {plot_path}")


def add_measure_args(p: argparse.ArgumentParser) -> None:
    """Options shared with ``export.bench --source``."""
    p.add_argument("--source", nargs="+", required=True, help="frame folders or video files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--streams", default=1, type=parse_streams, metavar="auto|N",
                   help="inference streams of the ONNX Runtime/OpenVINO rows (default 1; auto as demos.live)")
    p.add_argument("--rounds", type=int, default=30, help="network-latency repetitions")
    p.add_argument("--pipeline-frames", type=int, default=0, help="frames per source in the FPS run (default 4× clip)")
    p.add_argument("--accuracy-frames", type=int, default=0, help="frames per source scored (default all)")
    p.add_argument("--json", help="rows as JSON")
    p.add_argument("--plot", help="FPS / latency bars as PNG")


def check_measure_args(args: argparse.Namespace) -> None:
    for opt in ("rounds", "threads"):
        if getattr(args, opt) < 1:
            raise RuntimeInputError(f"--{opt} must be at least 1, got {getattr(args, opt)}")
    for opt in ("pipeline_frames", "accuracy_frames"):
        if getattr(args, opt) < 0:
            raise RuntimeInputError(f"--{opt.replace('_', '-')} must be 0 (all) or more, got {getattr(args, opt)}")
    for opt, suffixes in (("json", (".json",)), ("plot", (".png",))):  # before minutes of measuring, not after
        why = getattr(args, opt) and check_destination(getattr(args, opt), suffixes)
        if why:
            raise RuntimeInputError(f"--{opt} {why}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.bench", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", action="append", default=[], help="an exported ONNX (manifest beside it); repeatable")
    p.add_argument("--engine", action="append", default=[], help="a TensorRT engine (GPU machines); repeatable")
    p.add_argument("--backends", default="ort,openvino", help="ort, openvino, trt, each optionally @STREAMS")
    p.add_argument("--reference", help="model file whose masks the Dice/ref column compares with (run on ort)")
    add_measure_args(p)
    args = p.parse_args(argv)
    check_measure_args(args)
    files = [Path(f) for f in args.onnx + args.engine]
    if not files:
        raise RuntimeInputError("give at least one --onnx or --engine model file")
    for f in files:
        if not f.is_file():
            raise RuntimeInputError(f"model file {str(f)!r} does not exist")
    backends = [parse_row(b.strip(), ("ort", "openvino", "trt")) for b in args.backends.split(",") if b.strip()]
    mans = {f: Manifest.load(manifest_path(f)) for f in files}
    rman = Manifest.load(manifest_path(args.reference)) if args.reference else None
    for f, m in mans.items():  # checked before any frame is read
        m.check_matches(f)
        if rman is not None and list(m.input_hw) != list(rman.input_hw):
            raise RuntimeInputError(f"--reference {Path(args.reference).name} runs at {rman.input_hw[0]}x"
                                    f"{rman.input_hw[1]}, {f.name} at {m.input_hw[0]}x{m.input_hw[1]}: the masks are "
                                    "compared pixel for pixel, so give a reference exported at the same size")
    data = BenchData(args.source, args.accuracy_frames)
    ref = None
    if rman is not None:
        with open_backend("ort", args.reference, threads=args.threads) as rb:
            ref = [rb.infer(x) for x in data.inputs(rman)]
    rows = []
    print(HEADER, flush=True)
    for f in files:
        man = mans[f]
        for kind, streams in backends:
            if (kind == "trt") != (f.suffix in (".engine", ".plan")):
                continue
            try:
                be = open_backend(kind, f, threads=args.threads, streams=streams or args.streams)
            except BackendUnavailableError as e:
                print(f"{f.name} on {kind}: skipped ({e})", flush=True)
                continue
            with be:
                name = f"{f.stem}@{kind}" + (f"@{be.streams}" if be.streams != 1 else "")
                rows.append(measure(name, be, man, data, rounds=args.rounds, pipeline_frames=args.pipeline_frames,
                                    reference=ref, size_mb=f.stat().st_size / 2**20))
            print(_fmt(rows[-1]), flush=True)
    report(rows, args.json, args.plot)
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

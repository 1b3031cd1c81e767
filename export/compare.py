"""Parity of exported graphs against PyTorch on real frames, per precision and backend.

Usage::

    python -m export.compare --model msnet_effl0 --data ../shared/data/kvasir-seg \\
        --split ../shared/data/kvasir-seg/splits/val.txt --precisions fp32,fp16,int8 [--json OUT]

For each precision the model is exported (cached in ``--work-dir``), then run on every frame by each backend that
can execute that graph here: ONNX Runtime CPU, OpenVINO (x86), TensorRT when a GPU is present. Columns:
``max_abs_diff`` (max |logit − PyTorch logit| over all frames), ``dice_vs_torch`` (Dice of the backend's masks
against PyTorch's masks, pooled over all pixels), ``dice_vs_gt`` (the MSNet ``mDice``, soft Dice per image then
averaged — the same number ``training.evaluate`` prints), ``dice05_vs_gt`` (thresholded Dice at 0.5 per image,
averaged), and NaN/Inf counts. The INT8 rows come in two flavours: ``qdq-s8`` (TensorRT; OpenVINO runs it too) and
``qdq-u8`` (the CPU backends' graph, ONNX Runtime and OpenVINO).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from common.cli import entry
from kernels.frame_reference import preprocess_reference
from runtime.backends import create_backend
from runtime.backends.base import Backend, TensorSpec
from runtime.comparator import compare as compare_outputs
from runtime.errors import BackendUnavailableError, RuntimeInputError
from runtime.manifest import write_json_atomic

from .cache import cached_export
from .errors import ExportError
from .onnx import load_for_export

__all__ = ["TorchBackend", "compare", "main"]


class TorchBackend(Backend):
    """PyTorch eager reference with the runtime's backend contract (lives here so ``runtime`` stays torch-free)."""

    name = "torch"

    def __init__(self, model, input_hw: Sequence[int], threads: int | None = None) -> None:
        super().__init__()
        self.model, self.hw, self.threads = model.eval(), tuple(input_hw), threads

    def _open(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)

    def input_spec(self) -> TensorSpec:
        return TensorSpec("input", (1, getattr(self.model, "in_channels", 3), *self.hw), "float32")

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()


def _rows_for(precision: str) -> list[tuple[str, str, str]]:
    """(flavour, backend, label) rows for a precision."""
    if precision == "int8":
        return [("qdq-s8", "ort", "ort"), ("qdq-s8", "openvino", "openvino"), ("qdq-s8", "trt", "trt"),
                ("qdq-u8", "ort", "ort"), ("qdq-u8", "openvino", "openvino")]
    return [("", "ort", "ort"), ("", "openvino", "openvino"), ("", "trt", "trt")]


def compare(
    model_name: str,
    data: str,
    *,
    checkpoint: str | None = None,
    split: str | None = None,
    precisions: Sequence[str] = ("fp32", "fp16", "int8"),
    limit: int = 0,
    work_dir: str | os.PathLike[str] = "artifacts/compare",
    calib_count: int = 256,
    calib_method: str | None = None,
    input_hw: Sequence[int] | None = None,
    threads: int | None = None,
    exclude_nodes: Sequence[str] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    from training.data import find_pairs, read_mask
    from training.metrics import SegMetrics

    model, src = load_for_export(model_name, checkpoint)
    spec = model.spec
    hw = tuple(input_hw or spec.input_hw)
    samples = find_pairs(data, split)
    if limit:
        samples = samples[:limit]
    frames, masks = [], []
    for s in samples:
        bgr = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ExportError(f"cannot read image {s.image}")
        frames.append(preprocess_reference(bgr, hw, spec.mean, spec.std))
        masks.append(read_mask(s.mask))
    with TorchBackend(model, hw, threads) as tb:
        ref = [tb.infer(x) for x in frames]

    def score(logits: list[np.ndarray]) -> dict[str, Any]:
        """The one comparator against PyTorch and the ground truth, plus the MSNet mDice (soft, per image)."""
        c = compare_outputs(ref, logits, threshold=spec.threshold, gt=masks)
        metrics = SegMetrics()
        for lg, gt in zip(logits, masks):
            p = 1 / (1 + np.exp(-cv2.resize(lg[0, 0].astype(np.float32), gt.shape[::-1])))
            metrics.step((np.clip(p, 0, 1) * 255).astype(np.uint8), gt)
        return {"max_abs_diff": c.max_abs_diff, "rel_diff": c.rel_diff, "nonfinite": c.nonfinite,
                "dice_vs_torch": c.dice_vs_torch, "dice_vs_gt": metrics.results()["mDice"], "dice05_vs_gt": c.dice_vs_gt}

    rows: list[dict[str, Any]] = [{"precision": "fp32", "backend": "torch", "flavour": "", **score(ref)}]
    calib_kw = {}
    if src["train_config"].get("data") is None:
        calib_kw = {"calib_data": data, "calib_split": split}
    for precision in precisions:
        for flavour, backend, label in _rows_for(precision):
            # this tool measures parity: every graph is kept (the gate's verdict stays in its manifest)
            path = cached_export(work_dir, model_name, checkpoint=checkpoint, precision=precision, input_hw=hw,
                                 parity_gate=False,
                                 int8_flavour=flavour or "qdq-s8", calib_count=calib_count, calib_method=calib_method,
                                 exclude_nodes=exclude_nodes or (), log=lambda *a: None, **calib_kw)
            if backend == "trt":
                path = _engine_for(path)
                if path is None:
                    continue
            try:
                be = create_backend(backend, path, threads=threads)
                with be:
                    got = [be.infer(x) for x in frames]
            except (BackendUnavailableError, RuntimeInputError) as e:
                if backend != "trt":
                    log(f"  {precision}/{label}: skipped ({e})")
                continue
            row = {"precision": precision, "backend": label, "flavour": flavour,
                   **score(got)}
            rows.append(row)
            log(_fmt(row))
    return rows


def _engine_for(onnx_path: Path) -> Path | None:
    """A TensorRT engine of ``onnx_path`` (built once, cached), or None without a GPU and TensorRT."""
    from runtime.manifest import Manifest

    from .trt import build_engine, why_no_engine

    if why_no_engine():
        return None
    engine = onnx_path.with_suffix(".engine")
    if not engine.is_file():
        build_engine(onnx_path, engine, Manifest.load(onnx_path), log=lambda *a: None)
    return engine


def _fmt(r: dict[str, Any]) -> str:
    name = f"{r['precision']}{'/' + r['flavour'] if r['flavour'] else ''}"
    f = lambda v: f"{v:>10.4f}" if v is not None else f"{'n/a':>10}"  # noqa: E731
    return (f"{name:<14}{r['backend']:<10}{r['max_abs_diff']:>12.4g}{f(r['dice_vs_torch'])}"
            f"{f(r['dice_vs_gt'])}{f(r['dice05_vs_gt'])}{r['nonfinite']:>8}")


HEADER = f"{'precision':<14}{'backend':<10}{'max|Δlogit|':>12}{'Dice/pt':>10}{'mDice/gt':>10}{'Dice@.5':>10}{'NaN/Inf':>8}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.compare", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--data", required=True, help="dataset folder with images/ and masks/")
    p.add_argument("--split", help="split file")
    p.add_argument("--precisions", default="fp32,fp16,int8")
    p.add_argument("--limit", type=int, default=0, help="first N images only")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--calib-method", choices=("percentile", "minmax", "entropy"), default=None,
                   help="INT8 calibration (default: the model's)")
    p.add_argument("--exclude-nodes", nargs="*", default=None,
                   help="INT8: node names kept in float (default: the model's sensitive layers)")
    p.add_argument("--work-dir", default="artifacts/compare", help="where exported graphs are cached")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args(argv)
    from common.io import check_destination

    if args.json and (why := check_destination(args.json, (".json",))):
        raise ExportError(f"--json: {why}")
    precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    bad = [s for s in precisions if s not in ("fp32", "fp16", "int8")]
    try:
        if bad:
            raise ExportError(f"unknown precision {bad[0]!r}; valid: fp32, fp16, int8")
        print(HEADER)
        rows = compare(args.model, args.data, checkpoint=args.checkpoint, split=args.split, precisions=precisions,
                       limit=args.limit, work_dir=args.work_dir, calib_count=args.calib_count,
                       calib_method=args.calib_method, input_hw=args.input_size, threads=args.threads,
                       exclude_nodes=args.exclude_nodes, log=lambda *a: None)
    except (ExportError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in rows:
        print(_fmt(r))
    if args.json:
        write_json_atomic(args.json, rows)
        print(f"wrote {args.json}")
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

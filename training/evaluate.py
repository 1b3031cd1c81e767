"""Score a checkpoint on a folder dataset with the ten MSNet metrics.

Usage::

    python -m training.evaluate --checkpoint msnet_effl0-kvasir --data ../shared/data/kvasir-seg \\
        --split ../shared/data/kvasir-seg/splits/val.txt --json val.json [--save-masks DIR] [--grid grid.png]

Each image is resized to the model's input size; the logits are resized back (bilinear) to the original mask
resolution, passed through the sigmoid and scored there (see :mod:`training.metrics`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import entry
from common.io import write_bytes_atomic

from .checkpoint import CheckpointError, read_checkpoint, resolve_checkpoint
from .data import DataError, EvalDataset, find_pairs
from .metrics import METRIC_KEYS, SegMetrics

__all__ = ["evaluate_dataset", "main", "predict_u8"]


@torch.no_grad()
def predict_u8(model: nn.Module, x: torch.Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """Foreground probability × 255 (uint8, truncated) at ``out_hw`` for one normalised input ``[3, h, w]``."""
    logits = model(x[None])
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = F.interpolate(logits[:, :1].float(), size=out_hw, mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits)[0, 0] * 255).to(torch.uint8).numpy()


def evaluate_dataset(
    model: nn.Module,
    ds: EvalDataset,
    *,
    progress: bool = False,
    save_masks: str | Path | None = None,
    keep_preds: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run ``model`` over ``ds`` and return (the ten metrics, extras incl. per-image Dice and optional preds)."""
    from tqdm import tqdm

    model.eval()
    metrics = SegMetrics()
    per_image: dict[str, float] = {}
    preds: list[np.ndarray] = []
    if save_masks:
        Path(save_masks).mkdir(parents=True, exist_ok=True)
    it = tqdm(range(len(ds)), desc="evaluate", unit="img", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for i in it:
        x, mask, sid = ds[i]
        pred = predict_u8(model, x, mask.shape)
        per_image[sid] = metrics.step(pred, mask)["mDice"]
        if keep_preds:
            preds.append(pred)
        if save_masks:
            _write_png_atomic(Path(save_masks) / f"{sid}.png", pred)
    extras = {**metrics.extra(), "per_image_mDice": per_image, "seconds": time.perf_counter() - t0}
    if keep_preds:
        extras["preds"] = preds
    return metrics.results(), extras


def _write_png_atomic(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"cannot encode {path}")
    write_bytes_atomic(path, buf.tobytes())


def save_grid(ds: EvalDataset, preds: Sequence[np.ndarray], path: str | Path, n: int = 8, threshold: float = 0.5) -> None:
    """Qualitative grid: image | ground truth | prediction overlay (green = prediction, red outline = GT)."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    fig, axes = plt.subplots(len(idx), 3, figsize=(9, 3 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        img, mask = ds.image(i), ds.items[i][2]
        pred = preds[i] >= int(threshold * 255)
        over = img.copy()
        over[pred] = (0.5 * over[pred] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
        cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(over, cnts, -1, (255, 0, 0), max(2, img.shape[0] // 200))
        inter = np.logical_and(pred, mask > 0).sum()
        dice = 2 * inter / max(1, pred.sum() + (mask > 0).sum())
        for col, (im, title) in enumerate(
            ((img, ds.items[i][0].id[:18]), (mask * 255, "ground truth"), (over, f"prediction (Dice@0.5 {dice:.3f})"))
        ):
            ax = axes[row][col]
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def format_table(results: dict[str, float], extra: dict[str, float] | None = None) -> str:
    head = " ".join(f"{k:>7}" for k in METRIC_KEYS)
    vals = " ".join(f"{results[k]:7.4f}" for k in METRIC_KEYS)
    lines = [head, vals]
    if extra and "toolbox_mDice" in extra:
        lines.append(f"(PraNet-toolbox threshold-averaged mDice, not one of the ten: {extra['toolbox_mDice']:.4f})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint path or shipped alias (e.g. msnet_effl0-kvasir)")
    p.add_argument("--model", help="registry name (default: the one recorded in the checkpoint)")
    p.add_argument("--data", required=True, help="dataset folder with images/ and masks/")
    p.add_argument("--split", help="split file (one id per line)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="override the model input size")
    p.add_argument("--json", help="write the ten metrics as JSON here")
    p.add_argument("--save-masks", help="folder for predicted probability maps (PNG, original resolution)")
    p.add_argument("--grid", help="write a qualitative grid PNG here")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad image/mask: stop or skip")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from common.io import check_destination

    from . import get_spec, load_model

    # destinations before the evaluation: it must not end, minutes later, on an output it cannot write
    for flag, path, suffix in (("--json", args.json, (".json",)), ("--grid", args.grid, (".png",))):
        if path and (why := check_destination(path, suffix)):
            raise CheckpointError(f"{flag}: {why}")
    if args.save_masks and Path(args.save_masks).exists() and not Path(args.save_masks).is_dir():
        raise CheckpointError(f"--save-masks: {args.save_masks!r} is a file, not a folder")

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ckpt = read_checkpoint(resolve_checkpoint(args.checkpoint))
        name = args.model or ckpt.get("model")
        if not name:
            raise CheckpointError(f"{args.checkpoint!r} does not record its model: pass --model NAME")
        model = load_model(name, ckpt)
        spec = get_spec(name)
        hw = tuple(args.input_size) if args.input_size else spec.input_hw
        samples = find_pairs(args.data, args.split, on_error=args.on_error)
        ds = EvalDataset(samples, spec.mean, spec.std, hw, on_error=args.on_error)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results, extras = evaluate_dataset(
        model, ds, progress=sys.stderr.isatty(), save_masks=args.save_masks, keep_preds=bool(args.grid)
    )
    print(f"{name} on {args.data} ({len(ds)} images, input {hw[0]}x{hw[1]}, {extras['seconds']:.1f} s)")
    print(format_table(results, extras))
    if args.json:
        write_bytes_atomic(Path(args.json), (json.dumps(results, indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    if args.grid:
        save_grid(ds, extras["preds"], args.grid)
        print(f"wrote {args.grid}")
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

"""Train a registered model on a folder dataset; scales out with ``torchrun`` (DistributedDataParallel).

Usage::

    python -m training.train --model msnet_effl0 --data ../shared/data/kvasir-seg \\
        --train-split ../shared/data/kvasir-seg/splits/train.txt \\
        --val-split ../shared/data/kvasir-seg/splits/val.txt --epochs 40 --out runs/effl0

    torchrun --nproc_per_node 2 -m training.train ...same arguments...      # DDP (gloo on CPU, nccl on GPU)

Writes to ``--out``: ``config.json`` (resolved arguments), ``last.pt`` (every epoch, with optimizer state, for
``--resume``), ``best.pt`` (best validation mDice), ``log.csv`` and ``curves.png``. All writes are atomic.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from common.cli import entry
from common.io import write_bytes_atomic

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .data import EvalDataset, TrainDataset, epoch_sizes, find_pairs, multiscale_collate
from .evaluate import evaluate_dataset
from .losses import structure_loss
from .models.registry import create_model, get_spec

__all__ = ["build_parser", "lr_at", "main", "train"]

LOG_FIELDS = ("epoch", "lr", "train_loss", "val_mDice", "val_mIoU", "val_MAE", "epoch_s")


# --------------------------------------------------------------------------- schedule
def lr_at(step: int, total: int, base: float, schedule: str, warmup: int = 0, steps_per_epoch: int = 1) -> float:
    """Learning rate at optimiser ``step`` of ``total``.

    * ``cosine``: linear warm-up over ``warmup`` steps, then cosine decay to 1 % of ``base``.
    * ``triangular``: MSNet's per-epoch schedule ``base · (1 − |2(e+1)/(E+1) − 1|)``.
    * ``constant``.
    """
    if schedule == "constant":
        return base
    if schedule == "triangular":
        e, n_ep = step // steps_per_epoch, max(1, total // steps_per_epoch)
        return base * (1 - abs(2 * (e + 1) / (n_ep + 1) - 1))
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; valid: cosine, triangular, constant")
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _rng_state() -> dict[str, Any]:
    """RNG states in types that ``torch.load(weights_only=True)`` accepts (tensors, lists, numbers)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(state), gauss_py],
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_py = rng["python"]
    random.setstate((version, tuple(state), gauss_py))


# --------------------------------------------------------------------------- distributed helpers
def _dist_setup() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _param_checksum(model: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.double().sum() + p.double().abs().sum() for p in model.parameters()))


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------- logging
def _append_csv(path: Path, row: dict[str, Any]) -> None:
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [{k: row.get(k, "") for k in LOG_FIELDS}]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_curves(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    ep = [int(r["epoch"]) for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(ep, [float(r["train_loss"]) for r in rows], "o-", label="train structure loss")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1b = a1.twinx()
    a1b.plot(ep, [float(r["lr"]) for r in rows], "--", color="grey", label="lr")
    a1b.set_ylabel("learning rate")
    a1.legend(loc="upper right")
    for key, style in (("val_mDice", "o-"), ("val_mIoU", "s-")):
        vals = [float(r[key]) if r[key] not in ("", None) else float("nan") for r in rows]
        a2.plot(ep, vals, style, label=key)
    a2.set_xlabel("epoch")
    a2.set_ylim(0, 1)
    a2.grid(alpha=0.3)
    a2.legend(loc="lower right")
    a2.set_title("validation")
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)


# --------------------------------------------------------------------------- training
def train(args: argparse.Namespace) -> dict[str, Any]:
    rank, world = _dist_setup()
    is_main = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    spec = get_spec(args.model)
    native = tuple(args.input_size) if args.input_size else spec.input_hw
    sizes = args.sizes or epoch_sizes(native[0])
    seed = args.seed + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts them)

    train_samples = find_pairs(args.data, args.train_split, on_error=args.on_error)
    if args.limit_train:
        train_samples = train_samples[: args.limit_train]
    base_hw = (max(sizes), max(sizes))
    ds = TrainDataset(
        train_samples, spec.mean, spec.std, base_hw, rotate=args.rotate, vflip=args.vflip,
        color_jitter=args.color_jitter, on_error=args.on_error,
    )
    val_ds = None
    if args.val_split or args.val_data:
        val_samples = find_pairs(args.val_data or args.data, args.val_split, on_error=args.on_error)
        if args.limit_val:
            val_samples = val_samples[: args.limit_val]
        val_ds = EvalDataset(val_samples, spec.mean, spec.std, native, on_error=args.on_error) if is_main else None

    model_kwargs = {"pretrained": args.pretrained} if "effl0" in args.model else {}
    if args.drop_path and "effl0" in args.model:
        model_kwargs["drop_path"] = args.drop_path
    model = create_model(args.model, **model_kwargs)
    model_kwargs.pop("pretrained", None)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed) if world > 1 else None
    loader = DataLoader(
        ds, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=len(ds) > args.batch_size,
        collate_fn=multiscale_collate(sizes), num_workers=args.workers, persistent_workers=args.workers > 0,
    )
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    steps_per_epoch = len(loader)
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    total_steps = steps_per_epoch * args.epochs

    start_epoch, history, best = 0, [], -1.0
    last_path = out / "last.pt"
    if args.resume and last_path.exists():
        ck = read_checkpoint(last_path)
        if ck.get("model") != args.model:
            raise CheckpointError(f"{last_path} is a {ck.get('model')!r} run, not {args.model!r}: use another --out")
        missing = [k for k in ("state_dict", "optimizer", "epoch") if k not in ck]
        if missing:
            raise CheckpointError(f"{last_path} cannot be resumed: it lacks {', '.join(missing)} (a weights-only "
                                  "checkpoint such as best.pt or a shipped one): start a new run in another --out")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history, best = int(ck["epoch"]) + 1, list(ck.get("history", [])), float(ck.get("best", -1))
        rng = ck.get("rng")
        if rng is not None and world == 1:
            _set_rng_state(rng)
        if is_main:
            print(f"resumed from {last_path} at epoch {start_epoch} (best val mDice so far {best:.4f})", flush=True)
    elif args.resume and is_main:
        print(f"--resume: no {last_path} yet, starting a new run", flush=True)

    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    config = {k: v for k, v in vars(args).items()}
    config.update(native_hw=list(native), sizes=list(sizes), world_size=world, train_images=len(ds),
                  val_images=len(val_ds) if val_ds is not None else 0)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / "config.json", (json.dumps(config, indent=2, default=str) + "\n").encode())
        print(f"training {args.model} on {len(ds)} images (sizes {sizes}, batch {args.batch_size}×{world}), "
              f"{args.epochs} epochs → {out}", flush=True)

    from tqdm import tqdm

    amp = args.amp == "bf16"
    sync_log = []
    end_epoch = min(args.epochs, start_epoch + args.stop_after) if args.stop_after else args.epochs
    for epoch in range(start_epoch, end_epoch):
        if sampler is not None:
            sampler.set_epoch(epoch)
        ddp.train()
        t0, losses = time.perf_counter(), []
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch",
                   disable=not (is_main and args.progress), dynamic_ncols=True, leave=False)
        for i, (x, m) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, args.lr, args.schedule, args.warmup_epochs * steps_per_epoch, steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = ddp(x)
            loss = structure_loss(logits.float(), m, weighted_bce=not args.official_loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i}: lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if world > 1:
            t = torch.tensor([train_loss], dtype=torch.float64)
            dist.all_reduce(t)
            train_loss = float(t.item() / world)
            sums = [None] * world
            dist.all_gather_object(sums, _param_checksum(model))
            sync_log.append({"epoch": epoch, "checksums": sums})

        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss}
        if is_main:
            if val_ds is not None and ((epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs):
                res, _ = evaluate_dataset(model, val_ds)
                row.update(val_mDice=res["mDice"], val_mIoU=res["mIoU"], val_MAE=res["MAE"])
            row["epoch_s"] = round(time.perf_counter() - t0, 1)
            history.append(row)
            score = row.get("val_mDice", -1.0)
            meta = {"epoch": epoch, "history": history, "config": config, "model_kwargs": model_kwargs}
            if score > best:
                best = score
                save_checkpoint(out / "best.pt", model, args.model, model_kwargs=model_kwargs, half=args.save_half,
                                epoch=epoch, metrics={k: v for k, v in row.items() if k.startswith("val_")},
                                config=config)
            rng = _rng_state()
            save_checkpoint(last_path, model, args.model, model_kwargs=model_kwargs, optimizer=opt.state_dict(),
                            best=best, rng=rng, **{k: v for k, v in meta.items() if k != "model_kwargs"})
            _append_csv(out / "log.csv", row)
            plot_curves(out / "log.csv", out / "curves.png")
            if sync_log:
                write_bytes_atomic(out / "ddp_sync.json", json.dumps(sync_log, indent=1).encode())
            val = f" val mDice {row['val_mDice']:.4f} mIoU {row['val_mIoU']:.4f}" if "val_mDice" in row else ""
            print(f"epoch {epoch + 1}/{args.epochs} lr {lr:.2e} loss {train_loss:.4f}{val} ({row['epoch_s']} s)",
                  flush=True)
        _barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"best": best, "history": history, "out": str(out)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--model", required=True, help="registry name (see training.list_models())")
    a("--data", required=True, help="dataset folder with images/ and masks/ (or PraNet TrainDataset layout)")
    a("--train-split", help="file with the training ids (one per line)")
    a("--val-split", help="file with the validation ids")
    a("--val-data", help="validation dataset folder (default: --data)")
    a("--epochs", type=int, default=50)
    a("--out", required=True, help="output folder (checkpoints, config, log, curves)")
    a("--batch-size", type=int, default=16)
    a("--optimizer", choices=("adamw", "sgd"), default="adamw")
    a("--lr", type=float, default=5e-4)
    a("--weight-decay", type=float, default=1e-4)
    a("--schedule", choices=("cosine", "triangular", "constant"), default="cosine")
    a("--warmup-epochs", type=int, default=1)
    a("--clip-grad", type=float, default=0.0, help="max gradient norm (0 = off)")
    a("--input-size", type=int, nargs=2, metavar=("H", "W"), help="native size (default: the model's)")
    a("--sizes", type=int, nargs="+", help="multi-scale training sizes (default: ~0.67–1.11 × native)")
    a("--rotate", type=float, default=10.0, help="max rotation, degrees")
    a("--vflip", type=float, default=0.0, help="vertical flip probability")
    a("--color-jitter", type=float, default=0.0, help="brightness/contrast jitter amplitude")
    a("--drop-path", type=float, default=0.0, help="stochastic depth of the Lite0 encoder")
    a("--no-pretrained", dest="pretrained", action="store_false", help="random encoder init (edge variants)")
    a("--official-loss", action="store_true", help="MSNet's code-as-run loss: unweighted mean BCE + weighted IoU")
    a("--amp", choices=("none", "bf16"), default="none", help="CPU autocast precision")
    a("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    a("--val-every", type=int, default=1)
    a("--seed", type=int, default=0)
    a("--threads", type=int, default=None, help="torch CPU threads per process")
    a("--workers", type=int, default=0, help="DataLoader workers")
    a("--on-error", choices=("raise", "skip"), default="raise", help="bad image/mask: stop or skip with a warning")
    a("--save-half", action="store_true", help="store best.pt in float16")
    a("--limit-train", type=int, default=0, help="use only the first N training images (smoke tests)")
    a("--limit-val", type=int, default=0, help="use only the first N validation images")
    a("--max-steps", type=int, default=0, help="cap optimiser steps per epoch (smoke tests)")
    a("--stop-after", type=int, default=0, help="stop after N epochs of this invocation (time-boxed; --resume continues)")
    a("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

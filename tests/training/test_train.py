"""Training CLI end to end on real Kvasir-SEG images: outputs, exact resume, 2-process DistributedDataParallel."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import load_model
from common.cli import run
from training.train import lr_at, main

ROOT = Path(__file__).resolve().parents[2]


def _args(kvasir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", "msnet_effl0", "--data", str(kvasir), "--train-split", str(kvasir / "splits" / "train.txt"),
        "--val-split", str(kvasir / "splits" / "val.txt"), "--out", str(out), "--input-size", "64", "64",
        "--sizes", "64", "--batch-size", "4", "--limit-train", "8", "--limit-val", "3", "--threads", "1",
        "--no-progress", "--no-pretrained", *extra,
    ]


def test_msnet_triangular_schedule_values():
    # models.md §2.3: 0.00196 at e = 0, 0.0490 at e = 24, 50 epochs, base 0.05
    spe = 10
    assert lr_at(0, 50 * spe, 0.05, "triangular", steps_per_epoch=spe) == pytest.approx(0.05 * 2 / 51, rel=1e-9)
    assert lr_at(24 * spe, 50 * spe, 0.05, "triangular", steps_per_epoch=spe) == pytest.approx(0.0490, abs=1e-4)
    assert lr_at(0, 100, 1.0, "cosine", warmup=10) == pytest.approx(0.1)
    assert lr_at(99, 100, 1.0, "cosine", warmup=10) == pytest.approx(0.01, abs=1e-3)


def test_train_writes_outputs_and_resumes_exactly(kvasir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(kvasir, straight, "--epochs", "2")) == 0
    for f in ("config.json", "last.pt", "best.pt", "log.csv", "curves.png"):
        assert (straight / f).is_file(), f
    assert not list(straight.glob(".*tmp*")), "atomic writes leave no temporary files"
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["model"] == "msnet_effl0" and cfg["train_images"] == 8
    rows = list(csv.DictReader(open(straight / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(0 <= float(r["val_mDice"]) <= 1 for r in rows)
    best = torch.load(straight / "best.pt", weights_only=True)
    assert best["model"] == "msnet_effl0" and best["spec"]["input_hw"] == [256, 256]
    load_model("msnet_effl0", straight / "best.pt")

    # interrupted after one epoch, then resumed: identical weights to the uninterrupted run
    assert main(_args(kvasir, resumed, "--epochs", "2", "--stop-after", "1")) == 0
    assert len(list(csv.DictReader(open(resumed / "log.csv")))) == 1
    assert main(_args(kvasir, resumed, "--epochs", "2", "--resume")) == 0
    a = torch.load(straight / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "last.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-5, f"resumed run diverged from the uninterrupted one by {diff}"
    assert [int(r["epoch"]) for r in csv.DictReader(open(resumed / "log.csv"))] == [1, 2]


def test_resume_refuses_another_models_run(kvasir, tmp_path, capsys):
    assert main(_args(kvasir, tmp_path, "--epochs", "1", "--max-steps", "1")) == 0
    args = _args(kvasir, tmp_path, "--epochs", "2", "--resume")
    args[args.index("msnet_effl0")] = "m2snet_effl0"
    assert run(main, args) == 1  # the command wrapper: one line, exit 1
    assert "is a 'msnet_effl0' run, not 'm2snet_effl0'" in capsys.readouterr().err


def test_bad_data_is_one_line(tmp_path, capsys):
    assert run(main, ["--model", "msnet_effl0", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.slow
def test_two_process_ddp_ranks_stay_in_sync(kvasir, tmp_path):
    out = tmp_path / "ddp"
    args = _args(kvasir, out, "--epochs", "2", "--max-steps", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync = json.loads((out / "ddp_sync.json").read_text())
    assert [s["epoch"] for s in sync] == [0, 1]
    for s in sync:
        assert len(s["checksums"]) == 2
        assert s["checksums"][0] == s["checksums"][1], "DDP ranks diverged"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    # each rank saw a different half of the data: 8 images, batch 4 → 1 step per rank per epoch
    assert len(list(csv.DictReader(open(out / "log.csv")))) == 2

"""training.evaluate end to end on real Kvasir-SEG val images."""

from __future__ import annotations

import json

import cv2
import pytest
import torch

from training import create_model, save_checkpoint
from training.evaluate import main
from training.metrics import METRIC_KEYS


@pytest.fixture(scope="module")
def small_split(kvasir, tmp_path_factory):
    p = tmp_path_factory.mktemp("split") / "val6.txt"
    p.write_text("\n".join((kvasir / "splits" / "val.txt").read_text().split()[:6]) + "\n")
    return p


def test_evaluate_writes_ten_metrics_masks_and_grid(kvasir, small_split, tmp_path, capsys):
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck.pt", create_model("msnet_effl0", pretrained=True), "msnet_effl0")
    js, masks, grid = tmp_path / "m.json", tmp_path / "masks", tmp_path / "grid.png"
    rc = main(["--checkpoint", str(ck), "--data", str(kvasir), "--split", str(small_split), "--json", str(js),
               "--save-masks", str(masks), "--grid", str(grid), "--input-size", "96", "96"])
    assert rc == 0
    res = json.loads(js.read_text())
    assert tuple(res) == METRIC_KEYS and all(0 <= v <= 1 for v in res.values())
    out = capsys.readouterr().out
    assert "mDice" in out and "6 images" in out and "toolbox" in out
    ids = small_split.read_text().split()
    for i in ids:
        pred = cv2.imread(str(masks / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(kvasir / "masks" / f"{i}.jpg"), cv2.IMREAD_GRAYSCALE)
        assert pred.shape == gt.shape, "predictions are saved at the original resolution"
    assert cv2.imread(str(grid)) is not None


def test_evaluate_bad_checkpoint_is_one_line(kvasir, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(kvasir)]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and err.count("\n") == 1

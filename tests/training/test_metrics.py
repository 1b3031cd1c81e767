"""The ten metrics on real Kvasir-SEG masks, against pysodmetrics and independent NumPy definitions."""

from __future__ import annotations

import cv2
import numpy as np
import py_sod_metrics as sod
import pytest

from training.data import find_pairs, read_mask
from training.metrics import METRIC_KEYS, SegMetrics, min_max, toolbox_dice


@pytest.fixture(scope="module")
def pairs(kvasir):
    """Ten real masks with imperfect 'predictions' made from them (blurred, shifted, eroded, one empty)."""
    out = []
    rng = np.random.default_rng(0)
    for k, s in enumerate(find_pairs(kvasir, kvasir / "splits" / "val.txt")[:10]):
        gt = read_mask(s.mask)
        if max(gt.shape) > 700:  # keep the test fast; metrics are resolution-agnostic
            gt = cv2.resize(gt, (gt.shape[1] // 2, gt.shape[0] // 2), interpolation=cv2.INTER_NEAREST)
        soft = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 4 + k)
        soft = np.roll(soft, 3 * k, axis=1) * 0.9 + 0.05 * rng.random(gt.shape)
        pred = (np.clip(soft, 0, 1) * 255).astype(np.uint8)
        if k == 9:
            pred[:] = 3  # a constant map: MSNet divides by 255 instead of min-max
        out.append((pred, gt))
    return out


def test_keys_and_perfect_prediction(pairs):
    m = SegMetrics()
    for _, gt in pairs[:3]:
        m.step(gt * 255, gt)
    r = m.results()
    assert tuple(r) == METRIC_KEYS
    assert r["MAE"] == 0 and r["Sm"] == pytest.approx(1) and r["Em"] == pytest.approx(1, abs=1e-4)  # ÷(HW − 1)
    assert r["mDice"] == pytest.approx(1) and r["mIoU"] == pytest.approx(1)
    assert r["BER"] == 0 and r["Acc"] == 1 and r["maxF"] == pytest.approx(1, abs=1e-6)


def test_against_pysodmetrics_and_numpy(pairs):
    ours = SegMetrics()
    mae, fm, wfm, sm, em = sod.MAE(), sod.Fmeasure(), sod.WeightedFmeasure(), sod.Smeasure(), sod.Emeasure()
    v2 = sod.FmeasureV2(
        metric_handlers={
            "iou": sod.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
            "ber": sod.BERHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
            "acc": sod.OverallAccuracyHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
        }
    )
    soft_dice, ps, rs = [], [], []
    for pred, gt in pairs:
        ours.step(pred, gt)
        g = gt * 255
        for metric in (mae, fm, wfm, sm, em, v2):
            metric.step(pred, g)
        p = min_max(pred)
        soft_dice.append((2 * (p * gt).sum() + 1e-5) / (gt.sum() + p.sum() + 1e-5))
        # MSNet maxF: precision/recall per threshold per image, averaged over images before F
        q = (p * 255).astype(np.uint8)
        tp = np.array([np.logical_and(q >= t, gt > 0).sum() for t in range(256)], dtype=float)
        pp = np.array([(q >= t).sum() for t in range(256)], dtype=float)
        ps.append(np.where(pp > 0, tp / np.maximum(pp, 1), 0))
        rs.append(tp / max(1, gt.sum()))
    r = ours.results()
    P, R = np.mean(ps, 0), np.mean(rs, 0)
    max_f = np.max(1.3 * P * R / (0.3 * P + R + 1e-8))
    v2r = v2.get_results()
    assert r["MAE"] == pytest.approx(mae.get_results()["mae"], abs=1e-9)
    assert r["avgF"] == pytest.approx(fm.get_results()["fm"]["adp"], abs=1e-9)
    assert r["wFm"] == pytest.approx(wfm.get_results()["wfm"], abs=1e-9)
    assert r["Sm"] == pytest.approx(sm.get_results()["sm"], abs=1e-9)
    assert r["Em"] == pytest.approx(em.get_results()["em"]["adp"], abs=1e-9)
    assert r["maxF"] == pytest.approx(max_f, abs=2e-3)
    assert r["mDice"] == pytest.approx(np.mean(soft_dice), abs=1e-9)
    assert r["mIoU"] == pytest.approx(v2r["iou"]["binary"], abs=2e-3)
    assert r["BER"] == pytest.approx(v2r["ber"]["binary"], abs=2e-3)
    assert r["Acc"] == pytest.approx(v2r["acc"]["binary"], abs=2e-3)
    assert 0.2 < r["mDice"] < 0.95, "imperfect predictions give an imperfect score"


def test_toolbox_dice_is_threshold_averaged(pairs):
    pred, gt = pairs[0]
    p = (min_max(pred) * 255).astype(np.uint8)
    manual = np.mean([2 * np.logical_and(p >= t, gt > 0).sum() / ((p >= t).sum() + gt.sum()) for t in range(256)])
    assert toolbox_dice(pred, gt) == pytest.approx(manual, abs=1e-6)


def test_bad_inputs():
    m = SegMetrics()
    with pytest.raises(TypeError, match="uint8"):
        m.step(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        m.step(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        m.results()

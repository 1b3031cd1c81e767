"""The compiled hot path against the OpenCV/NumPy reference chain, on real frames and awkward sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kernels import ops
from kernels.frame_reference import overlay_reference, preprocess_reference

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ONE_LEVEL = 1.0 / 255 / min(STD)  # one uint8 level after normalisation


@pytest.fixture(scope="module")
def frames(data_dir):
    hd = cv2.imread(str(data_dir / "colonoscopy-1080p-frames" / "0001.png"))
    clip = cv2.imread(str(data_dir / "cvc-clinicdb-clips" / "seq01" / "images" / "0001.png"))
    return {"1080p": hd, "cvc": clip}


@pytest.mark.parametrize("hw", [(288, 288), (352, 352), (33, 47), (1, 1), (600, 900)])
@pytest.mark.parametrize("src", ["1080p", "cvc"])
def test_preprocess_matches_reference(frames, src, hw):
    bgr = frames[src]
    got = ops.preprocess(bgr, hw, MEAN, STD)
    ref = preprocess_reference(bgr, hw, MEAN, STD)
    assert got.shape == ref.shape == (1, 3, *hw)
    # OpenCV interpolates uint8 in 11-bit fixed point and rounds to uint8; we stay in float: ≤ 1 level apart
    assert np.abs(got - ref).max() <= ONE_LEVEL + 1e-6
    assert np.abs(got - ref).mean() < 0.3 * ONE_LEVEL  # uniform rounding error averages 0.25 level


def test_preprocess_float16_threads_and_views(frames):
    bgr = frames["1080p"]
    f32 = ops.preprocess(bgr, (288, 288), MEAN, STD, threads=1)
    f16 = ops.preprocess(bgr, (288, 288), MEAN, STD, np.float16, threads=2)
    assert f16.dtype == np.float16 and np.array_equal(f16, f32.astype(np.float16))  # round-to-nearest-even
    out = np.empty((1, 3, 288, 288), np.float32)
    assert ops.preprocess(bgr, (288, 288), MEAN, STD, out=out) is out
    crop = bgr[100:700, 300:1500]  # a view with a row stride wider than the row
    assert np.abs(ops.preprocess(crop, (64, 64), MEAN, STD) - preprocess_reference(np.ascontiguousarray(crop), (64, 64),
                                                                                    MEAN, STD)).max() <= ONE_LEVEL


def test_float_to_half_edge_cases():
    special = [0.0, -0.0, 1.0, 65504.0, 65520.0, 70000.0, 1e-8, 6.1e-5, 5.96e-8, 2.0**-25, 2.0**-24 * 1.5, np.inf,
               -np.inf, 0.1, -3.14159]
    rand = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * np.float32(10.0) ** np.random.default_rng(
        1).integers(-9, 6, 20000).astype(np.float32)
    values = np.concatenate([np.array(special, np.float32), rand])
    with np.errstate(over="ignore"):
        want = values.astype(np.float16).view(np.uint16)
    got = np.array([ops._ext.float_to_half(float(v)) for v in values], np.uint16)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(float(values[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]
    assert ops._ext.float_to_half(float("nan")) & 0x7C00 == 0x7C00


@pytest.mark.parametrize("src", ["1080p", "cvc"])
@pytest.mark.parametrize("lhw", [(72, 72), (88, 88), (5, 9), (1, 1)])
def test_overlay_matches_reference(frames, src, lhw):
    bgr = frames[src]
    rng = np.random.default_rng(lhw[0])
    logits = rng.standard_normal(lhw).astype(np.float32) * 4
    if min(lhw) > 4:
        logits = cv2.GaussianBlur(logits, (0, 0), 2) * 5
    got = bgr.copy()
    mask = np.zeros(bgr.shape[:2], np.uint8)
    n = ops.overlay(got, logits, threshold=0.5, mask=mask, threads=2)
    ref, ref_mask = overlay_reference(bgr, logits, 0.5)
    # float rounding may flip pixels whose logit sits exactly at the threshold: allow a handful, nothing more
    assert (mask != ref_mask).sum() <= 2
    assert n == int(mask.sum())
    assert (got != ref).any(-1).sum() <= 20
    assert not np.array_equal(got, bgr) or n == 0


def test_overlay_threshold_and_edges(frames):
    bgr = frames["cvc"]
    logits = np.full((4, 4), -10, np.float32)
    logits[1:3, 1:3] = 10
    out = bgr.copy()
    n = ops.overlay(out, logits, threshold=0.5, fill=(0, 0, 255), alpha=1.0, outline=(255, 0, 0))
    ref, m = overlay_reference(bgr, logits, 0.5, fill=(0, 0, 255), alpha=1.0, outline=(255, 0, 0))
    assert np.array_equal(out, ref) and n == m.sum() > 0
    assert (out == (255, 0, 0)).all(-1).sum() > 0, "outline painted"
    # a threshold of 0.99 needs logits above log(99) ≈ 4.6
    out2 = bgr.copy()
    assert ops.overlay(out2, np.full((4, 4), 4.0, np.float32), threshold=0.99) == 0 and np.array_equal(out2, bgr)


@pytest.mark.parametrize("src", ["1080p", "cvc"])
def test_overlay_background_rows_skip_exactly(frames, src):
    """Rows whose source logits all sit below the threshold are skipped without interpolation; rows at or just
    around the threshold must still take the exact path (same mask as the reference)."""
    bgr = frames[src]
    logits = np.full((64, 64), -8.0, np.float32)  # background everywhere …
    logits[20:26, 30:40] = 6.0  # … a polyp …
    logits[40:44, :] = 1e-6  # … a band just above p = 0.5 (logit 0) …
    logits[50:54, :] = -1e-6  # … one just below …
    logits[55, 10:12] = 0.0  # … and values exactly at it
    got_masks = []
    for threads in (1, 3):
        got, mask = bgr.copy(), np.zeros(bgr.shape[:2], np.uint8)
        n = ops.overlay(got, logits, threshold=0.5, mask=mask, threads=threads)
        got_masks.append(mask)
        ref, ref_mask = overlay_reference(bgr, logits, 0.5)
        assert (mask != ref_mask).sum() <= 2 and n == int(mask.sum()) > 0
        assert (got != ref).any(-1).sum() <= 20
    assert np.array_equal(*got_masks)
    rows = np.flatnonzero(got_masks[0].any(1))
    h = bgr.shape[0]
    assert rows.min() <= 26 * h // 64 and rows.max() >= 41 * h // 64 and not got_masks[0][52 * h // 64].any(), "polyp and the just-above band are foreground"


def test_bad_arguments_are_named():
    with pytest.raises(ops.KernelInputError, match=r"bgr: expected a BGR uint8 frame \[H, W, 3\], got float32"):
        ops.preprocess(np.zeros((4, 4, 3), np.float32), (4, 4), MEAN, STD)
    with pytest.raises(ops.KernelInputError, match="dtype must be float32 or float16"):
        ops.preprocess(np.zeros((4, 4, 3), np.uint8), (4, 4), MEAN, STD, np.float64)
    frozen = np.zeros((4, 4, 3), np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(ops.KernelInputError, match="writable"):
        ops.overlay(frozen, np.zeros((2, 2), np.float32))
    with pytest.raises(ops.KernelInputError, match=r"threshold must be in \(0, 1\)"):
        ops.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2), np.float32), threshold=1.0)

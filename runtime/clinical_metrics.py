"""What a gastroenterologist sees in a polyp overlay, measured on a sequence of predicted and ground-truth masks.

Definitions (one sequence = consecutive frames of one video, each with a binary ground-truth mask):

* **components** — 8-connected components of the predicted mask.
* **detected** (a frame whose ground truth shows a polyp) — at least one predicted component overlaps the ground-truth
  polyp (shares at least one pixel with it).
* **detection rate** — detected frames / frames showing a polyp.
* **first detection delay** — frames from the polyp's first appearance to its first detection (``None`` when it is
  never detected; then the sequence counts as a miss).
* **longest miss** — the longest run of consecutive polyp frames without a detection.
* **false-positive components** — predicted components that share no pixel with the ground truth; reported per 100
  frames, with their mean area as a fraction of the frame.
* **flicker** — mean of 1 − IoU between consecutive predicted masks (two empty masks: IoU 1); ``flicker_gt`` is the
  same on the ground truth, the part of the change that is real motion. ``flicker_excess`` = flicker − flicker_gt.
* **centroid jitter** — mean distance in pixels between the foreground centroids of consecutive masks (both
  non-empty), predicted and ground truth.
* **HD95** — the 95th percentile of the symmetric boundary distances between prediction and ground truth, in pixels,
  over frames where both are non-empty.
* **Dice / IoU** — of the binary masks per frame (both empty: 1), averaged over frames.

Everything is computed at the ground truth's resolution. NumPy and OpenCV only (the runtime stays torch-free).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = ["FrameScore", "SequenceScore", "agreement", "hd95", "score_frame", "score_sequence"]


@dataclass
class FrameScore:
    dice: float
    iou: float
    gt_polyp: bool
    detected: bool
    fp_components: int
    fp_area: float            # fraction of the frame covered by false-positive components
    centroid: tuple[float, float] | None
    gt_centroid: tuple[float, float] | None
    hd95: float | None


def _centroid(m: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(m)
    return (float(xs.mean()), float(ys.mean())) if xs.size else None


def _boundary(m: np.ndarray) -> np.ndarray:
    m8 = m.astype(np.uint8)
    return (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0


def hd95(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """95th percentile of the symmetric boundary-to-boundary distances (pixels); None when either mask is empty."""
    if not pred.any() or not gt.any():
        return None
    bp, bg = _boundary(pred), _boundary(gt)
    # distance of every pixel to the nearest boundary pixel of the other mask
    dt_g = cv2.distanceTransform((~bg).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dt_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d = np.concatenate([dt_g[bp], dt_p[bg]])
    return float(np.percentile(d, 95))


def score_frame(pred: np.ndarray, gt: np.ndarray) -> FrameScore:
    """One frame: boolean ``pred`` and ``gt`` masks of the same size."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    inter = np.logical_and(pred, gt).sum()
    ps, gs = pred.sum(), gt.sum()
    union = ps + gs - inter
    dice = 1.0 if ps + gs == 0 else 2.0 * inter / (ps + gs)
    iou = 1.0 if union == 0 else inter / union
    n, labels = cv2.connectedComponents(pred.astype(np.uint8), connectivity=8)
    detected, fp, fp_px = False, 0, 0
    if n > 1:
        hit = np.bincount(labels[gt], minlength=n)  # pixels each component shares with the ground truth
        size = np.bincount(labels.ravel(), minlength=n)
        for c in range(1, n):
            if hit[c] > 0:
                detected = True
            else:
                fp += 1
                fp_px += int(size[c])
    return FrameScore(float(dice), float(iou), bool(gs > 0), bool(detected and gs > 0), fp, fp_px / pred.size,
                      _centroid(pred), _centroid(gt), hd95(pred, gt))


def _flicker(masks: Sequence[np.ndarray]) -> float:
    if len(masks) < 2:
        return 0.0
    out = []
    for a, b in zip(masks[:-1], masks[1:]):
        u = np.logical_or(a, b).sum()
        out.append(0.0 if u == 0 else 1.0 - np.logical_and(a, b).sum() / u)
    return float(np.mean(out))


def _jitter(cs: Sequence[tuple[float, float] | None]) -> float | None:
    d = [float(np.hypot(b[0] - a[0], b[1] - a[1])) for a, b in zip(cs[:-1], cs[1:]) if a and b]
    return float(np.mean(d)) if d else None


@dataclass
class SequenceScore:
    """The clinical figures of one sequence (see the module doc); :meth:`to_dict` for JSON."""

    frames: int
    dice: float
    iou: float
    polyp_frames: int
    detection_rate: float | None
    first_detection_delay: int | None
    longest_miss: int
    fp_per_100_frames: float
    fp_area: float
    flicker: float
    flicker_gt: float
    jitter_px: float | None
    jitter_gt_px: float | None
    hd95: float | None
    per_frame: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def flicker_excess(self) -> float:
        return self.flicker - self.flicker_gt

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "per_frame"}
        d["flicker_excess"] = self.flicker_excess
        if per_frame:
            d["per_frame"] = self.per_frame
        return d


def score_sequence(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> SequenceScore:
    """The clinical figures of consecutive frames: boolean predicted and ground-truth masks, in display order."""
    if len(preds) != len(gts) or not preds:
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth masks")
    fs = [score_frame(p, g) for p, g in zip(preds, gts)]
    polyp = [f.gt_polyp for f in fs]
    det = [f.detected for f in fs]
    n_polyp = sum(polyp)
    first = next((i for i, p in enumerate(polyp) if p), None)
    first_det = next((i for i, d in enumerate(det) if d), None)
    delay = None if first is None or first_det is None else first_det - first
    longest = run = 0
    for p, d in zip(polyp, det):
        run = run + 1 if p and not d else 0
        longest = max(longest, run)
    h = [f.hd95 for f in fs if f.hd95 is not None]
    return SequenceScore(
        frames=len(fs), dice=float(np.mean([f.dice for f in fs])), iou=float(np.mean([f.iou for f in fs])),
        polyp_frames=n_polyp, detection_rate=(sum(det) / n_polyp) if n_polyp else None,
        first_detection_delay=delay, longest_miss=longest,
        fp_per_100_frames=100.0 * sum(f.fp_components for f in fs) / len(fs),
        fp_area=float(np.mean([f.fp_area for f in fs])),
        flicker=_flicker([np.asarray(p, bool) for p in preds]), flicker_gt=_flicker([np.asarray(g, bool) for g in gts]),
        jitter_px=_jitter([f.centroid for f in fs]), jitter_gt_px=_jitter([f.gt_centroid for f in fs]),
        hd95=float(np.mean(h)) if h else None,
        per_frame={"dice": [round(f.dice, 4) for f in fs], "detected": det, "gt_polyp": polyp,
                   "fp_components": [f.fp_components for f in fs]})


def pool(scores: Sequence[SequenceScore]) -> dict[str, Any]:
    """Overall figures across sequences: frame-weighted means; detection over all polyp frames; the worst delay and
    miss; HD95 over the sequences that have one."""
    n = sum(s.frames for s in scores)
    npol = sum(s.polyp_frames for s in scores)

    def wmean(attr: str) -> float:
        return float(sum(getattr(s, attr) * s.frames for s in scores) / n)

    delays = [s.first_detection_delay for s in scores if s.polyp_frames]
    jit = [(s.jitter_px, s.frames) for s in scores if s.jitter_px is not None]
    jit_gt = [(s.jitter_gt_px, s.frames) for s in scores if s.jitter_gt_px is not None]
    h = [(s.hd95, s.frames) for s in scores if s.hd95 is not None]

    def wavg(pairs):
        return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs)) if pairs else None

    out = {"sequences": len(scores), "frames": n, "dice": wmean("dice"), "iou": wmean("iou"), "polyp_frames": npol,
           "detection_rate": (sum((s.detection_rate or 0) * s.polyp_frames for s in scores) / npol) if npol else None,
           "first_detection_delay": None if any(d is None for d in delays) else max(delays, default=0),
           "missed_polyps": sum(1 for d in delays if d is None),
           "longest_miss": max(s.longest_miss for s in scores),
           "fp_per_100_frames": wmean("fp_per_100_frames"), "fp_area": wmean("fp_area"),
           "flicker": wmean("flicker"), "flicker_gt": wmean("flicker_gt"),
           "jitter_px": wavg(jit), "jitter_gt_px": wavg(jit_gt), "hd95": wavg(h)}
    out["flicker_excess"] = out["flicker"] - out["flicker_gt"]
    return out


def agreement(preds: Sequence[np.ndarray], ref: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, float]:
    """A deploy precision against the reference (PyTorch) frame by frame: mean Dice of the two predicted masks and
    the fraction of polyp frames where both agree on detected / missed."""
    d, same, n = [], 0, 0
    for p, r, g in zip(preds, ref, gts):
        s = score_frame(p, r)
        d.append(s.dice)
        if g.any():
            n += 1
            same += score_frame(p, g).detected == score_frame(r, g).detected
    return {"dice_vs_reference": float(np.mean(d)), "detection_agreement": (same / n) if n else 1.0}

"""The ten metrics of the MSNet/M2SNet evaluation: MAE, maxF, avgF, wFm, Sm, Em, mDice, mIoU, BER, Acc.

Input per image: ``pred`` = the predicted foreground probability as uint8 (0..255) at the ground truth's
resolution, ``gt`` = binary mask. As in MSNet's ``test_score.py``, each prediction is **min-max normalised per
image** (divided by 255 when constant) before scoring. Every metric is computed per image, then averaged over the
dataset, with these definitions (MSNet ``utils/metric.py``, see ``shared/docs/models.md`` §2.5):

=========  ===========================================================================================  ===========
key        definition                                                                                   source
=========  ===========================================================================================  ===========
MAE        mean |pred − gt|                                                                             pysodmetrics
maxF       precision and recall at 256 thresholds, **averaged over images first**; then
           F_β (β² = 0.3) per threshold; maximum over thresholds                                        pysodmetrics
avgF       F_β (β² = 0.3) at the adaptive threshold min(2·mean(pred), 1)                                pysodmetrics
wFm        weighted F-measure (Margolin et al.), β = 1; 0 for an empty gt                               pysodmetrics
Sm         S-measure, α = 0.5                                                                           pysodmetrics
Em         E-measure at the adaptive threshold min(2·mean(pred), 1) (neither mean- nor max-Em)          pysodmetrics
mDice      **soft** Dice on the continuous map: (2Σ pred·gt + 1e-5)/(Σ gt + Σ pred + 1e-5)              here
mIoU       IoU of (pred > 0.5) vs gt, smoothing 1e-5                                                    here
BER        1 − (TP/Np + TN/Nn)/2 at threshold 0.5                                                       here
Acc        (TP + TN)/(Np + Nn) at threshold 0.5                                                         here
=========  ===========================================================================================  ===========

Note: MSNet's mDice is *not* the PraNet-toolbox mDice (thresholded Dice averaged over 256 thresholds); that one
is available as :func:`toolbox_dice` and is reported separately, labelled, never under the key ``mDice``.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import py_sod_metrics as sod

__all__ = ["METRIC_KEYS", "SegMetrics", "min_max", "toolbox_dice"]

METRIC_KEYS = ("MAE", "maxF", "avgF", "wFm", "Sm", "Em", "mDice", "mIoU", "BER", "Acc")
_EPS = 1e-5


def min_max(pred_u8: np.ndarray) -> np.ndarray:
    """MSNet's per-image normalisation of a uint8 map to [0, 1] (÷255 when the map is constant)."""
    p = pred_u8.astype(np.float64)
    lo, hi = p.min(), p.max()
    return (p - lo) / (hi - lo) if hi > lo else p / 255.0


def toolbox_dice(pred_u8: np.ndarray, gt: np.ndarray) -> float:
    """PraNet-toolbox mean Dice: thresholded Dice averaged over thresholds 0..255 of the min-max normalised map."""
    p = (min_max(pred_u8) * 255).astype(np.uint8)
    g = gt.astype(bool)
    fg = np.bincount(p[g].ravel(), minlength=256)[::-1].cumsum()[::-1]  # TP at threshold t: pred >= t
    allp = np.bincount(p.ravel(), minlength=256)[::-1].cumsum()[::-1]
    dice = (2 * fg) / (allp + g.sum() + 1e-8)
    return float(dice.mean())


class SegMetrics:
    """Accumulates the ten metrics over images; :meth:`results` averages them per image over the dataset.

    Example:
        >>> m = SegMetrics()
        >>> for pred_u8, gt in pairs:   # pred_u8: uint8 [H, W] probability × 255; gt: {0,1} or {0,255} [H, W]
        ...     m.step(pred_u8, gt)
        >>> m.results()["mDice"]
    """

    def __init__(self) -> None:
        self._mae = sod.MAE()
        with warnings.catch_warnings():  # py_sod_metrics announces a future rename of Fmeasure on every instance
            warnings.filterwarnings("ignore", message="This class will be removed")
            self._fm = sod.Fmeasure()
        self._wfm = sod.WeightedFmeasure(beta=1)
        self._sm = sod.Smeasure(alpha=0.5)
        self._em = sod.Emeasure()
        self._own: dict[str, list[float]] = {k: [] for k in ("mDice", "mIoU", "BER", "Acc", "toolbox_mDice")}
        self.count = 0

    def step(self, pred_u8: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Score one image; returns its own soft Dice / IoU (handy for per-image tables)."""
        if pred_u8.dtype != np.uint8:
            raise TypeError(f"pred must be uint8 (probability × 255), got {pred_u8.dtype}")
        if pred_u8.shape != gt.shape:
            raise ValueError(f"pred {pred_u8.shape} and gt {gt.shape} differ in size; resize pred to the gt first")
        g_bool = gt > (127 if gt.max() > 1 else 0)
        g_u8 = g_bool.astype(np.uint8) * 255
        # pysodmetrics divides by 255 and min-max normalises exactly like MSNet's test_score.py.
        self._mae.step(pred_u8, g_u8)
        self._fm.step(pred_u8, g_u8)
        self._wfm.step(pred_u8, g_u8)
        self._sm.step(pred_u8, g_u8)
        self._em.step(pred_u8, g_u8)
        p = min_max(pred_u8)
        g = g_bool.astype(np.float64)
        dice = (2 * (p * g).sum() + _EPS) / (g.sum() + p.sum() + _EPS)
        pb = p > 0.5
        inter = np.logical_and(pb, g_bool).sum()
        iou = (inter + _EPS) / (np.logical_or(pb, g_bool).sum() + _EPS)
        n_pos, n_neg = g_bool.sum(), (~g_bool).sum()
        tp, tn = inter, np.logical_and(~pb, ~g_bool).sum()
        ber = 1 - 0.5 * ((tp / n_pos if n_pos else 1.0) + (tn / n_neg if n_neg else 1.0))
        acc = (tp + tn) / g_bool.size
        for k, v in (("mDice", dice), ("mIoU", iou), ("BER", ber), ("Acc", acc)):
            self._own[k].append(float(v))
        self._own["toolbox_mDice"].append(toolbox_dice(pred_u8, g_bool))
        self.count += 1
        return {"mDice": float(dice), "mIoU": float(iou)}

    def results(self) -> dict[str, float]:
        """The ten metrics, keys exactly :data:`METRIC_KEYS`, as Python floats."""
        if not self.count:
            raise ValueError("no images were scored")
        fm = self._fm.get_results()
        p, r = fm["pr"]["p"], fm["pr"]["r"]  # averaged over images first, as MSNet does
        f_curve = 1.3 * p * r / (0.3 * p + r + 1e-8)
        out = {
            "MAE": float(self._mae.get_results()["mae"]),
            "maxF": float(np.max(f_curve)),
            "avgF": float(fm["fm"]["adp"]),
            "wFm": float(self._wfm.get_results()["wfm"]),
            "Sm": float(self._sm.get_results()["sm"]),
            "Em": float(self._em.get_results()["em"]["adp"]),
        }
        for k in ("mDice", "mIoU", "BER", "Acc"):
            out[k] = float(np.mean(self._own[k]))
        return {k: out[k] for k in METRIC_KEYS}

    def extra(self) -> dict[str, float]:
        """Labelled extras that are not among the ten: the PraNet-toolbox threshold-averaged Dice."""
        return {"toolbox_mDice": float(np.mean(self._own["toolbox_mDice"]))} if self.count else {}


def score(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Convenience: the ten metrics over ``(pred_u8, gt)`` pairs."""
    m = SegMetrics()
    for p, g in pairs:
        m.step(p, g)
    return m.results()

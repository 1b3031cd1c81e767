"""The one comparator: two sets of model outputs (logits) compared with named metrics and per-precision tolerances.

Used by the export's parity gate (:func:`export.onnx.export_onnx`), ``export.compare``, ``runtime.bench`` and the
tests, so "agrees with PyTorch" means the same thing everywhere:

* ``max_abs_diff`` — max |Δlogit| over all frames and pixels, and ``rel_diff`` — the same relative to the logit
  scale (max |reference logit|), which makes one tolerance fit trained nets (logits ~10) and untrained ones (~1e7);
* ``dice_vs_torch`` — Dice of the two foreground masks at the deploy threshold (probability > ``threshold``, i.e.
  logit > logit(threshold)), pooled over all frames at the network's output resolution, where no resampling can
  blur a difference; None when the masks hold too few pixels for a Dice to mean anything;
* ``nonfinite`` — NaN/Inf logits in the candidate;
* ``dice_vs_gt`` (with ground-truth masks) — per-image Dice of the candidate's mask, its logits resized to the mask
  (bilinear, half-pixel centres) and thresholded, averaged over images.

Tolerances (:data:`TOLERANCES`) are per precision; a caller may pass its own (``export_onnx(parity_tolerance=…)``),
which :func:`tolerance_for` prefers; the manifest records the one the graph was checked against. NumPy and OpenCV
only: the runtime stays torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from kernels.ops import logit_threshold

__all__ = ["MIN_MASK_PIXELS", "TOLERANCES", "Comparison", "Tolerance", "compare", "tolerance_for"]

#: a pooled mask Dice over fewer foreground pixels than this (reference ∪ candidate) is not judged
MIN_MASK_PIXELS = 64


@dataclass(frozen=True)
class Tolerance:
    """What a precision must meet against its reference."""

    max_rel_diff: float  # max |Δlogit| / max |reference logit|
    min_dice: float  # mask Dice at the deploy threshold


#: measured margins (Kvasir-SEG val, shipped edge model): fp32 rel 1e-6, fp16 rel 9e-3 / Dice 0.9998, INT8 Dice
#: 0.98–0.99; the bounds leave room for other models and frames without letting a broken graph through
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel_diff=1e-3, min_dice=0.995),
    "fp16": Tolerance(max_rel_diff=5e-2, min_dice=0.97),
    "int8": Tolerance(max_rel_diff=1.0, min_dice=0.85),
}


def tolerance_for(precision: str, override: Mapping[str, Any] | None = None) -> Tolerance:
    """The tolerance of ``precision``: ``override`` (``{"max_rel_diff": …, "min_dice": …}``) first."""
    base = TOLERANCES.get(precision, TOLERANCES["fp32"])
    if override:
        return Tolerance(float(override.get("max_rel_diff", base.max_rel_diff)),
                         float(override.get("min_dice", base.min_dice)))
    return base


@dataclass
class Comparison:
    """The named metrics of one candidate against its reference (see the module docstring)."""

    frames: int
    max_abs_diff: float
    ref_max_abs: float
    rel_diff: float
    dice_vs_torch: float | None
    nonfinite: int
    dice_vs_gt: float | None = None

    def failures(self, tol: Tolerance) -> list[str]:
        """One line per metric outside ``tol`` (empty: within tolerance)."""
        out = []
        if self.nonfinite:
            out.append(f"{self.nonfinite} NaN/Inf logits")
        if self.rel_diff >= tol.max_rel_diff:  # an all-zero output is exactly 1.0 of the scale off
            out.append(f"max |Δlogit| {self.max_abs_diff:.3g} is {self.rel_diff:.2e} of the logit scale "
                       f"(tolerance {tol.max_rel_diff:.0e})")
        if self.dice_vs_torch is not None and self.dice_vs_torch < tol.min_dice:
            out.append(f"mask Dice vs the reference {self.dice_vs_torch:.4f} < {tol.min_dice}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resize(logits: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    import cv2

    return cv2.resize(logits, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)


def compare(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], *, threshold: float = 0.5,
            gt: Sequence[np.ndarray] | None = None) -> Comparison:
    """Compare candidate logits ``got`` with reference logits ``ref`` (same shapes, e.g. [1, 1, h, w] each);
    ``gt``: optional ground-truth masks (nonzero = polyp) at their own size, one per frame."""
    if len(ref) != len(got) or not ref:
        raise ValueError(f"compare needs the same non-zero number of frames, got {len(ref)} and {len(got)}")
    t = logit_threshold(threshold)
    diff, scale, inter, total, bad = 0.0, 0.0, 0, 0, 0
    per_image = []
    for i, (r, g) in enumerate(zip(ref, got)):
        r = np.asarray(r, np.float32)
        g = np.asarray(g, np.float32)
        if r.shape != g.shape:
            raise ValueError(f"frame {i}: reference {r.shape} and candidate {g.shape} differ in shape")
        finite = np.isfinite(g)
        bad += int((~finite).sum())
        if finite.any():
            diff = max(diff, float(np.abs(r - g)[finite].max()))
        scale = max(scale, float(np.abs(r).max()))
        rm, gm = r > t, g > t
        inter += int(np.logical_and(rm, gm).sum())
        total += int(rm.sum() + gm.sum())
        if gt is not None:
            mask = np.asarray(gt[i]) > 0
            pm = _resize(g.reshape(g.shape[-2:]), mask.shape) > t
            denom = int(pm.sum() + mask.sum())
            per_image.append(2 * int(np.logical_and(pm, mask).sum()) / denom if denom else 1.0)
    dice = 2 * inter / total if total >= MIN_MASK_PIXELS else None
    return Comparison(frames=len(ref), max_abs_diff=diff, ref_max_abs=scale, rel_diff=diff / max(scale, 1e-6),
                      dice_vs_torch=dice, nonfinite=bad,
                      dice_vs_gt=float(np.mean(per_image)) if per_image else None)

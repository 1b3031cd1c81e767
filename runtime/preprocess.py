"""Frame pre- and post-processing: the OpenCV/NumPy reference chain (the compiled fast path is checked against it).

Pre: BGR uint8 frame [H, W, 3] of any size → resize (bilinear) to the model input → RGB → (x/255 − mean)/std →
NCHW float32/float16. Post: logits → probability (sigmoid) → resized to the frame → mask/overlay.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ["overlay_reference", "preprocess_reference", "probability_reference"]


def preprocess_reference(
    bgr: np.ndarray,
    input_hw: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """[1, 3, h, w] normalised network input from a BGR uint8 frame."""
    h, w = int(input_hw[0]), int(input_hw[1])
    rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    x = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(dtype, copy=False)


def probability_reference(logits: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Foreground probability [H, W] float32 at the frame size from logits [1, 1, h, w] (bilinear, then sigmoid)."""
    lg = np.asarray(logits, np.float32).reshape(logits.shape[-2:])
    lg = cv2.resize(lg, (int(out_hw[1]), int(out_hw[0])), interpolation=cv2.INTER_LINEAR)
    return 1.0 / (1.0 + np.exp(-lg))


def overlay_reference(
    bgr: np.ndarray,
    logits: np.ndarray,
    threshold: float = 0.5,
    color: Sequence[int] = (0, 255, 0),
    alpha: float = 0.4,
    contour_color: Sequence[int] = (0, 255, 255),
    thickness: int = 2,
) -> np.ndarray:
    """Annotated BGR frame: translucent fill where p > threshold plus the outline of the predicted region."""
    mask = (probability_reference(logits, bgr.shape[:2]) > threshold).astype(np.uint8)
    out = bgr.copy()
    fill = np.empty_like(bgr)
    fill[:] = np.asarray(color, np.uint8)
    m = mask.astype(bool)
    out[m] = (bgr[m].astype(np.float32) * (1 - alpha) + fill[m].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in contour_color), thickness)
    return out

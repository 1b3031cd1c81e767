"""Frame pre- and post-processing references: the OpenCV/NumPy chain that the compiled hot path (kernels/src), the
CUDA kernels (kernels/cuda) and the runtime's pipeline are checked against; it lives with the other references
(kernels/reference.py) at the bottom layer, so runtime, export and the benchmarks share one definition.

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
    fill: Sequence[int] = (0, 255, 0),
    alpha: float = 0.4,
    outline: Sequence[int] = (0, 255, 255),
) -> tuple[np.ndarray, np.ndarray]:
    """Annotated copy of ``bgr`` and the binary mask: resize the logits to the frame (bilinear), sigmoid >
    threshold, translucent fill ``(p·(256 − a) + c·a + 128) >> 8`` with ``a = round(alpha·256)``, and a 2-pixel
    outline where a 3×3 neighbourhood holds both classes (dilate ≠ erode)."""
    lg = np.asarray(logits, np.float32).reshape(logits.shape[-2:])
    prob = 1.0 / (1.0 + np.exp(-cv2.resize(lg, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)))
    mask = (prob > threshold).astype(np.uint8)
    k = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(mask, k) != cv2.erode(mask, k)
    out = bgr.copy()
    a = int(round(alpha * 256))
    inside = mask.astype(bool) & ~edge
    px = out[inside].astype(np.int32)
    out[inside] = ((px * (256 - a) + np.asarray(fill, np.int32) * a + 128) >> 8).astype(np.uint8)
    out[edge] = np.asarray(outline, np.uint8)
    return out, mask

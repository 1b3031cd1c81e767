"""Typed wrappers of the compiled hot path: validate → allocate → call the C++ extension (no copies).

``HAS_EXT`` tells whether the extension was built; without it the runtime falls back to the OpenCV/NumPy
reference chain (``kernels.frame_reference``), which computes the same thing more slowly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from common.errors import UserError

try:
    from . import _ext  # type: ignore[attr-defined]

    HAS_EXT = True
except ImportError:  # pragma: no cover - depends on the build
    _ext = None
    HAS_EXT = False

__all__ = ["HAS_EXT", "logit_threshold", "overlay", "preprocess"]


class KernelInputError(UserError, ValueError):
    """An argument of the wrong shape, dtype or layout (the message names it)."""


def _need_ext() -> None:
    if not HAS_EXT:
        raise ImportError("the polypseg C++ extension is not built: reinstall with `pip install -e .` (needs a C++17 "
                          "compiler and CMake)")


def _check_frame(name: str, a: np.ndarray, writable: bool = False) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise KernelInputError(f"{name}: expected a BGR uint8 frame [H, W, 3], got {got}")
    if a.strides[2] != 1 or a.strides[1] != 3:
        raise KernelInputError(f"{name}: pixels must be packed (use np.ascontiguousarray)")
    if writable and not a.flags.writeable:
        raise KernelInputError(f"{name}: frame must be writable (it is annotated in place)")


def preprocess(
    bgr: np.ndarray,
    input_hw: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    dtype: type | np.dtype = np.float32,
    out: np.ndarray | None = None,
    threads: int = 0,
) -> np.ndarray:
    """BGR uint8 frame [H, W, 3] → normalised RGB network input [1, 3, h, w] in one pass (resize + colour order +
    mean/std + layout). ``out`` (C-contiguous, float32/float16) is reused when given."""
    _need_ext()
    _check_frame("bgr", bgr)
    h, w = int(input_hw[0]), int(input_hw[1])
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16):
        raise KernelInputError(f"dtype must be float32 or float16, got {dtype}")
    if out is None:
        out = np.empty((1, 3, h, w), dtype)
    elif out.shape != (1, 3, h, w) or out.dtype != dtype or not out.flags.c_contiguous:
        raise KernelInputError(f"out must be C-contiguous {dtype} (1, 3, {h}, {w}), got {out.dtype} {out.shape}")
    _ext.preprocess(bgr, out, tuple(float(v) for v in mean), tuple(float(v) for v in std), threads)
    return out


def logit_threshold(p: float) -> float:
    """The logit whose sigmoid is ``p`` (so thresholding logits needs no sigmoid per pixel)."""
    if not 0.0 < p < 1.0:
        raise KernelInputError(f"probability threshold must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


def overlay(
    frame: np.ndarray,
    logits: np.ndarray,
    threshold: float = 0.5,
    fill: Sequence[int] = (0, 255, 0),
    alpha: float = 0.4,
    outline: Sequence[int] = (0, 255, 255),
    mask: np.ndarray | None = None,
    threads: int = 0,
) -> int:
    """Annotate ``frame`` in place from ``logits`` ([h, w] or [1, 1, h, w]): bilinear resize to the frame,
    sigmoid > threshold, translucent fill, 2-pixel outline. Returns the foreground pixel count."""
    _need_ext()
    _check_frame("frame", frame, writable=True)
    lg = np.asarray(logits)
    if lg.ndim == 4:
        lg = lg[0, 0]
    if lg.ndim != 2:
        raise KernelInputError(f"logits: expected [h, w] or [1, 1, h, w], got shape {np.shape(logits)}")
    lg = np.ascontiguousarray(lg, dtype=np.float32)
    if mask is not None and (mask.dtype != np.uint8 or mask.shape != frame.shape[:2] or not mask.flags.c_contiguous):
        raise KernelInputError(f"mask: expected C-contiguous uint8 {frame.shape[:2]}, got {mask.dtype} {mask.shape}")
    a256 = int(round(float(alpha) * 256))
    return int(_ext.overlay(frame, lg, logit_threshold(threshold), tuple(int(c) for c in fill), a256,
                            tuple(int(c) for c in outline), mask, threads))

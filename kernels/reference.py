"""NumPy references of the fused ops, same names and semantics as the kernels (float64 internally).

Each function documents the op exactly; the CUDA kernels, their CPU execution and the TensorRT plugins are tested
against these.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["box_sum", "channel_attention", "multi_scale_subtraction", "position_attention", "upsample_bilinear"]


def _taps(n_dst: int, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
    s = np.maximum(s, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), n_src - 1)
    i1 = np.minimum(i0 + 1, n_src - 1)
    f = np.where(i0 == i1, 0.0, s - i0)
    return i0, i1, f


def upsample_bilinear(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of [N, C, h, w] to ``size`` with half-pixel centres (PyTorch ``align_corners=False``)."""
    H, W = int(size[0]), int(size[1])
    a = a.astype(np.float64)
    y0, y1, fy = _taps(H, a.shape[2])
    x0, x1, fx = _taps(W, a.shape[3])
    top = a[:, :, y0][:, :, :, x0] * (1 - fx) + a[:, :, y0][:, :, :, x1] * fx
    bot = a[:, :, y1][:, :, :, x0] * (1 - fx) + a[:, :, y1][:, :, :, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


def box_sum(x: np.ndarray, k: int) -> np.ndarray:
    """k×k zero-padded box sum over the last two axes (stride 1, same size)."""
    r = k // 2
    p = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)])
    c = p.cumsum(-1).cumsum(-2)
    c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
    H, W = x.shape[-2:]
    return c[..., k:k + H, k:k + W] - c[..., :H, k:k + W] - c[..., k:k + H, :W] + c[..., :H, :W]


def multi_scale_subtraction(
    a: np.ndarray,
    b: np.ndarray,
    bn3: tuple[np.ndarray, np.ndarray] | None = None,
    bn5: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """MultiScaleSubtraction.

    Args:
        a: coarser level [N, C, h, w]; upsampled (bilinear, half-pixel) to b's size.
        b: finer level [N, C, H, W].
        bn3, bn5: folded BatchNorm (scale [C], shift [C]) of M2SNet's 3×3 and 5×5 all-ones terms; both or neither.

    Returns:
        ``|up(a) − b|`` (MSNet), plus ``Σ_k |relu(g_k·box_k(Σ_c up(a)) + h_k) − relu(g_k·box_k(Σ_c b) + h_k)|``
        for k = 3, 5 (M2SNet), as float64 [N, C, H, W].
    """
    up = upsample_bilinear(a, b.shape[-2:])
    bb = b.astype(np.float64)
    out = np.abs(up - bb)
    if (bn3 is None) != (bn5 is None):
        raise ValueError("give both bn3 and bn5 (M2SNet) or neither (MSNet)")
    if bn3 is not None:
        sa, sb = up.sum(1, keepdims=True), bb.sum(1, keepdims=True)
        for k, (g, h) in ((3, bn3), (5, bn5)):
            g = np.asarray(g, np.float64)[None, :, None, None]
            h = np.asarray(h, np.float64)[None, :, None, None]
            out += np.abs(np.maximum(g * box_sum(sa, k) + h, 0) - np.maximum(g * box_sum(sb, k) + h, 0))
    return out


def position_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, x: np.ndarray, gamma: float) -> np.ndarray:
    """PositionAttention: ``gamma · Σ_m softmax_m(q_n·k_m) v_m + x_n`` (no 1/√d scaling, as DANet/PAM runs it).

    Args: q, k [B, D, N]; v, x [B, C, N]. Returns float64 [B, C, N].
    """
    e = np.einsum("bdn,bdm->bnm", q.astype(np.float64), k.astype(np.float64))
    e -= e.max(-1, keepdims=True)
    a = np.exp(e)
    a /= a.sum(-1, keepdims=True)
    return gamma * np.einsum("bnm,bcm->bcn", a, v.astype(np.float64)) + x.astype(np.float64)


def channel_attention(x: np.ndarray, gamma: float) -> np.ndarray:
    """ChannelAttention: ``E = X·Xᵀ``, ``A = softmax(rowmax(E) − E)``, ``gamma · A·X + X``; x [B, C, N] → float64."""
    xf = x.astype(np.float64)
    e = np.einsum("bcn,bdn->bcd", xf, xf)
    e2 = e.max(-1, keepdims=True) - e
    e2 -= e2.max(-1, keepdims=True)
    a = np.exp(e2)
    a /= a.sum(-1, keepdims=True)
    return gamma * np.einsum("bcd,bdn->bcn", a, xf) + xf

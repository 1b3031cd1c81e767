"""PositionAttention and ChannelAttention: the CUDA kernel sources executed on the CPU (fiber emulator) against the
NumPy references, float32 and float16, and the references against the PyTorch modules of the msga model."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as R
from kernels.emulation import padded, under_schedules

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")

# (B, C, D, N): N not a multiple of the 64-key tile / 64-query block, N = 1, several key tiles, C not a multiple of
# the 16-channel pass, D from 1 to the limit 64, B = 2
PAM_SHAPES = [(1, 64, 8, 100), (2, 16, 2, 1), (1, 8, 1, 130), (1, 32, 4, 64), (1, 512, 64, 65), (2, 20, 3, 129)]
# (B, C, N): more channels than half (64) and than all (128) threads of a block, C = 1, N = 1, B = 2
CAM_SHAPES = [(1, 64, 100), (2, 3, 1), (1, 200, 37), (1, 1, 5), (1, 512, 9), (2, 130, 20)]


def _pam_inputs(shape, dtype, seed=0):
    B, C, D, N = shape
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in ((B, D, N), (B, D, N), (B, C, N), (B, C, N))]


def _emu_pam(q, k, v, x, gamma):
    """PositionAttention through its GPU launcher on the CPU, under every schedule, with guard zones around the
    inputs (NaN: an out-of-bounds read poisons the result) and the output (an out-of-bounds write fails)."""
    ins = [padded(a)[0] for a in (q, k, v, x)]

    def run():
        out, check = padded(np.full_like(x, np.nan))
        ops._ext.emu_pam(*ins, out, gamma)
        check()
        return out.copy()

    return under_schedules(run)


def _emu_cam(x, gamma):
    xp = padded(x)[0]

    def run():
        out, check = padded(np.full_like(x, np.nan))
        ops._ext.emu_cam(xp, out, gamma)
        check()
        return out.copy()

    return under_schedules(run)


@pytest.mark.parametrize("shape", PAM_SHAPES, ids=[str(s) for s in PAM_SHAPES])
def test_position_attention_float32(shape):
    q, k, v, x = _pam_inputs(shape, np.float32)
    out = _emu_pam(q, k, v, x, 0.7)
    ref = R.position_attention(q, k, v, x, 0.7)
    assert np.isfinite(out).all()
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_position_attention_float16_and_peaked_softmax():
    q, k, v, x = _pam_inputs((1, 16, 8, 70), np.float16)
    q *= np.float16(6)  # scores up to a few hundred: exp would overflow without the running max
    out = _emu_pam(q, k, v, x, 1.0)
    ref = R.position_attention(q, k, v, x, 1.0)
    assert np.isfinite(out.astype(np.float32)).all()
    assert np.allclose(out.astype(np.float64), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("case", ["growing", "all-negative"])
def test_position_attention_online_softmax_far_outside_exps_range(case):
    """growing: scores grow from tile to tile (the running max changes in every tile, by far more than exp's range)
    and the first key of the first tile is the smallest, so accumulators must be rescaled exactly, never overflow.
    all-negative: every score of every query is below −100, so the running max must start at −∞ (an initial 0
    underflows every weight)."""
    B, C, D, N = 1, 18, 2, 200
    rng = np.random.default_rng(5)
    q = np.abs(rng.standard_normal((B, D, N))).astype(np.float32) + 1
    if case == "growing":
        k = np.linspace(-60, 60, N)[None, None, :] * np.ones((B, D, 1)) + rng.standard_normal((B, D, N))
    else:
        q = -q
        k = 50 + 5 * np.abs(rng.standard_normal((B, D, N)))
    k = k.astype(np.float32)
    v, x = (rng.standard_normal((B, C, N)).astype(np.float32) for _ in range(2))
    scores = np.einsum("bdn,bdm->bnm", q.astype(np.float64), k.astype(np.float64))
    assert (scores.max(-1) - scores.min(-1)).min() > 100 if case == "growing" else scores.max() < -100
    out = _emu_pam(q, k, v, x, 0.9)
    ref = R.position_attention(q, k, v, x, 0.9)
    assert np.isfinite(out).all() and np.allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", CAM_SHAPES, ids=[str(s) for s in CAM_SHAPES])
def test_channel_attention_float32(shape):
    x = (np.random.default_rng(1).standard_normal(shape) * 2).astype(np.float32)
    out = _emu_cam(x, 0.5)
    ref = R.channel_attention(x, 0.5)
    assert np.isfinite(out).all()
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


def _cam_wide_spread(B, C, N, dissimilar, dtype, scale=1.0, seed=3):
    """X whose energy rows span far more than exp's range: all channels share a pattern u, the channels in
    `dissimilar` carry −u (their energies with every row are hugely negative, so they hold every row minimum). A
    row minimum taken over only some of the threads, or read after it was overwritten, overflows exp."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((B, 1, N)) + 1.0
    g = np.ones((1, C, 1))
    g[0, list(dissimilar), 0] = -np.linspace(1.5, 3.0, len(dissimilar))
    return ((g * u + 0.3 * rng.standard_normal((B, C, N))) * scale).astype(dtype)


@pytest.mark.parametrize("shape,dissimilar,scale", [((1, 150, 40), [100], 1.0), ((2, 140, 33), [70, 131], 1.0),
                                                    ((1, 300, 17), [5, 260], 2.0)],
                         ids=["min-in-threads-64-127", "B2-min-in-both-halves", "min-beyond-the-first-stride"])
def test_channel_attention_row_minimum_over_all_threads(shape, dissimilar, scale):
    x = _cam_wide_spread(*shape, dissimilar, np.float32, scale)
    e = np.einsum("bcn,bdn->bcd", x.astype(np.float64), x.astype(np.float64))
    spread = (e.max(-1) - e.min(-1)).min()
    assert spread > 200, "every row spans more than exp's float32 range"
    out = _emu_cam(x, 0.5)
    ref = R.channel_attention(x, 0.5)
    assert np.isfinite(out).all()
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_channel_attention_float16_is_safe_where_fp16_energy_overflows():
    x = (np.random.default_rng(2).standard_normal((1, 24, 300)) * 30).astype(np.float16)
    e = np.einsum("bcn,bdn->bcd", x.astype(np.float64), x.astype(np.float64))
    assert np.abs(e).max() > 65504, "the energies do not fit float16"
    out = _emu_cam(x, 0.25)
    ref = R.channel_attention(x, 0.25)
    assert np.isfinite(out.astype(np.float32)).all()
    assert np.allclose(out.astype(np.float64), ref, rtol=3e-3, atol=3e-2)


def test_channel_attention_float16_more_than_64_channels_and_overflowing_energies():
    x = _cam_wide_spread(1, 96, 64, [80], np.float16, scale=16.0)
    e = np.einsum("bcn,bdn->bcd", x.astype(np.float64), x.astype(np.float64))
    assert np.abs(e).max() > 65504 and (e.max(-1) - e.min(-1)).min() > 1000
    out = _emu_cam(x, 0.25)
    ref = R.channel_attention(x, 0.25)
    assert np.isfinite(out.astype(np.float32)).all()
    assert np.allclose(out.astype(np.float64), ref, rtol=3e-3, atol=3e-2 * max(1.0, np.abs(ref).max() / 100))

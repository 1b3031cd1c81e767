"""PositionAttention and ChannelAttention: the CUDA kernel sources executed on the CPU (fiber emulator) against the
NumPy references, float32 and float16, and the references against the PyTorch modules of the msga model."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as R

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")

PAM_SHAPES = [(1, 64, 8, 100), (2, 16, 2, 1), (1, 8, 1, 130), (1, 32, 4, 64), (1, 512, 64, 65)]
CAM_SHAPES = [(1, 64, 100), (2, 3, 1), (1, 200, 37), (1, 1, 5), (1, 512, 9)]


def _pam_inputs(shape, dtype, seed=0):
    B, C, D, N = shape
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in ((B, D, N), (B, D, N), (B, C, N), (B, C, N))]


@pytest.mark.parametrize("shape", PAM_SHAPES, ids=[str(s) for s in PAM_SHAPES])
def test_position_attention_float32(shape):
    q, k, v, x = _pam_inputs(shape, np.float32)
    out = np.full_like(x, np.nan)
    ops._ext.emu_pam(q, k, v, x, out, 0.7)
    ref = R.position_attention(q, k, v, x, 0.7)
    assert np.isfinite(out).all()
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_position_attention_float16_and_peaked_softmax():
    q, k, v, x = _pam_inputs((1, 16, 8, 70), np.float16)
    q *= np.float16(6)  # scores up to a few hundred: exp would overflow without the running max
    out = np.zeros_like(x)
    ops._ext.emu_pam(q, k, v, x, out, 1.0)
    ref = R.position_attention(q, k, v, x, 1.0)
    assert np.isfinite(out.astype(np.float32)).all()
    assert np.allclose(out.astype(np.float64), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("shape", CAM_SHAPES, ids=[str(s) for s in CAM_SHAPES])
def test_channel_attention_float32(shape):
    x = (np.random.default_rng(1).standard_normal(shape) * 2).astype(np.float32)
    out = np.full_like(x, np.nan)
    ops._ext.emu_cam(x, out, 0.5)
    ref = R.channel_attention(x, 0.5)
    assert np.isfinite(out).all()
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_channel_attention_float16_is_safe_where_fp16_energy_overflows():
    x = (np.random.default_rng(2).standard_normal((1, 24, 300)) * 30).astype(np.float16)
    e = np.einsum("bcn,bdn->bcd", x.astype(np.float64), x.astype(np.float64))
    assert np.abs(e).max() > 65504, "the energies do not fit float16"
    out = np.zeros_like(x)
    ops._ext.emu_cam(x, out, 0.25)
    ref = R.channel_attention(x, 0.25)
    assert np.isfinite(out.astype(np.float32)).all()
    assert np.allclose(out.astype(np.float64), ref, rtol=3e-3, atol=3e-2)


def test_references_equal_the_msga_modules():
    torch = pytest.importorskip("torch")
    from training.models.msga import ChannelAttention, PositionAttention

    torch.manual_seed(0)
    pam, cam = PositionAttention(64).eval(), ChannelAttention(64).eval()
    pam.gamma.data.fill_(0.6)
    cam.gamma.data.fill_(0.4)
    x = torch.randn(2, 64, 6, 7)
    with torch.no_grad():
        want_p, want_c = pam(x).numpy(), cam(x).numpy()
        q = pam.query_conv(x).flatten(2).numpy()
        k = pam.key_conv(x).flatten(2).numpy()
        v = pam.value_conv(x).flatten(2).numpy()
    xf = x.flatten(2).numpy()
    got_p = R.position_attention(q, k, v, xf, 0.6).reshape(want_p.shape)
    got_c = R.channel_attention(xf, 0.4).reshape(want_c.shape)
    assert np.allclose(got_p, want_p, atol=1e-4) and np.allclose(got_c, want_c, atol=1e-3, rtol=1e-4)

"""MultiScaleSubtraction: the CUDA kernel source executed on the CPU against the NumPy reference, and the reference
against the PyTorch M2SNet/MSNet blocks it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as R
from kernels.emulation import padded, under_schedules

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")

SHAPES = [  # (N, C, h, w, H, W): tile edges (16), halo crossings, one pixel, large C, non-integer scale
    (1, 64, 11, 11, 22, 22),
    (2, 5, 3, 4, 17, 33),
    (1, 3, 1, 1, 1, 1),
    (1, 1, 2, 2, 5, 3),
    (1, 256, 4, 5, 8, 10),
    (1, 8, 7, 9, 16, 16),
    (1, 4, 10, 13, 10, 13),
    (1, 3, 20, 17, 40, 35),  # 3 × 3 tiles, partial in both directions: interior halos on every side
]


def _emu_mss(a, b, bn):
    """The kernel through its GPU launcher on the CPU, under every schedule, with NaN guard zones around the inputs
    and the output (out-of-bounds reads poison the result, out-of-bounds writes fail)."""
    ap, bp = padded(a)[0], padded(b)[0]

    def run():
        d, check = padded(np.full(b.shape, np.nan, b.dtype))
        ops._ext.emu_mss(ap, bp, d, bn)
        check()
        return d.copy()

    return under_schedules(run)


def _bn(rng, c):
    return rng.uniform(0.02, 0.2, (4, c)).astype(np.float32) * np.array([[1], [10], [1], [10]], np.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("scales", [False, True], ids=["msnet", "m2snet"])
def test_kernel_float32(shape, scales):
    N, C, h, w, H, W = shape
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal((N, C, h, w)).astype(np.float32)
    b = rng.standard_normal((N, C, H, W)).astype(np.float32)
    bn = _bn(rng, C) if scales else None
    d = _emu_mss(a, b, bn)
    ref = R.multi_scale_subtraction(a, b, *((bn[0], bn[1]), (bn[2], bn[3])) if scales else (None, None))
    assert np.isfinite(d).all(), "every output written"
    assert np.allclose(d, ref, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("shape", SHAPES[:3], ids=[str(s) for s in SHAPES[:3]])
def test_kernel_float16_accumulates_in_float32(shape):
    N, C, h, w, H, W = shape
    rng = np.random.default_rng(1)
    a = rng.standard_normal((N, C, h, w)).astype(np.float16)
    b = rng.standard_normal((N, C, H, W)).astype(np.float16)
    bn = _bn(rng, C)
    d = _emu_mss(a, b, bn)
    ref = R.multi_scale_subtraction(a.astype(np.float32), b.astype(np.float32), (bn[0], bn[1]), (bn[2], bn[3]))
    # only the final store rounds to float16: error ≤ half an ulp of the result (plus float32 noise)
    assert np.isfinite(d.astype(np.float32)).all(), "every output written"
    assert np.all(np.abs(d.astype(np.float64) - ref) <= np.abs(ref) * 2.0**-11 + 1e-3)


@pytest.mark.parametrize("multiscale", [False, True], ids=["msnet", "m2snet"])
def test_reference_equals_the_pytorch_block(multiscale):
    torch = pytest.importorskip("torch")
    from training import create_model
    from training.models.blocks import up_to

    model = create_model("m2snet_effl0" if multiscale else "msnet_effl0").eval()
    torch.manual_seed(0)
    if multiscale:
        for conv in (model.conv_3, model.conv_5):
            conv.norm.running_mean.uniform_(-3, 3)
            conv.norm.running_var.uniform_(20, 200)
            conv.norm.weight.data.uniform_(0.5, 1.5)
            conv.norm.bias.data.uniform_(-1, 1)
    a = torch.randn(1, 64, 9, 11)
    b = torch.randn(1, 64, 18, 22)
    with torch.no_grad():
        want = model._diff(up_to(a, b), b).numpy()
    bn = []
    if multiscale:
        for conv in (model.conv_3, model.conv_5):
            n = conv.norm
            g = (n.weight / torch.sqrt(n.running_var + n.eps)).detach().numpy()
            bn.append((g, (n.bias - n.running_mean * n.weight / torch.sqrt(n.running_var + n.eps)).detach().numpy()))
    got = R.multi_scale_subtraction(a.numpy(), b.numpy(), *(bn if bn else (None, None)))
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4)

"""Launch shapes and limits of the CUDA kernels have one definition, in the .cuh: the launchers and the CPU emulation
compile against it, the TensorRT plugins include it, and the Python side reads it (kernels.kernel_constants). The
copies that remain elsewhere must agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from export import roofline
from kernels import ops
from kernels.kernel_constants import kernel_constants

ROOT = Path(__file__).resolve().parents[2]


def test_constants_are_read_from_the_headers():
    assert kernel_constants("cam")["kMaxC"] == 2048 and kernel_constants("cam")["kThreads"] == 128
    assert kernel_constants("pam")["kMaxD"] == 64 and kernel_constants("pam")["kQ"] == 64
    mss = kernel_constants("mss")
    assert mss["kSharedX"] == mss["kTileX"] + 2 * mss["kHalo"]
    assert (roofline.MSS_TILE, roofline.MSS_HALO) == (mss["kTileX"], mss["kHalo"]) and mss["kTileX"] == mss["kTileY"]
    assert (roofline.PAM_KQ, roofline.PAM_KCH) == (kernel_constants("pam")["kQ"], kernel_constants("pam")["kCh"])
    assert roofline.CAM_THREADS == kernel_constants("cam")["kThreads"]


def test_plugins_use_the_kernel_limits_not_copies():
    for plugin, header, name in (("channel_attention_plugin.cpp", "channel_attention/cam_kernel.cuh", "kMaxC"),
                                 ("position_attention_plugin.cpp", "position_attention/pam_kernel.cuh", "kMaxD")):
        src = (ROOT / "kernels" / "plugins" / plugin).read_text()
        assert f'#include "../{header}"' in src and "POLYPSEG_KERNEL_LIMITS_ONLY" in src
        assert re.search(rf"{name}\s*=\s*polypseg_\w+::{name}\b", src), f"{plugin} must take {name} from the .cuh"


def test_export_checks_use_the_kernel_limits():
    from export import plugins

    assert (plugins.PAM_MAX_D, plugins.CAM_MAX_C) == (kernel_constants("pam")["kMaxD"], kernel_constants("cam")["kMaxC"])
    src = (ROOT / "export" / "plugins.py").read_text()
    assert not re.search(r"\b(64|2048)\b", src), "export/plugins.py repeats a kernel limit instead of reading it"


@pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")
def test_launchers_accept_exactly_up_to_the_limits():
    """The GPU launchers (run on the CPU) refuse one past each limit and run at it."""
    from kernels.emulation import schedule

    max_c, max_d = kernel_constants("cam")["kMaxC"], kernel_constants("pam")["kMaxD"]
    x = np.zeros((1, max_c + 1, 1), np.float32)
    with pytest.raises(ValueError, match="refused"):
        ops._ext.emu_cam(x, x.copy(), 1.0)
    q = np.zeros((1, max_d + 1, 3), np.float32)
    v = np.zeros((1, 4, 3), np.float32)
    with pytest.raises(ValueError, match="refused"):
        ops._ext.emu_pam(q, q, v, v, v.copy(), 1.0)
    q = np.random.default_rng(0).standard_normal((1, max_d, 3)).astype(np.float32)
    out = np.full_like(v, np.nan)
    ops._ext.emu_pam(q, q, v + 1, v, out, 1.0)
    assert np.allclose(out, 1.0)
    # C = kMaxC: one image, one position (2048 blocks of 128 threads; one schedule keeps it short)
    x = np.random.default_rng(1).standard_normal((1, max_c, 1)).astype(np.float32)
    out = np.full_like(x, np.nan)
    with schedule("random", 3):
        ops._ext.emu_cam(x, out, 0.5)
    from kernels import reference as R
    assert np.allclose(out, R.channel_attention(x, 0.5), rtol=1e-4, atol=1e-4)

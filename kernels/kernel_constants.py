"""The launch shapes and limits of the CUDA kernels, read from their one definition in the ``.cuh`` sources.

``constexpr int`` constants at namespace scope (``kernels/*/*_kernel.cuh``) are the single source: the GPU launchers,
the CPU emulation and the TensorRT plugins compile against them, and Python code that needs them (the roofline
model, checks of exported graphs) reads them here instead of repeating the numbers.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["kernel_constants"]

_HERE = Path(__file__).resolve().parent
_SOURCES = {
    "mss": _HERE / "multi_scale_subtraction" / "mss_kernel.cuh",
    "pam": _HERE / "position_attention" / "pam_kernel.cuh",
    "cam": _HERE / "channel_attention" / "cam_kernel.cuh",
    "hotpath": _HERE / "cuda" / "hotpath_kernels.cuh",
}


@functools.lru_cache(maxsize=None)
def kernel_constants(kernel: str) -> dict[str, int]:
    """``{"kMaxC": 2048, ...}``: the ``constexpr int`` constants of a kernel header (mss, pam, cam or hotpath);
    constants defined from others (``kTileX + 2 * kHalo``) are evaluated."""
    text = re.sub(r"//[^\n]*", "", _SOURCES[kernel].read_text())
    out: dict[str, int] = {}
    for decl in re.findall(r"constexpr\s+int\s+([^;]+);", text):
        for part in decl.split(","):
            name, _, expr = (p.strip() for p in part.partition("="))
            if not re.fullmatch(r"[\w\s+\-*/()]+", expr):
                raise ValueError(f"{_SOURCES[kernel].name}: cannot evaluate {name} = {expr}")
            out[name] = int(eval(expr, {"__builtins__": {}}, dict(out)))  # noqa: S307 - integers and names only
    return out

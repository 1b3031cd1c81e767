"""Where the TensorRT plugin library ``libpolypseg_trt_plugins.so`` is, and what it contains.

The library (sources in ``kernels/plugins/``) registers three ``IPluginV3`` creators in the namespace
:data:`PLUGIN_NAMESPACE`, version :data:`PLUGIN_VERSION`; :data:`PLUGINS` lists their fields, which are the ONNX
attributes of the deploy graph's plugin nodes (``export.plugins``). It is built only where TensorRT headers and a
CUDA compiler exist (``TENSORRT_INCLUDE_DIR=… pip install -e .``, or ``cmake -S kernels -B build/plugins
-DTENSORRT_INCLUDE_DIR=…``; see ``kernels/plugins/README.md``).

Imports only the standard library (no torch, no TensorRT).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

__all__ = ["LIBRARY_NAME", "PLUGINS", "PLUGIN_FIELD_TYPES", "PLUGIN_NAMESPACE", "PLUGIN_VERSION",
           "find_plugin_library", "plugin_library_hash", "tensorrt_header_version", "tensorrt_include_dir"]

LIBRARY_NAME = "libpolypseg_trt_plugins.so"
PLUGIN_NAMESPACE = "polypseg"
PLUGIN_VERSION = "1"
ENV_VAR = "POLYPSEG_PLUGIN_LIBRARY"

# plugin name → creator field names (= ONNX attributes of the plugin node besides plugin_version/plugin_namespace)
PLUGINS: dict[str, tuple[str, ...]] = {
    "MultiScaleSubtraction": ("scales", "bn"),
    "PositionAttention": ("gamma",),
    "ChannelAttention": ("gamma",),
}
# plugin name → field → TensorRT PluginFieldType name (ONNX INTS → INT32, FLOAT/FLOATS → FLOAT32)
PLUGIN_FIELD_TYPES: dict[str, dict[str, str]] = {
    "MultiScaleSubtraction": {"scales": "INT32", "bn": "FLOAT32"},
    "PositionAttention": {"gamma": "FLOAT32"},
    "ChannelAttention": {"gamma": "FLOAT32"},
}

_REPO = Path(__file__).resolve().parent.parent
# TensorRT's public headers kept beside the checkout (never in it) for machines without a TensorRT install: 10.3 is
# JetPack 6 (Jetson Orin), 11.1 the current generation. kernels/CMakeLists.txt falls back to the 11.1 ones too.
SHARED_HEADERS = _REPO.parent / "shared" / "third_party" / "tensorrt"


def tensorrt_include_dir(version: str | None = None) -> Path | None:
    """A TensorRT include directory (with ``NvInferRuntime.h``), or None.

    ``version=None``: ``$TENSORRT_INCLUDE_DIR`` when set, else the shared 11.1 headers — the same choice as the
    CMake build. ``version="10.3"`` / ``"11.1"``: that generation's shared headers (compile checks of both)."""
    if version is None:
        env = os.environ.get("TENSORRT_INCLUDE_DIR")
        if env:
            return Path(env) if (Path(env) / "NvInferRuntime.h").is_file() else None
        version = "11.1"
    d = SHARED_HEADERS / version / "include"
    return d if (d / "NvInferRuntime.h").is_file() else None


def tensorrt_header_version(include_dir: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """(major, minor, patch) from ``NvInferVersion.h`` (TensorRT 11 spells them ``TRT_*_ENTERPRISE``)."""
    import re

    text = (Path(include_dir) / "NvInferVersion.h").read_text(errors="replace")
    parts = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"#define\s+(?:TRT_{part}_ENTERPRISE|NV_TENSORRT_{part})\s+(\d+)", text)
        if m is None:
            return None
        parts.append(int(m.group(1)))
    return parts[0], parts[1], parts[2]


def _package_dirs() -> list[Path]:
    """Directories of the ``kernels`` package: the source tree and, for a scikit-build-core editable install, the
    site-packages directory the compiled files are installed to (both are on the package's ``__path__``)."""
    dirs = [Path(__file__).resolve().parent]
    pkg = sys.modules.get(__name__.rpartition(".")[0]) if "." in __name__ else None
    for p in getattr(pkg, "__path__", None) or []:
        d = Path(p).resolve()
        if d not in dirs:
            dirs.append(d)
    return dirs


def _build_dirs() -> list[Path]:
    """Standalone CMake builds in the repository (``cmake -S kernels -B build/<x>`` puts the library at the top of
    the build tree), ``build/plugins`` first. The pip build tree (``build/<wheel tag>``) is not searched: its library
    is installed into the package, and a stale one may remain there after a build without TensorRT headers."""
    build = _REPO / "build"
    dirs = [build / "plugins"]
    if build.is_dir():
        dirs += [d for d in sorted(build.iterdir()) if d.is_dir() and d.name != "plugins"]
    return dirs


def find_plugin_library() -> Path | None:
    """Path of ``libpolypseg_trt_plugins.so``, or None if it is not built.

    Order: the environment variable ``POLYPSEG_PLUGIN_LIBRARY`` (a path to the file; it is an error if that file
    does not exist), then next to the ``kernels`` package (where ``pip install -e .`` with TensorRT headers installs
    it), then standalone CMake build trees under ``build/`` (``build/plugins`` first).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{ENV_VAR}={env!r} does not name a file (unset it, or point it at "
                                    f"{LIBRARY_NAME})")
        return p.resolve()
    for d in _package_dirs() + _build_dirs():
        p = d / LIBRARY_NAME
        if p.is_file():
            return p
    return None


def plugin_library_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the library file: engines record it, so a rebuilt library is detected."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # a few MB: one read

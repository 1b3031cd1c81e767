"""Backend registry: ``create_backend(name, model_path)`` with names ``ort``, ``ort-cuda``, ``openvino``, ``trt``
and ``auto`` (TensorRT with a GPU, else the fastest CPU backend installed: OpenVINO on x86, else ONNX Runtime)."""

from __future__ import annotations

import os
import platform
from typing import Callable

from ..errors import RuntimeInputError
from .base import Backend, TensorSpec

__all__ = ["BACKENDS", "Backend", "TensorSpec", "available_backends", "create_backend", "default_backend"]


def _ort(path, threads=None, **kw):
    from .onnxruntime import OrtBackend

    return OrtBackend(path, "cpu", threads)


def _ort_cuda(path, threads=None, **kw):
    from .onnxruntime import OrtBackend

    return OrtBackend(path, "cuda", threads)


def _ov(path, threads=None, **kw):
    from .openvino import OpenVinoBackend

    return OpenVinoBackend(path, threads, kw.get("inference_precision", "auto"))


def _trt(path, threads=None, **kw):
    from .tensorrt import TrtBackend

    return TrtBackend(path, tuple(kw.get("plugin_libs", ())))


BACKENDS: dict[str, Callable[..., Backend]] = {"ort": _ort, "ort-cuda": _ort_cuda, "openvino": _ov, "trt": _trt}


def available_backends() -> list[str]:
    """Backends that can run on this machine right now."""
    from ..cuda import cuda_device_count
    from .openvino import openvino_available
    from .tensorrt import tensorrt_available

    out = ["ort"]
    if openvino_available():
        out.append("openvino")
    if cuda_device_count() > 0:
        out.append("ort-cuda")
        if tensorrt_available():
            out.append("trt")
    return out


def default_backend(for_engine: bool = False) -> str:
    """``trt`` for an engine with a GPU; else OpenVINO on x86-64 when installed (fastest for INT8), else ``ort``."""
    avail = available_backends()
    if for_engine and "trt" in avail:
        return "trt"
    if "openvino" in avail and platform.machine().lower() in ("x86_64", "amd64"):
        return "openvino"
    return "ort"


def create_backend(name: str, model_path: str | os.PathLike[str], threads: int | None = None, **kw) -> Backend:
    """Build a backend by name (``auto`` picks :func:`default_backend`)."""
    if name == "auto":
        name = default_backend(for_engine=str(model_path).endswith((".engine", ".plan")))
    if name not in BACKENDS:
        raise RuntimeInputError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")
    return BACKENDS[name](model_path, threads=threads, **kw)

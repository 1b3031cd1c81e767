"""Backend registry: ``create_backend(name, model_path)`` with names ``ort``, ``ort-cuda``, ``openvino``, ``trt``
and ``auto`` (TensorRT with a GPU, else the fastest CPU backend installed: OpenVINO on x86, else ONNX Runtime);
``open_backend`` also chooses the number of inference streams (``streams="auto"``)."""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np

from ..errors import RuntimeInputError
from .base import Backend, TensorSpec

__all__ = ["BACKENDS", "LATENCY_BUDGET_MS", "Backend", "TensorSpec", "available_backends", "create_backend",
           "default_backend", "open_backend", "parse_streams"]


def _ort(path, threads=None, streams=1, **kw):
    from .onnxruntime import OrtBackend

    return OrtBackend(path, "cpu", threads, streams)


def _ort_cuda(path, threads=None, streams=1, **kw):
    from .onnxruntime import OrtBackend

    return OrtBackend(path, "cuda", threads, streams)


def _ov(path, threads=None, streams=1, **kw):
    from .openvino import OpenVinoBackend

    return OpenVinoBackend(path, threads, kw.get("inference_precision", "auto"), streams)


def _trt(path, threads=None, streams=1, **kw):
    from .tensorrt import TrtBackend

    if streams != 1:
        raise RuntimeInputError("the TensorRT backend runs one stream (its CUDA graph); use --streams 1")
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
    """Build a backend by name (``auto`` picks :func:`default_backend`); ``streams=N`` for N concurrent requests."""
    if name == "auto":
        name = default_backend(for_engine=str(model_path).endswith((".engine", ".plan")))
    if name not in BACKENDS:
        raise RuntimeInputError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")
    return BACKENDS[name](model_path, threads=threads, **kw)


#: frame period of a 25 FPS endoscope: a network slower than this on one stream cannot keep up with the camera
LATENCY_BUDGET_MS = 40.0
_MULTI_STREAM = ("ort", "openvino")


def parse_streams(text: str | int) -> int | str:
    """``auto`` or a positive integer (the ``--streams`` argument)."""
    if str(text) == "auto":
        return "auto"
    try:
        n = int(str(text))  # "2.5" is refused, not truncated
    except ValueError:
        n = 0
    if n < 1:
        raise RuntimeInputError(f"--streams must be 'auto' or a positive integer, got {text!r}")
    return n


def open_backend(name: str, model_path: str | os.PathLike[str], threads: int | None = None,
                 streams: int | str = 1, budget_ms: float = LATENCY_BUDGET_MS, log: Callable = print,
                 **kw) -> Backend:
    """Create and open a backend, choosing the number of inference streams.

    ``streams="auto"``: open with one stream (lowest per-frame latency) and time five inferences of a blank input;
    when the median exceeds ``budget_ms`` (the network alone cannot keep up with a 25 FPS camera), the CPU backends
    are reopened with two streams — two frames in flight, each request on half the threads, which keeps the cores
    busy through layers one request cannot parallelise. The gain depends on how well one request scales over the
    cores: Res2Net-50 msnet INT8 on the 2-core dev VM scales almost perfectly, so two streams gave only +5 % frames
    per second for twice the per-frame latency (hence the default of one stream). TensorRT and single-core machines
    always use one stream.
    """
    if name == "auto":
        name = default_backend(for_engine=str(model_path).endswith((".engine", ".plan")))
    streams = parse_streams(streams)
    if streams != "auto":
        return create_backend(name, model_path, threads=threads, streams=streams, **kw).open()
    be = create_backend(name, model_path, threads=threads, **kw).open()
    cores = threads or os.cpu_count() or 1
    if name not in _MULTI_STREAM or cores < 2:
        return be
    spec = be.input_spec()
    if not all(isinstance(d, int) for d in spec.shape):
        return be
    x = np.zeros(spec.shape, np.dtype(spec.dtype))
    for _ in range(2):
        be.infer(x, check=False)
    t = []
    for _ in range(5):
        t0 = time.perf_counter()
        be.infer(x, check=False)
        t.append((time.perf_counter() - t0) * 1e3)
    med = float(np.median(t))
    if med <= budget_ms:
        return be
    be.close()
    log(f"{name}: one inference takes {med:.0f} ms (> {budget_ms:.0f} ms, a 25 FPS camera's frame period): "
        f"running 2 streams (--streams 1 for the lowest latency)")
    return create_backend(name, model_path, threads=threads, streams=2, **kw).open()

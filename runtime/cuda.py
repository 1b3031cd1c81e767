"""cuda-python helpers (never pycuda): a device check that never crashes, error checking, pinned host arrays.

Import is cheap and safe on machines without CUDA: nothing is loaded until a function is called, and every check
returns "no device" instead of raising when the driver or the package is missing.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .errors import BackendUnavailableError

__all__ = ["check", "cuda_device_count", "compute_capability", "device_status", "handle", "pinned_empty",
           "require_device"]


def _cudart() -> Any:
    from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

    return cudart


def device_status() -> tuple[int, str]:
    """(number of usable CUDA devices, ``"ok"`` or one line saying exactly why there is none: no cuda-python, no
    driver, a driver too old for this CUDA runtime, no device; see :func:`runtime.machine.classify_cuda_status`)."""
    from .machine import probe_gpu

    gpu = probe_gpu()
    return int(gpu.get("gpu_count", 0)), str(gpu.get("gpu_status", "ok"))


def cuda_device_count() -> int:
    """Number of usable CUDA devices; 0 without cuda-python, without a driver (error 35) or without a device."""
    return device_status()[0]


def require_device() -> None:
    """Raise :class:`BackendUnavailableError` unless a CUDA device answers (check before creating a TRT runtime)."""
    n, why = device_status()
    if n == 0:
        raise BackendUnavailableError(f"no CUDA device ({why}): TensorRT needs an NVIDIA GPU; on this machine use "
                                      "a CPU backend (openvino or ort)")


def handle(h: Any) -> int:
    """The raw value of a cuda-python handle (``cudaStream_t``, ``cudaGraphExec_t``, …) or pointer, for ctypes
    functions declared with ``c_void_p``: they refuse the cuda-python objects themselves."""
    return 0 if h is None else int(h)


def check(result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        cudart = _cudart()
        _, name = cudart.cudaGetErrorName(err)
        raise RuntimeError(f"CUDA error {int(err)}: {name.decode() if isinstance(name, bytes) else name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def compute_capability(device: int = 0) -> tuple[int, int]:
    cudart = _cudart()
    major = check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device))
    minor = check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device))
    return int(major), int(minor)


def device_name(device: int = 0) -> str:
    props = check(_cudart().cudaGetDeviceProperties(device))
    name = props.name
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


def pinned_empty(shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """A page-locked host array (for async copies) and its pointer; free with ``cudaFreeHost(ptr)``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    ptr = int(check(_cudart().cudaMallocHost(max(1, nbytes))))
    buf = (ctypes.c_byte * max(1, nbytes)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape), ptr

"""GPU hot path: per-frame pre/post-processing with the CUDA kernels, around a TensorRT engine, on one device.

With a GPU, a frame goes host → device once (pinned copy), the CUDA preprocess kernel writes the engine's input
buffer directly (resize + BGR→RGB + mean/std + NCHW, float32 or float16), the engine runs (CUDA graph replay when
captured), and the CUDA overlay kernel annotates the frame on the device from the engine's logits; only the
annotated frame (and a small logit map for statistics) come back. The kernels are ``kernels/cuda/hotpath.cu``
(C launchers, compiled into ``libpolypseg_cuda_hotpath.so`` when nvcc is available), the same source the tests
execute on the CPU against the OpenCV/NumPy reference.

:class:`GpuFrameProcessor` has the interface of :class:`runtime.pipeline.FrameProcessor`, so the pipeline's
threads stay as they are: the inference thread uploads and runs the network, the render thread overlays and
downloads. A small ring of device frame slots (one per frame in flight) keeps the two threads from overwriting
each other's frames.

Nothing here can be exercised without a CUDA device; :func:`find_cuda_hotpath` and the library's exports are
tested everywhere, the rest is guarded by a device check.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend
from .cuda import check, handle, pinned_empty, require_device
from .errors import BackendUnavailableError
from .manifest import Manifest

__all__ = ["CUDA_HOTPATH_LIB", "GpuFrameProcessor", "find_cuda_hotpath", "launch_overlay", "launch_preprocess",
           "load_cuda_hotpath"]

CUDA_HOTPATH_LIB = "libpolypseg_cuda_hotpath.so"
_ROOT = Path(__file__).resolve().parents[1]


def find_cuda_hotpath() -> Path | None:
    """The compiled CUDA hot-path library: ``$POLYPSEG_CUDA_HOTPATH``, next to the ``kernels`` package (pip build),
    or a standalone CMake build under ``build/``."""
    env = os.environ.get("POLYPSEG_CUDA_HOTPATH")
    if env:
        return Path(env) if Path(env).is_file() else None
    import kernels

    candidates = [Path(kernels.__file__).parent / CUDA_HOTPATH_LIB]
    candidates += sorted((_ROOT / "build").glob(f"**/{CUDA_HOTPATH_LIB}"))
    try:  # editable installs put the compiled files in site-packages
        import importlib.util

        spec = importlib.util.find_spec("kernels._ext")
        if spec and spec.origin:
            candidates.insert(0, Path(spec.origin).parent / CUDA_HOTPATH_LIB)
    except (ImportError, ValueError):
        pass
    return next((p for p in candidates if p.is_file()), None)


def load_cuda_hotpath(path: str | os.PathLike[str] | None = None) -> ctypes.CDLL:
    """Load the library and declare its C signatures (loading needs no GPU: cudart is linked statically)."""
    p = Path(path) if path else find_cuda_hotpath()
    if p is None:
        raise BackendUnavailableError(
            f"{CUDA_HOTPATH_LIB} is not built: install with nvcc on the PATH (pip install -e .) or build "
            "`cmake -S kernels -B build/kernels && cmake --build build/kernels`"
        )
    lib = ctypes.CDLL(str(p))
    vp, i, f, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_longlong
    lib.polypseg_cuda_preprocess.argtypes = [vp, i, i, ll, i, i, ctypes.POINTER(f), ctypes.POINTER(f), vp, i, vp]
    lib.polypseg_cuda_preprocess.restype = i
    lib.polypseg_cuda_overlay.argtypes = [vp, i, i, ll, vp, i, i, f, ctypes.POINTER(ctypes.c_ubyte), i,
                                          ctypes.POINTER(ctypes.c_ubyte), vp, vp]
    lib.polypseg_cuda_overlay.restype = i
    return lib


def launch_preprocess(lib: ctypes.CDLL, src: Any, H: int, W: int, stride: int, h: int, w: int, mean: Any, std: Any,
                      dst: Any, half: bool, stream: Any) -> None:
    """CUDA preprocess kernel (resize + BGR→RGB + mean/std + NCHW) from a device frame into the engine's input.

    Device pointers and the stream may be cuda-python objects (``cudaStream_t``…) or ints: ctypes refuses the
    objects for ``c_void_p`` arguments, so they are passed by value (:func:`runtime.cuda.handle`)."""
    err = lib.polypseg_cuda_preprocess(handle(src), H, W, stride, h, w, mean, std, handle(dst), int(bool(half)),
                                       handle(stream))
    if err:
        raise RuntimeError(f"CUDA preprocess kernel failed ({_error_name(err)})")


def launch_overlay(lib: ctypes.CDLL, frame: Any, H: int, W: int, stride: int, logits: Any, h: int, w: int,
                   threshold: float, fill: Any, alpha256: int, outline: Any, count: Any, stream: Any) -> None:
    """CUDA overlay kernel: tint + outline the foreground of ``logits`` into the device frame, count its pixels."""
    err = lib.polypseg_cuda_overlay(handle(frame), H, W, stride, handle(logits), h, w, threshold, fill, alpha256,
                                    outline, handle(count), handle(stream))
    if err:
        raise RuntimeError(f"CUDA overlay kernel failed ({_error_name(err)})")


def _error_name(code: int) -> str:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        _, name = cudart.cudaGetErrorName(cudart.cudaError_t(code))
        return f"cudaError {code}: {name.decode() if isinstance(name, bytes) else name}"
    except Exception:  # noqa: BLE001
        return f"cudaError {code}"


class _Slot:
    """One frame in flight: device frame + device logits + pinned host staging."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.dframe = 0
        self.host: np.ndarray | None = None
        self.hptr = 0
        self.dlogits = 0
        self.dcount = 0


class GpuFrameProcessor:
    """Frame → annotated frame entirely on the GPU around a :class:`~runtime.backends.tensorrt.TrtBackend`.

    Args:
        backend: an opened TensorRT backend (its device buffers and stream are used directly).
        manifest: the model's manifest (preprocessing constants, threshold).
        slots: device frame slots (frames in flight between the inference and render threads).
    """

    #: the overlay reads the logits the engine left on the device: host-side post-processing (the stabiliser) would
    #: not reach it, so the pipeline runs this processor without one
    host_logits = False

    def __init__(self, backend: Backend, manifest: Manifest, slots: int = 6, fill=(0, 255, 0), alpha: float = 0.4,
                 outline=(0, 255, 255)) -> None:
        require_device()
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        from kernels.ops import logit_threshold

        if not hasattr(backend, "device_io"):
            raise BackendUnavailableError("the GPU hot path runs around the TensorRT backend only")
        self.backend, self.m = backend, manifest
        self.lib = load_cuda_hotpath()
        self._cudart = cudart
        io = backend.device_io()
        self._din, self._dout, self._in_dtype, self._out_hw = io["input"], io["output"], io["input_dtype"], io["out_hw"]
        self._stream = io["stream"]
        self._render_stream = check(cudart.cudaStreamCreate())
        self._mean = (ctypes.c_float * 3)(*manifest.mean)
        self._std = (ctypes.c_float * 3)(*manifest.std)
        self._fill = (ctypes.c_ubyte * 3)(*fill)
        self._outline = (ctypes.c_ubyte * 3)(*outline)
        self._alpha256 = int(round(alpha * 256))
        self._thr = float(logit_threshold(manifest.threshold))
        self._slots = [_Slot() for _ in range(slots)]
        self._next = 0
        self._by_frame: dict[int, _Slot] = {}
        self._lock = threading.Lock()
        h, w = self._out_hw
        self._logits_host, self._logits_hptr = pinned_empty((h, w), np.dtype(np.float32))
        for s in self._slots:
            s.dlogits = int(check(cudart.cudaMalloc(h * w * 4)))
            s.dcount = int(check(cudart.cudaMalloc(8)))

    # -------------------------------------------------------------- pipeline interface
    def warmup(self, n: int = 2) -> None:
        self.backend.infer(np.zeros(self.backend.input_spec().shape, self.backend.input_spec().dtype), check=False)

    def _slot_for(self, frame: np.ndarray) -> _Slot:
        cudart = self._cudart
        with self._lock:
            s = self._slots[self._next]
            self._next = (self._next + 1) % len(self._slots)
            self._by_frame[id(frame)] = s
        if s.shape != frame.shape:
            if s.dframe:
                cudart.cudaFree(s.dframe)
                cudart.cudaFreeHost(s.hptr)
            s.dframe = int(check(cudart.cudaMalloc(frame.nbytes)))
            s.host, s.hptr = pinned_empty(frame.shape, np.dtype(np.uint8))
            s.shape = frame.shape
        return s

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """Upload ``frame`` and run the CUDA preprocess kernel into the engine's input buffer."""
        cudart = self._cudart
        s = self._slot_for(frame)
        np.copyto(s.host, frame)
        check(cudart.cudaMemcpyAsync(s.dframe, s.hptr, frame.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
        H, W = frame.shape[:2]
        h, w = self.m.input_hw
        launch_preprocess(self.lib, s.dframe, H, W, W * 3, h, w, self._mean, self._std, self._din,
                          self._in_dtype == "float16", self._stream)
        return np.asarray(id(frame))  # token: the input lives on the device

    def infer(self, token: np.ndarray) -> np.ndarray:
        """Run the engine on the device input; keep the logits on the device for the overlay."""
        cudart = self._cudart
        s = self._by_frame[int(token)]
        self.backend.enqueue()
        h, w = self._out_hw
        d2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpyAsync(s.dlogits, self._dout, h * w * 4, d2d, self._stream))
        check(cudart.cudaMemcpyAsync(self._logits_hptr, self._dout, h * w * 4, d2h, self._stream))
        check(cudart.cudaStreamSynchronize(self._stream))
        return self._logits_host.reshape(1, 1, h, w).copy()

    def render(self, frame: np.ndarray, logits: Any) -> int:
        """CUDA overlay on the device copy of ``frame``, then download into ``frame``; returns foreground pixels."""
        cudart = self._cudart
        with self._lock:
            s = self._by_frame.pop(id(frame))
        H, W = frame.shape[:2]
        h, w = self._out_hw
        st = self._render_stream
        check(cudart.cudaMemsetAsync(s.dcount, 0, 8, st))
        launch_overlay(self.lib, s.dframe, H, W, W * 3, s.dlogits, h, w, self._thr, self._fill, self._alpha256,
                       self._outline, s.dcount, st)
        count = np.zeros(1, np.uint64)
        check(cudart.cudaMemcpyAsync(s.hptr, s.dframe, frame.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, st))
        check(cudart.cudaMemcpyAsync(count.ctypes.data, s.dcount, 8, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, st))
        check(cudart.cudaStreamSynchronize(st))
        np.copyto(frame, s.host)
        return int(count[0])

    def close(self) -> None:
        cudart = self._cudart
        for s in self._slots:
            for p in (s.dframe, s.dlogits, s.dcount):
                if p:
                    cudart.cudaFree(p)
            if s.hptr:
                cudart.cudaFreeHost(s.hptr)
        cudart.cudaFreeHost(self._logits_hptr)
        cudart.cudaStreamDestroy(self._render_stream)

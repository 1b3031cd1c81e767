"""TensorRT backend (tensorrt + cuda-python): engine deserialised once, device buffers allocated once, pinned host
buffers, one stream, and a CUDA graph of enqueue when the engine allows it.

Never creates a TensorRT runtime without a CUDA device (that crashes the process on machines without one), and
refuses with one clear line an engine built for another GPU or TensorRT version (read from its manifest).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..cuda import check, compute_capability, pinned_empty, require_device
from ..errors import BackendUnavailableError, EngineError, RuntimeInputError
from ..manifest import Manifest, manifest_path, sha256_file
from .base import Backend, TensorSpec

__all__ = ["TrtBackend", "tensorrt_available"]


def _import_trt():
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailableError(
            f"TensorRT Python bindings are not importable ({type(e).__name__}): install TensorRT 10/11 on the GPU "
            "machine (JetPack ships it on Jetson)"
        ) from None
    return trt


def tensorrt_available() -> bool:
    from ..cuda import cuda_device_count

    if cuda_device_count() == 0:
        return False
    try:
        _import_trt()
    except BackendUnavailableError:
        return False
    return True


class TrtBackend(Backend):
    """Runs a serialised TensorRT engine.

    Args:
        engine_path: the ``.engine`` file; its manifest (``.engine.manifest.json``) must sit beside it.
        plugin_libs: plugin shared libraries to load before deserialising.
        cuda_graph: capture enqueue in a CUDA graph (replayed per frame) when possible.
    """

    name = "trt"

    def __init__(
        self, engine_path: str | os.PathLike[str], plugin_libs: tuple[str, ...] = (), cuda_graph: bool = True
    ) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise RuntimeInputError(f"engine file {str(self.engine_path)!r} does not exist")
        self.manifest = Manifest.load(manifest_path(self.engine_path))
        self.plugin_libs, self.cuda_graph = plugin_libs, cuda_graph
        self._ctx = None

    def _check_compat(self, trt) -> None:
        eng = self.manifest.engine or {}
        want_trt, want_cc = eng.get("tensorrt_version"), eng.get("compute_capability")
        have_cc = "{}.{}".format(*compute_capability())
        if want_trt and want_trt.split(".")[:2] != trt.__version__.split(".")[:2]:
            raise EngineError(
                f"{self.engine_path.name} was built with TensorRT {want_trt}, this machine has {trt.__version__}: "
                "rebuild it here with `python -m export.trt`"
            )
        if want_cc and want_cc != have_cc:
            raise EngineError(
                f"{self.engine_path.name} was built for a GPU of compute capability {want_cc}, this GPU is {have_cc}: "
                "rebuild it here with `python -m export.trt`"
            )
        for lib, digest in (eng.get("plugin_libs") or {}).items():
            local = [p for p in self.plugin_libs if Path(p).name == Path(lib).name]
            if not local:
                from kernels.plugin_library import find_plugin_library

                found = find_plugin_library()
                if found is not None and found.name == Path(lib).name:
                    self.plugin_libs = (*self.plugin_libs, str(found))
                    local = [str(found)]
            if not local:
                raise EngineError(f"{self.engine_path.name} needs the plugin library {Path(lib).name}: build it "
                                  "(cmake -S kernels -B build/plugins -DTENSORRT_INCLUDE_DIR=…) or set "
                                  "POLYPSEG_PLUGIN_LIBRARY")
            if digest and sha256_file(local[0]) != digest:
                raise EngineError(f"plugin library {local[0]} differs from the one the engine was built with: rebuild")

    def _open(self) -> None:
        require_device()  # before anything TensorRT: a runtime without a device crashes the process
        trt = _import_trt()
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        self._check_compat(trt)
        self._logger = trt.Logger(trt.Logger.WARNING)
        registry = trt.get_plugin_registry()
        self._plugin_handles = [registry.load_library(str(p)) for p in self.plugin_libs]
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.engine_path} (see the TensorRT log above)")
        self._engine = engine
        self._ctx = engine.create_execution_context()
        self._stream = check(cudart.cudaStreamCreate())
        self._bufs: dict[str, tuple[int, np.ndarray, int]] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        for n in names:
            shape = tuple(engine.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                shape = tuple(engine.get_tensor_profile_shape(n, 0)[2]) if n in self._inputs else shape
                if n in self._inputs:
                    self._ctx.set_input_shape(n, shape)
        for n in names:
            shape = tuple(self._ctx.get_tensor_shape(n))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            dptr = int(check(cudart.cudaMalloc(nbytes)))
            host, hptr = pinned_empty(shape, dtype)
            self._bufs[n] = (dptr, host, hptr)
            self._ctx.set_tensor_address(n, dptr)
        i0 = self._inputs[0]
        self._in = TensorSpec(i0, tuple(self._bufs[i0][1].shape), str(self._bufs[i0][1].dtype))
        self._graph_exec = None
        if self.cuda_graph:
            self._try_capture(cudart)

    def _try_capture(self, cudart) -> None:
        # warm-up enqueue (TensorRT may allocate lazily), then capture; fall back to plain enqueue on failure
        self._ctx.execute_async_v3(self._stream)
        check(cudart.cudaStreamSynchronize(self._stream))
        try:
            check(cudart.cudaStreamBeginCapture(self._stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            self._ctx.execute_async_v3(self._stream)
            graph = check(cudart.cudaStreamEndCapture(self._stream))
            self._graph_exec = check(cudart.cudaGraphInstantiate(graph, 0))
        except Exception:  # noqa: BLE001 - engines with data-dependent shapes cannot be captured
            self._graph_exec = None

    def input_spec(self) -> TensorSpec:
        if self._ctx is None:
            self.open()
        return self._in

    # ------------------------------------------------------------------ device-side use (runtime.gpu)
    def device_io(self) -> dict:
        """Device pointers of the engine's input and first output, their dtype/size, and the stream."""
        if self._ctx is None:
            self.open()
        i0, o0 = self._inputs[0], self._outputs[0]
        out_shape = self._bufs[o0][1].shape
        if self._bufs[o0][1].dtype != np.float32:
            raise EngineError("the GPU hot path needs float32 logits (export with float32 I/O)")
        return {"input": self._bufs[i0][0], "input_dtype": str(self._bufs[i0][1].dtype), "output": self._bufs[o0][0],
                "out_hw": tuple(out_shape[-2:]), "stream": self._stream}

    def enqueue(self) -> None:
        """Run the engine on its device input buffer, asynchronously on :meth:`device_io`'s stream (no copies)."""
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        if self._graph_exec is not None:
            check(cudart.cudaGraphLaunch(self._graph_exec, self._stream))
        elif not self._ctx.execute_async_v3(self._stream):
            raise EngineError("TensorRT enqueue failed (see the TensorRT log)")

    def _run(self, x: np.ndarray) -> np.ndarray:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        dptr, host, hptr = self._bufs[self._inputs[0]]
        np.copyto(host, x, casting="same_kind")
        check(cudart.cudaMemcpyAsync(dptr, hptr, host.nbytes, h2d, self._stream))
        self.enqueue()
        odptr, ohost, ohptr = self._bufs[self._outputs[0]]
        check(cudart.cudaMemcpyAsync(ohptr, odptr, ohost.nbytes, d2h, self._stream))
        check(cudart.cudaStreamSynchronize(self._stream))
        return ohost.copy()

    def _close(self) -> None:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        for dptr, _, hptr in getattr(self, "_bufs", {}).values():
            cudart.cudaFree(dptr)
            cudart.cudaFreeHost(hptr)
        self._bufs = {}
        self._ctx = None
        self._engine = None

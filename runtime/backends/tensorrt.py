"""TensorRT backend (TensorRT 10/11 or TensorRT-RTX, through cuda-python): engine deserialised once, device buffers
allocated once, pinned host buffers, one stream, and a CUDA graph of enqueue when the engine allows it.

Never creates a TensorRT runtime without a CUDA device (that crashes the process on machines without one). Before
deserialising, the engine's manifest is compared with the machine (:mod:`runtime.engine_check`: engine flavour,
exact TensorRT build, GPU generation, driver, plugin library and its kernel images) and a mismatch is refused with
one line. Engines of either flavour load: the manifest says which library reads the plan.

The pieces that decide something — I/O shapes for a batch (:func:`io_shapes`), CUDA graph capture
(:func:`capture_graph`), plugin loading (:func:`load_plugin_libraries`) and the release of every handle — are
functions of their inputs, so they run in the tests on this GPU-less machine with real cuda-python objects, real
TensorRT-RTX network metadata and real plugin registries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..cuda import check, pinned_empty, require_device
from ..engine_check import FLAVOURS, engine_problems, flavour_module, product_name
from ..errors import BackendUnavailableError, EngineError, RuntimeInputError
from ..manifest import Manifest, manifest_path
from .base import Backend, TensorSpec

__all__ = ["TrtBackend", "capture_graph", "engine_io", "import_flavour", "io_shapes", "load_plugin_libraries",
           "tensorrt_available"]


def import_flavour(flavour: str = "tensorrt"):
    """The Python module of an engine flavour (``tensorrt`` / ``tensorrt_rtx``); importing creates no runtime."""
    product, module, how = FLAVOURS[flavour]
    try:
        return __import__(module)
    except Exception as e:  # noqa: BLE001 - ImportError, or a missing libnvinfer behind the bindings
        raise BackendUnavailableError(f"{product} Python bindings are not importable ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}): install {how}") from None


def tensorrt_available() -> bool:
    """A CUDA device and a TensorRT that runs engines on it (TensorRT 10/11 or TensorRT-RTX)."""
    from ..cuda import cuda_device_count

    if cuda_device_count() == 0:
        return False
    for flavour in ("tensorrt", "tensorrt-rtx"):
        try:
            import_flavour(flavour)
            return True
        except BackendUnavailableError:
            pass
    return False


# --------------------------------------------------------------------------------------------- decisions
def load_plugin_libraries(registry: Any, libs: Sequence[str | os.PathLike[str]]) -> list[Any]:
    """Load each plugin library into ``registry``. TensorRT answers a library it cannot load with None and a log
    line, which would otherwise surface only later as "plugin not found"; here it is an error naming the file."""
    handles = []
    for p in libs:
        h = registry.load_library(str(p))
        if h is None:
            for loaded in handles:  # all or nothing: the registry is process-wide
                registry.deregister_library(loaded)
            raise EngineError(f"TensorRT could not load the plugin library {p} (see its log above; a library whose "
                              "creators are already registered in this process is refused too): rebuild it for this "
                              "TensorRT (cmake -S kernels -B build/plugins -DTENSORRT_INCLUDE_DIR=…)")
        handles.append(h)
    return handles


def engine_io(engine: Any, trt: Any) -> list[dict[str, Any]]:
    """An engine's I/O in the manifest's form: name, mode, shape (−1 = dynamic), dtype, and for dynamic inputs the
    optimisation profile 0 (min/opt/max)."""
    io = []
    for i in range(engine.num_io_tensors):
        n = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else "output"
        t = {"name": n, "mode": mode, "shape": [int(d) for d in engine.get_tensor_shape(n)],
             "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(n))).name}
        if mode == "input" and any(d < 0 for d in t["shape"]):
            lo, opt, hi = engine.get_tensor_profile_shape(n, 0)
            t["profile"] = {"min": [int(d) for d in lo], "opt": [int(d) for d in opt], "max": [int(d) for d in hi]}
        io.append(t)
    return io


def io_shapes(io: Sequence[dict[str, Any]], batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every I/O tensor when the engine runs ``batch`` frames at a time.

    A dynamic batch dimension takes ``batch`` (checked against the optimisation profile), never the profile's
    maximum: one frame must cost one frame of work. Outputs follow the batch of the inputs."""
    if batch < 1:
        raise RuntimeInputError(f"batch must be at least 1, got {batch}")
    shapes: dict[str, tuple[int, ...]] = {}
    for t in io:
        shape = list(t["shape"])
        prof = t.get("profile")
        if prof:
            lo, hi = prof["min"][0], prof["max"][0]
            if not lo <= batch <= hi:
                raise EngineError(f"the engine's input {t['name']!r} takes batches of {lo}…{hi}, not {batch}: "
                                  "rebuild with another --dynamic-batch profile or feed fewer frames")
        if shape and shape[0] < 0:
            shape[0] = batch
        if any(d < 0 for d in shape):
            raise EngineError(f"the engine's {t['mode']} {t['name']!r} has dynamic dimensions besides the batch "
                              f"({t['shape']}): export it with a fixed input size")
        shapes[t["name"]] = tuple(shape)
    return shapes


def capture_graph(cudart: Any, stream: Any, enqueue: Callable[[Any], bool]) -> tuple[Any, Any] | None:
    """Capture one ``enqueue`` in a CUDA graph; returns ``(graph, graph_exec)``, or None when the engine cannot be
    captured (then the caller enqueues directly).

    A warm-up enqueue runs first (TensorRT may allocate lazily) and must succeed. The capture always ends, even when
    the enqueue raises, so the stream is never left capturing; an enqueue that reports failure while capturing
    yields no graph (a graph of a failed enqueue would replay wrong logits silently)."""
    if not enqueue(stream):
        raise EngineError("TensorRT enqueue failed on the warm-up run (see the TensorRT log)")
    check(cudart.cudaStreamSynchronize(stream))
    err, *_ = cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
    if int(err) != 0:
        return None
    ok, graph = False, None
    try:
        ok = bool(enqueue(stream))
    finally:
        err, graph = cudart.cudaStreamEndCapture(stream)
        if int(err) != 0:
            graph = None
        elif not ok and graph is not None:  # a failed or raising enqueue: no graph of it survives
            cudart.cudaGraphDestroy(graph)
            graph = None
    if graph is None:
        return None
    err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
    if int(err) != 0:
        cudart.cudaGraphDestroy(graph)
        return None
    return graph, graph_exec


# --------------------------------------------------------------------------------------------- backend
class TrtBackend(Backend):
    """Runs a serialised TensorRT or TensorRT-RTX engine.

    Args:
        engine_path: the ``.engine`` file; its manifest (``.engine.manifest.json``) must sit beside it.
        plugin_libs: plugin shared libraries to load before deserialising (default: the one the manifest names,
            found by :func:`kernels.plugin_library.find_plugin_library`).
        cuda_graph: capture enqueue in a CUDA graph (replayed per frame) when possible.
        batch: frames per inference (a ``--dynamic-batch`` engine runs any batch its profile allows).
    """

    name = "trt"

    def __init__(self, engine_path: str | os.PathLike[str], plugin_libs: tuple[str, ...] = (),
                 cuda_graph: bool = True, batch: int = 1) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise RuntimeInputError(f"engine file {str(self.engine_path)!r} does not exist")
        self.manifest = Manifest.load(manifest_path(self.engine_path))
        self.plugin_libs, self.cuda_graph, self.batch = tuple(plugin_libs), cuda_graph, batch
        self.flavour = (self.manifest.engine or {}).get("flavour", "tensorrt")
        self._ctx = None
        self._cudart: Any = None
        self._stream = self._graph = self._graph_exec = None
        self._bufs: dict[str, tuple[int, np.ndarray, int]] = {}
        self._plugin_handles: list[Any] = []

    def _plugins_to_load(self) -> tuple[str, ...]:
        if self.plugin_libs or not ((self.manifest.engine or {}).get("plugin_libs") or self.manifest.plugins):
            return self.plugin_libs
        from kernels.plugin_library import find_plugin_library

        found = find_plugin_library()
        return (str(found),) if found else ()

    def _open(self) -> None:
        try:
            self._open_steps()
        except BaseException:
            self._close()  # nothing half-open stays behind: buffers, stream, plugin handles
            raise

    def _open_steps(self) -> None:
        require_device()  # before anything TensorRT: a runtime without a device crashes the process
        from ..machine import MachineFacts, probe_gpu, probe_version

        self.plugin_libs = self._plugins_to_load()
        notes: list[str] = []  # the facts an engine is checked against (runtime.doctor gathers them all)
        mine = flavour_module(self.flavour) if self.flavour in ("tensorrt", "tensorrt-rtx") else "tensorrt"
        facts = MachineFacts(**probe_gpu(), **{mine: probe_version(mine, notes)})
        problems = engine_problems(self.manifest, facts, self.plugin_libs, name=self.engine_path.name)
        if problems:
            more = f" (and {len(problems) - 1} more: python -m runtime.doctor --model {self.engine_path})" \
                if len(problems) > 1 else ""
            raise EngineError(problems[0] + more)
        self.manifest.check_matches(self.engine_path)
        trt = import_flavour(self.flavour)
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        self._cudart = cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._registry = trt.get_plugin_registry()
        self._plugin_handles = load_plugin_libraries(self._registry, self.plugin_libs)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise EngineError(f"{product_name(self.flavour)} could not deserialise {self.engine_path} (see its log "
                              "above)")
        self._engine = engine
        self._ctx = engine.create_execution_context()
        self._stream = check(cudart.cudaStreamCreate())
        io = engine_io(engine, trt)
        shapes = io_shapes(io, self.batch)
        self._inputs = [t["name"] for t in io if t["mode"] == "input"]
        self._outputs = [t["name"] for t in io if t["mode"] == "output"]
        for n in self._inputs:
            self._ctx.set_input_shape(n, shapes[n])
        for t in io:
            n = t["name"]
            shape = tuple(self._ctx.get_tensor_shape(n))  # TensorRT's word, after the input shapes are set
            if shape != shapes[n]:
                raise EngineError(f"output {n!r} is {shape} for a batch of {self.batch}, expected {shapes[n]}")
            dtype = np.dtype(t["dtype"])
            dptr = int(check(cudart.cudaMalloc(max(1, int(np.prod(shape)) * dtype.itemsize))))
            host, hptr = pinned_empty(shape, dtype)
            self._bufs[n] = (dptr, host, hptr)
            self._ctx.set_tensor_address(n, dptr)
        i0 = self._inputs[0]
        self._in = TensorSpec(i0, tuple(self._bufs[i0][1].shape), str(self._bufs[i0][1].dtype))
        if self.cuda_graph:
            captured = capture_graph(cudart, self._stream, self._ctx.execute_async_v3)
            if captured is not None:
                self._graph, self._graph_exec = captured

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
        if self._graph_exec is not None:
            check(self._cudart.cudaGraphLaunch(self._graph_exec, self._stream))
        elif not self._ctx.execute_async_v3(self._stream):
            raise EngineError("TensorRT enqueue failed (see the TensorRT log)")

    def _run(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
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
        """Release everything _open made, in reverse order: graph exec, graph, buffers, context, stream, plugins."""
        release_handles(self._cudart, graph_exec=self._graph_exec, graph=self._graph, bufs=self._bufs.values(),
                        stream=self._stream)
        self._graph_exec = self._graph = self._stream = None
        self._bufs = {}
        self._ctx = None
        self._engine = None
        for h in self._plugin_handles:
            self._registry.deregister_library(h)
        self._plugin_handles = []


def release_handles(cudart: Any, *, graph_exec: Any = None, graph: Any = None,
                    bufs: Any = (), stream: Any = None) -> None:
    """Destroy a CUDA graph exec and graph, free device/pinned buffers, destroy the stream (each if present)."""
    if cudart is None:
        return
    if graph_exec is not None:
        cudart.cudaGraphExecDestroy(graph_exec)
    if graph is not None:
        cudart.cudaGraphDestroy(graph)
    for dptr, _, hptr in list(bufs):
        cudart.cudaFree(dptr)
        cudart.cudaFreeHost(hptr)
    if stream is not None:
        cudart.cudaStreamDestroy(stream)

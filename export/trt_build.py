"""The TensorRT-facing steps of an engine build (:func:`export.trt.build_engine`), the same for TensorRT 10/11 and
TensorRT-RTX: strongly typed network, TensorRT's own ONNX parser (a rejection names the node), precision from the
graph (no builder flags, no calibrators), timing cache, build progress, dynamic-batch profile, the network's I/O."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from common.io import write_bytes_atomic
from runtime.backends.tensorrt import load_plugin_libraries
from runtime.manifest import Manifest

from .errors import ExportError

__all__ = ["MAX_BATCH", "build_plan", "network_io", "parse_onnx", "plugin_ops"]

MAX_BATCH = 8  # --dynamic-batch profile: 1 (opt) … 8


def plugin_ops(onnx_path: Path) -> list[str]:
    import onnx

    from kernels.plugin_library import PLUGINS

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return sorted({n.op_type for n in graph.node if n.op_type in PLUGINS})


def _network(trt: Any, builder: Any, flavour: str) -> Any:
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if flavour == "tensorrt" and major < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # always on in TensorRT 11 and RTX
    return builder.create_network(flags)


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path, product: str) -> Any:
    """TensorRT's own ONNX parser; a rejection names the node, its op and the parser's reason."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        return parser
    errs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"node {e.node_name()!r} ({e.node_operator()})" if e.node() >= 0 else "graph"
        # one line: the parser's description may span lines, plus a no-device CUDA note from TensorRT-RTX
        desc = " ".join(ln.strip() for ln in e.desc().splitlines() if ln.strip() and "cudaError 35" not in ln)
        errs.append(f"{where}: {desc}")
    raise ExportError(f"{product}'s ONNX parser rejected {onnx_path.name}: " + "; ".join(errs[:3]))


def _dtype_name(trt: Any, dt: Any) -> str:
    import numpy as np

    try:
        return np.dtype(trt.nptype(dt)).name  # "float32", "float16", "int8", …
    except Exception:  # noqa: BLE001 - types NumPy lacks (bf16, fp8): TensorRT's own name
        return str(dt).rsplit(".", 1)[-1].lower()


def network_io(trt: Any, network: Any) -> list[dict[str, Any]]:
    """Names, directions, shapes (−1 = dynamic) and dtypes of the network's I/O, as the engine will have them."""
    io = []
    for mode, n, get in (("input", network.num_inputs, network.get_input),
                         ("output", network.num_outputs, network.get_output)):
        for i in range(n):
            t = get(i)
            io.append({"name": t.name, "mode": mode, "shape": [int(d) for d in t.shape],
                       "dtype": _dtype_name(trt, t.dtype)})
    return io


def _timing_cache(trt: Any, config: Any, path: Path) -> None:
    with warnings.catch_warnings():  # TensorRT-RTX: timing caches are accepted and ignored (no tactic timing)
        warnings.simplefilter("ignore", DeprecationWarning)
        blob = path.read_bytes() if path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None and blob:  # a damaged or foreign cache: start afresh rather than fail the build
            cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False) and blob:  # recorded on another device
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


class _Progress:
    """Prints TensorRT build phases (a long silent build is a known pain point)."""

    def __new__(cls, trt: Any, log: Callable[[str], None]):
        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self._t = time.perf_counter()

            def phase_start(self, phase_name, parent_phase, num_steps):
                indent = "    " if parent_phase else "  "
                log(f"{indent}[{time.perf_counter() - self._t:6.1f}s] {phase_name} ({num_steps} steps)")

            def step_complete(self, phase_name, step):
                return True  # False would cancel the build

            def phase_finish(self, phase_name):
                pass

        return Monitor()


def build_plan(onnx_path: Path, manifest: Manifest, target: Any, product: str, plugin_libs: Sequence[Path],
               workspace_mb: int, timing_dir: Path, progress: bool,
               log: Callable[[str], None]) -> tuple[bytes, list[dict[str, Any]]]:
    """Parse ``onnx_path`` with ``target``'s TensorRT (a :class:`export.trt.BuildTarget`) and build a strongly typed
    plan; returns its bytes and the network's I/O (recorded in the engine manifest)."""
    trt = target.trt
    registry = trt.get_plugin_registry()
    handles = load_plugin_libraries(registry, plugin_libs) if plugin_libs else []
    try:  # the plugin registry is process-wide: unregister what this build loaded, whatever happens
        return _build(trt, onnx_path, manifest, target, product, workspace_mb, timing_dir, progress, log)
    finally:
        for h in handles:
            registry.deregister_library(h)


def _timing_cache_path(timing_dir: Path, target: Any) -> Path:
    """One timing cache per TensorRT build and GPU model (two GPUs of one compute capability differ in timings)."""
    gpu = "-" + re.sub(r"[^A-Za-z0-9.]+", "_", target.gpu).strip("_") if target.flavour == "tensorrt" else ""
    return timing_dir / f"{target.flavour}-{target.version}-{target.compute_capability}{gpu}.cache"


def _build(trt: Any, onnx_path: Path, manifest: Manifest, target: Any, product: str, workspace_mb: int,
           timing_dir: Path, progress: bool, log: Callable[[str], None]) -> tuple[bytes, list[dict[str, Any]]]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _network(trt, builder, target.flavour)
    parser = parse_onnx(trt, network, logger, onnx_path, product)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if target.compute_capability != "any":
        caps = target.compute_capability.split(",")
        config.num_compute_capabilities = len(caps)
        for i, cc in enumerate(caps):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)
    tc_path = _timing_cache_path(timing_dir, target)
    _timing_cache(trt, config, tc_path)
    monitor = _Progress(trt, log) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    io = network_io(trt, network)
    if manifest.dynamic_batch:
        prof = builder.create_optimization_profile()
        c, (h, w) = manifest.in_channels, manifest.input_hw
        prof.set_shape(manifest.input_name, (1, c, h, w), (1, c, h, w), (MAX_BATCH, c, h, w))
        config.add_optimization_profile(prof)
        for t in io:
            if t["mode"] == "input":
                t["profile"] = {"min": [1, c, h, w], "opt": [1, c, h, w], "max": [MAX_BATCH, c, h, w]}
    where = target.gpu if target.flavour == "tensorrt-rtx" else f"{target.gpu} (sm {target.compute_capability})"
    log(f"building {product} {target.version} engine for {where}, {manifest.precision} graph …")
    plan = builder.build_serialized_network(network, config)
    del parser
    if plan is None:
        raise ExportError(f"{product} engine build failed (see the {product} log above)")
    data = bytes(plan)
    if not data:
        raise ExportError(f"{product} returned an empty engine")
    _save_timing_cache(config, tc_path, log)
    return data, io


def _save_timing_cache(config: Any, path: Path, log: Callable[[str], None]) -> None:
    """Keep the build's timings for the next build; a cache that cannot be saved never fails a finished build."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cache = config.get_timing_cache()
            if cache is not None:
                write_bytes_atomic(path, bytes(cache.serialize()))
    except Exception as e:  # noqa: BLE001 - e.g. a full disk: the engine itself is still good
        log(f"warning: timing cache not saved ({type(e).__name__}: {e})")

"""What this machine can run: GPU and driver, CUDA runtime, TensorRT flavours, CPU runtimes, the plugin library.

:func:`machine_facts` gathers :class:`MachineFacts` in well under a few seconds, never raises, and never creates a
TensorRT runtime or builder (that needs a CUDA device and crashes without one): TensorRT packages are only imported,
and the plugin library is only loaded into TensorRT's plugin registry, which works without a GPU. Each probe is a
small function of its own, so tests (and ``runtime.engine_check``) can call them one by one.

Torch-free; cuda-python, TensorRT, ONNX Runtime and OpenVINO are all optional.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.io import sha256_file

__all__ = ["GPU_PROVIDERS", "MachineFacts", "PluginLibraryFacts", "classify_cuda_status", "machine_facts",
           "probe_gpu", "probe_nvidia_driver", "probe_onnxruntime", "probe_openvino", "probe_plugin_library",
           "probe_version"]

CUDA_SUCCESS, CUDA_ERROR_INSUFFICIENT_DRIVER, CUDA_ERROR_NO_DEVICE = 0, 35, 100
# ONNX Runtime execution providers that need an NVIDIA GPU: onnxruntime-gpu lists them even where they cannot load
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider"})


@dataclass(frozen=True)
class PluginLibraryFacts:
    """``libpolypseg_trt_plugins.so``: where it is (or where it was looked for), what it carries, whether it loads."""

    path: str | None
    searched: tuple[str, ...]
    sha256: str = ""
    sass: tuple[str, ...] = ()
    ptx: tuple[str, ...] = ()
    device_code_error: str = ""
    loads: bool | None = None  # None: no TensorRT registry to load it into (or no file)
    load_error: str = ""
    registry: str = ""  # "tensorrt 10.3.0" / "tensorrt_lean 11.4.0.106": whose plugin registry was asked
    creators: tuple[str, ...] = ()  # our plugin creators found in that registry after loading
    runs_here: bool | None = None  # None without a GPU
    runs_here_reason: str = ""


@dataclass(frozen=True)
class MachineFacts:
    """Everything the doctor prints and ``runtime.engine_check`` compares an engine's manifest against."""

    gpu_count: int = 0
    gpu_status: str = ""
    gpu_name: str | None = None
    compute_capability: str | None = None  # "8.7"
    driver_cuda_version: str | None = None  # the CUDA version the driver supports, "12.6"
    driver_version: str | None = None  # the NVIDIA driver, "540.4.0"
    cuda_runtime_version: str | None = None  # cuda-python's CUDA runtime, "13.0"
    tensorrt: str | None = None
    tensorrt_rtx: str | None = None
    tensorrt_lean: str | None = None
    onnxruntime: str | None = None
    onnxruntime_providers: tuple[str, ...] = ()  # as listed by onnxruntime.get_available_providers()
    openvino: str | None = None
    openvino_devices: tuple[str, ...] = ()
    plugin_library: PluginLibraryFacts | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # import failures and other one-line remarks

    @property
    def onnxruntime_usable(self) -> tuple[str, ...]:
        """Listed providers that can actually run here (the GPU ones only with a usable GPU)."""
        return tuple(p for p in self.onnxruntime_providers if self.gpu_count > 0 or p not in GPU_PROVIDERS)


def _cuda_version(v: int) -> str | None:
    """12060 → "12.6"; 0 (no driver) → None."""
    return f"{v // 1000}.{v % 1000 // 10}" if v > 0 else None


def classify_cuda_status(error: int | None = None, exc: BaseException | None = None, *, driver_cuda: int = 0,
                         runtime_cuda: int = 0, error_name: str = "") -> str:
    """``"ok"`` or one line saying why there is no usable GPU.

    ``error`` is the ``cudaError_t`` of ``cudaGetDeviceCount``, ``exc`` an exception raised on the way (an
    ``ImportError`` means no cuda-python; a ``DynamicLibNotFoundError`` means no driver library); ``driver_cuda`` is
    ``cudaDriverGetVersion`` (0 without a driver) and ``runtime_cuda`` ``cudaRuntimeGetVersion``.
    """
    if isinstance(exc, ImportError):
        return f"cuda-python is not installed (pip install cuda-python): cannot query the GPU ({exc})"
    if exc is not None and type(exc).__name__ == "DynamicLibNotFoundError":
        return "no NVIDIA driver: libcuda.so not found (install the NVIDIA driver)"
    if exc is not None:
        return f"cannot query the GPU: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if error == CUDA_SUCCESS:
        return "ok"
    if error == CUDA_ERROR_INSUFFICIENT_DRIVER:
        if driver_cuda <= 0:
            return "no NVIDIA driver: libcuda.so not found (install the NVIDIA driver)"
        return (f"NVIDIA driver too old: it supports CUDA {_cuda_version(driver_cuda)}, cuda-python's runtime is "
                f"CUDA {_cuda_version(runtime_cuda) or '?'} (update the driver, or install a cuda-python matching "
                f"CUDA {_cuda_version(driver_cuda)})")
    if error == CUDA_ERROR_NO_DEVICE:
        return ("no CUDA-capable device: the driver is installed but sees no GPU (check CUDA_VISIBLE_DEVICES and "
                "the container's GPU access)")
    return f"CUDA error {error} ({error_name or 'unknown'})"


def probe_gpu() -> dict[str, Any]:
    """GPU fields of :class:`MachineFacts` from cuda-python's runtime API (device 0 for name and capability)."""
    out: dict[str, Any] = {"gpu_count": 0}
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError as e:
        out["gpu_status"] = classify_cuda_status(exc=e)
        return out
    try:
        _, runtime_cuda = cudart.cudaRuntimeGetVersion()
        _, driver_cuda = cudart.cudaDriverGetVersion()
        out["cuda_runtime_version"] = _cuda_version(int(runtime_cuda or 0))
        out["driver_cuda_version"] = _cuda_version(int(driver_cuda or 0))
        err, n = cudart.cudaGetDeviceCount()
        name = cudart.cudaGetErrorName(err)[1] if int(err) else b""
        out["gpu_status"] = classify_cuda_status(int(err), driver_cuda=int(driver_cuda or 0),
                                                 runtime_cuda=int(runtime_cuda or 0),
                                                 error_name=name.decode() if isinstance(name, bytes) else str(name))
        if int(err) == CUDA_SUCCESS and n:
            err, props = cudart.cudaGetDeviceProperties(0)
            if int(err) == CUDA_SUCCESS:
                raw = props.name
                out["gpu_name"] = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).rstrip("\0")
                out["compute_capability"] = f"{props.major}.{props.minor}"
            out["gpu_count"] = int(n)
    except Exception as e:  # noqa: BLE001 - DynamicLibNotFoundError and anything else the bindings raise
        out["gpu_status"] = classify_cuda_status(exc=e)
    return out


def probe_nvidia_driver() -> str | None:
    """NVIDIA driver version from ``/proc/driver/nvidia/version``, else ``nvidia-smi``; None without a driver."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        m = re.search(r"Kernel Module(?: for \w+)?\s+(\d+(?:\.\d+)+)", text) or re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s",
                                                                                        text)
        if m:
            return m.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=5)
            lines = r.stdout.strip().splitlines()
            if r.returncode == 0 and lines:
                return lines[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def probe_version(module: str, notes: list[str]) -> str | None:
    """``module.__version__`` if it imports (only imports: no runtime is created); an import failure other than
    "not installed" is added to ``notes``."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            notes.append(f"{module} is installed but does not import: {e}")
        return None
    except Exception as e:  # noqa: BLE001 - OSError (missing libnvinfer), RuntimeError, ...
        notes.append(f"{module} is installed but does not import: {type(e).__name__}: {str(e).splitlines()[0]}")
        return None
    return str(getattr(mod, "__version__", "unknown"))


def probe_onnxruntime() -> tuple[str, ...]:
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def probe_openvino(notes: list[str]) -> tuple[str, ...]:
    try:
        import openvino

        return tuple(openvino.Core().available_devices)
    except Exception as e:  # noqa: BLE001 - a broken plugin configuration must not crash the probe
        notes.append(f"OpenVINO cannot list its devices: {type(e).__name__}: {str(e).splitlines()[0]}")
        return ()


def plugin_search_locations() -> tuple[str, ...]:
    """Where :func:`kernels.plugin_library.find_plugin_library` looks, in its order."""
    from kernels import plugin_library as pl

    env = os.environ.get(pl.ENV_VAR)
    dirs = [f"${pl.ENV_VAR}={env}"] if env else []
    return tuple(dirs + [str(d / pl.LIBRARY_NAME) for d in pl._package_dirs() + pl._build_dirs()])  # noqa: SLF001


def _registry_module(tensorrt: str | None, tensorrt_lean: str | None) -> tuple[Any, str]:
    name = "tensorrt" if tensorrt else "tensorrt_lean" if tensorrt_lean else ""
    return (importlib.import_module(name), f"{name} {tensorrt or tensorrt_lean}") if name else (None, "")


def probe_plugin_library(path: str | os.PathLike[str] | None = None, *, compute_capability: str | None = None,
                         tensorrt: str | None = None, tensorrt_lean: str | None = None) -> PluginLibraryFacts:
    """Find (or take) the plugin library, read its device code, load it into a TensorRT plugin registry (full
    TensorRT if installed, else the lean runtime's: both work without a GPU) and look up our creators."""
    from kernels.fatbin import FatbinError, device_code
    from kernels.plugin_library import PLUGIN_NAMESPACE, PLUGIN_VERSION, PLUGINS, find_plugin_library

    searched = (str(path),) if path is not None else plugin_search_locations()
    try:
        found = Path(path) if path is not None else find_plugin_library()
    except FileNotFoundError as e:  # POLYPSEG_PLUGIN_LIBRARY names no file
        return PluginLibraryFacts(None, searched, load_error=str(e))
    if found is None or not found.is_file():
        return PluginLibraryFacts(None, searched, load_error="not found" if found is None else f"{found}: no such file")
    p = str(found.resolve())
    facts: dict[str, Any] = {"sha256": sha256_file(found)}
    try:
        code = device_code(p)
        facts.update(sass=code.sass, ptx=code.ptx)
        if compute_capability:
            facts["runs_here"], facts["runs_here_reason"] = code.runs_on(compute_capability)
    except FatbinError as e:
        facts["device_code_error"] = str(e)
    try:
        trt, facts["registry"] = _registry_module(tensorrt, tensorrt_lean)
    except Exception as e:  # noqa: BLE001 - it imported a moment ago; be defensive anyway
        trt, facts["load_error"] = None, f"cannot import TensorRT: {e}"
    if trt is None:
        facts.setdefault("load_error", "no TensorRT Python package (tensorrt or tensorrt_lean) to load it into")
        return PluginLibraryFacts(p, searched, **facts)
    registry = trt.get_plugin_registry()
    handle = registry.load_library(p)
    if handle is None:
        try:  # the registry logs its reason to TensorRT's logger only; dlopen says why it could not load
            ctypes.CDLL(p)
            facts["load_error"] = f"{facts['registry']}'s plugin registry refused it (see TensorRT's log above)"
        except OSError as e:
            facts["load_error"] = str(e)
        return PluginLibraryFacts(p, searched, loads=False, **facts)
    try:
        facts["creators"] = tuple(n for n in PLUGINS if registry.get_creator(n, PLUGIN_VERSION, PLUGIN_NAMESPACE))
    finally:
        registry.deregister_library(handle)
    return PluginLibraryFacts(p, searched, loads=True, **facts)


def machine_facts(plugin_library: str | os.PathLike[str] | None = None) -> MachineFacts:
    """All probes; never raises (a failing probe becomes a note) and creates no TensorRT runtime or builder."""
    notes: list[str] = []
    gpu = probe_gpu()
    versions = {m: probe_version(m, notes) for m in ("tensorrt", "tensorrt_rtx", "tensorrt_lean", "onnxruntime",
                                                     "openvino")}
    providers: tuple[str, ...] = ()
    if versions["onnxruntime"]:
        try:
            providers = probe_onnxruntime()
        except Exception as e:  # noqa: BLE001
            notes.append(f"ONNX Runtime cannot list its providers: {e}")
    devices = probe_openvino(notes) if versions["openvino"] else ()
    try:
        plugins = probe_plugin_library(plugin_library, compute_capability=gpu.get("compute_capability"),
                                       tensorrt=versions["tensorrt"], tensorrt_lean=versions["tensorrt_lean"])
    except Exception as e:  # noqa: BLE001 - a probe must never take the doctor down
        plugins = PluginLibraryFacts(str(plugin_library) if plugin_library else None, (),
                                     load_error=f"{type(e).__name__}: {e}")
    return MachineFacts(driver_version=probe_nvidia_driver(), onnxruntime_providers=providers,
                        openvino_devices=devices, plugin_library=plugins, notes=tuple(notes), **gpu, **versions)

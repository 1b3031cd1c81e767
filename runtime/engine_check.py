"""Can this machine run that engine? The engine's manifest (written by ``python -m export.trt``) against the machine.

A TensorRT plan is tied to one TensorRT build, one GPU generation and, with plugins, one plugin library; loading a
mismatched plan fails deep inside TensorRT with a message that rarely says which of these is wrong (the most common
complaints of TensorRT deployment users: "plugin not found", engines from another TensorRT version, "no kernel image
is available" on Orin for a library built without sm_87). So the runtime compares the manifest with the machine
*before* it creates a TensorRT runtime, and refuses a mismatch with one line that names the difference and the
command that rebuilds the engine here.

:func:`engine_problems` is a pure function of the manifest and a :class:`runtime.machine.MachineFacts` (any object
with the same attributes), so every refusal is tested on this GPU-less machine with real manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .manifest import Manifest, sha256_file

__all__ = ["FLAVOURS", "RTX_GPUS", "engine_problems", "flavour_module", "product_name"]

#: compute capabilities a default ("any") TensorRT-RTX engine runs on: Ampere and later RTX GPUs; Turing (7.5) only
#: when the engine was built for it explicitly (export.trt --target rtx --compute-capability 7.5)
RTX_GPUS = ("8.0", "8.6", "8.9", "12.0", "12.1")
#: engine flavour (as manifests record it) → (product name, Python module = MachineFacts field, what to install)
FLAVOURS = {
    "tensorrt": ("TensorRT", "tensorrt", "TensorRT 10/11 on the GPU machine (JetPack ships it on Jetson)"),
    "tensorrt-rtx": ("TensorRT-RTX", "tensorrt_rtx", "tensorrt-rtx-cu13"),
}


def product_name(flavour: str) -> str:
    return FLAVOURS[flavour][0] if flavour in FLAVOURS else flavour


def flavour_module(flavour: str) -> str:
    """Python module that loads engines of ``flavour`` (``tensorrt`` or ``tensorrt_rtx``)."""
    return FLAVOURS[flavour][1]


def _cc(v: Any) -> tuple[int, int] | None:
    try:
        major, minor = str(v).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, AttributeError):
        return None


def _major(v: Any) -> int | None:
    try:
        return int(str(v).split(".")[0])
    except ValueError:
        return None


def engine_problems(manifest: Manifest, facts: Any, plugin_libs: Sequence[str | Path] = (),
                    name: str = "the engine") -> list[str]:
    """One line per reason ``manifest``'s engine cannot run on the machine ``facts`` describes; empty = it can.

    ``plugin_libs``: plugin libraries the caller will load (default: the one ``facts.plugin_library`` found)."""
    eng = manifest.engine or {}
    if not eng:
        return [f"{name} has no engine provenance in its manifest (a bare trtexec engine?): rebuild it with "
                f"`python -m export.trt --model {manifest.model} --{manifest.precision}`, which writes one"]
    flavour = eng.get("flavour", "tensorrt")  # manifests before provenance were TensorRT-only
    product = product_name(flavour)
    rebuild = eng.get("rebuild") or f"python -m export.trt --model {manifest.model} --{manifest.precision}"
    fix = f"rebuild it here: {rebuild}"
    problems: list[str] = []

    # 1. the TensorRT that reads this kind of plan, at the exact build that wrote it
    have = getattr(facts, flavour_module(flavour) if flavour in FLAVOURS else "tensorrt", None)
    want = str(eng.get("tensorrt_version", ""))
    other = "tensorrt_rtx" if flavour == "tensorrt" else "tensorrt"
    if flavour not in FLAVOURS:
        problems.append(f"{name} is of an unknown engine flavour {flavour!r}: {fix}")
    elif have is None:
        also = getattr(facts, other, None)
        hint = f" (this machine has {product_name('tensorrt-rtx' if flavour == 'tensorrt' else 'tensorrt')} {also}, " \
               f"which cannot read it)" if also else ""
        problems.append(f"{name} is a {product} {want} engine but {product} is not installed{hint}: install {product} "
                        f"{want}, or {fix}")
    elif want and str(have) != want:
        problems.append(f"{name} was built with {product} {want}, this machine has {product} {have} (plans need the "
                        f"exact build that wrote them): {fix}")

    # 2. a GPU, of the generation the plan was built for
    if not getattr(facts, "gpu_count", 0):
        problems.append(f"{name} needs an NVIDIA GPU, and {getattr(facts, 'gpu_status', 'none is usable here')}: run "
                        "it on the target, or use a CPU backend (openvino, ort) with the ONNX model")
    else:
        here = str(getattr(facts, "compute_capability", "") or "")
        built = str(eng.get("compute_capability", "") or "")
        if flavour == "tensorrt-rtx":
            allowed = RTX_GPUS if built in ("", "any") else tuple(built.split(","))
            if here not in allowed:
                how = (f"rebuild it for this GPU: python -m export.trt --model {manifest.model} --{manifest.precision} "
                       f"--target rtx --compute-capability {here}" if here == "7.5" else
                       f"build a TensorRT engine on it instead (python -m export.trt --model {manifest.model} "
                       f"--{manifest.precision})")
                problems.append(f"{name} is a TensorRT-RTX engine for compute capability {', '.join(allowed)}; this "
                                f"GPU ({getattr(facts, 'gpu_name', '?')}) is {here}: {how}")
        elif built and built != here:
            problems.append(f"{name} was built for a GPU of compute capability {built} ({eng.get('gpu', '?')}), this "
                            f"GPU is {here} ({getattr(facts, 'gpu_name', '?')}): {fix}")
        need_cuda, driver = _major(eng.get("cuda_version", "")), getattr(facts, "driver_cuda_version", None)
        if need_cuda and driver and (_major(driver) or 0) < need_cuda:
            problems.append(f"{name}'s {product} is built on CUDA {eng['cuda_version']}, and this driver supports CUDA "
                            f"up to {driver}: update the NVIDIA driver, or build with a {product} for CUDA "
                            f"{_major(driver)}")

    # 3. the plugin library the plan's plugin layers were built with
    needed = dict(eng.get("plugin_libs") or {})
    if manifest.plugins and not needed:
        needed = {"libpolypseg_trt_plugins.so": {}}
    for lib_name, rec in needed.items():
        problems += _plugin_problems(name, lib_name, rec if isinstance(rec, dict) else {"sha256": rec}, facts,
                                     plugin_libs, fix)
    return problems


def _plugin_problems(name: str, lib_name: str, rec: dict[str, Any], facts: Any, plugin_libs: Sequence[str | Path],
                     fix: str) -> list[str]:
    local = next((Path(p) for p in plugin_libs if Path(p).name == lib_name), None)
    found = getattr(facts, "plugin_library", None)
    if local is None and found is not None and getattr(found, "path", None) and Path(found.path).name == lib_name:
        local = Path(found.path)
    if local is None or not local.is_file():
        return [f"{name} needs the plugin library {lib_name} and it was not found (plugin not found): build it with "
                "`cmake -S kernels -B build/plugins -DTENSORRT_INCLUDE_DIR=<TensorRT include dir> && cmake --build "
                "build/plugins`, or set POLYPSEG_PLUGIN_LIBRARY"]
    want = rec.get("sha256")
    if want and sha256_file(local) != want:
        return [f"{name} was built with another {lib_name} (sha256 {want[:12]}…, this one is "
                f"{sha256_file(local)[:12]}…): {fix}, or use the library it was built with"]
    here = getattr(facts, "compute_capability", None)
    if not (here and getattr(facts, "gpu_count", 0)):
        return []
    try:
        from kernels.fatbin import device_code

        ok, why = device_code(local).runs_on(here)
    except Exception as e:  # noqa: BLE001 - unreadable device code: say so rather than guess
        return [f"cannot read the device code of {local} ({e}): rebuild it"]
    if not ok:
        return [f"{lib_name} has no kernel image for this GPU (sm {here}): {why}"]
    return []

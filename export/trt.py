"""ONNX → TensorRT engine, for TensorRT 10 (Jetson Orin, JetPack 6), TensorRT 11 and TensorRT-RTX: precision comes
from the graph.

Usage::

    python -m export.trt --model msnet --fp16 [--checkpoint CKPT] [--out msnet-fp16.engine] [--plugins]
    python -m export.trt --model msnet_effl0 --fp16 --target rtx --out effl0-fp16-rtx.engine   # any machine

Runs the ONNX steps of :mod:`export.onnx` for the requested precision (FP16 mixed-precision graph, or explicit
Q/DQ INT8 calibrated on real frames), then builds a strongly typed engine: no precision builder flags and no
calibrators (TensorRT 11 has neither), a persistent timing cache, and an engine cache keyed on everything that
changes the plan (graph, weights, calibration, plugin library, TensorRT flavour and exact version, target GPU,
shapes, workspace). Every engine gets a manifest with its provenance (:func:`engine_provenance`), which the
runtime compares with the machine before it deserialises anything (:mod:`runtime.engine_check`).

Targets:

* ``tensorrt`` (default): TensorRT 10/11 on the GPU it will run on (an engine is specific to one GPU model and one
  TensorRT build). Needs a CUDA device: a TensorRT Builder without one crashes the process, so none is created.
* ``rtx``: TensorRT-RTX (``pip install tensorrt-rtx-cu13``), for RTX workstations. It builds ahead of time on any
  machine, CPU-only included; the engine runs on the RTX GPU generations TensorRT-RTX supports. TensorRT-RTX has no
  plugin layers, so deploy graphs (``--plugins``) are TensorRT-only.

Exit status: 0 = engine built (or taken from the cache); 3 = ONNX written but no engine, because this machine has
no CUDA device or no TensorRT (the message says why, what was written and how to build on the target); 1 = error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from common.cli import entry
from common.io import check_destination, write_bytes_atomic, write_json_atomic
from common.paths import cache_root
from runtime.backends.tensorrt import import_flavour, load_plugin_libraries
from runtime.engine_check import product_name
from runtime.errors import BackendUnavailableError
from runtime.manifest import Manifest, manifest_path, sha256_file

from .errors import ExportError
from .onnx import add_args, export_onnx
from .trt_build import build_plan, network_io, parse_onnx, plugin_ops

__all__ = ["EXIT_NO_ENGINE", "TARGETS", "BuildTarget", "build_engine", "engine_cache_key", "engine_provenance",
           "load_plugin_libraries", "main", "network_io", "parse_onnx", "resolve_target", "why_no_engine"]

EXIT_NO_ENGINE = 3
CACHE_DIR = cache_root()
#: bumped when this module changes how a plan is built (invalidates cached engines)
BUILDER_REVISION = 2
#: --target → the engine flavour manifests record (product, module, install: runtime.engine_check.FLAVOURS)
TARGETS: dict[str, str] = {"tensorrt": "tensorrt", "rtx": "tensorrt-rtx"}
#: compute capabilities TensorRT-RTX can target ahead of time ("8.9" → ComputeCapability.SM89)
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


# --------------------------------------------------------------------------------------------- target
@dataclass(frozen=True)
class BuildTarget:
    """What an engine is built with and for."""

    name: str  # --target
    flavour: str  # "tensorrt" | "tensorrt-rtx"
    trt: Any  # the imported tensorrt / tensorrt_rtx module
    version: str
    compute_capability: str  # "8.7", or "any" (TensorRT-RTX ahead of time, no GPU needed)
    gpu: str
    cuda_version: str


def why_no_engine(target: str = "tensorrt") -> str | None:
    """None when an engine for ``target`` can be built here, else the reason (checked without touching TensorRT's
    runtime or builder)."""
    if target not in TARGETS:
        return f"unknown target {target!r} (valid: {', '.join(TARGETS)})"
    if TARGETS[target] == "tensorrt":
        from runtime.cuda import device_status

        n, why = device_status()
        if n == 0:
            return f"no CUDA device ({why})"
    try:
        import_flavour(TARGETS[target])
    except BackendUnavailableError as e:
        return str(e)
    return None


def _cuda_version_of(trt: Any) -> str:
    """CUDA major version the TensorRT package was built for: from its wheel name (``…-cu12``/``…-cu13``), else the
    CUDA runtime cuda-python reports (JetPack's Debian packages have no wheel name), else ``"unknown"``."""
    from importlib import metadata

    root = trt.__name__.split(".")[0]
    for dist in metadata.packages_distributions().get(root, []):
        for part in reversed(dist.replace("_", "-").split("-")):
            if part.startswith("cu") and part[2:].isdigit():
                return part[2:]
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        err, v = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            return f"{v // 1000}.{v % 1000 // 10}"
    except Exception:  # noqa: BLE001
        pass
    return "unknown"


def resolve_target(target: str = "tensorrt", compute_capabilities: Sequence[str] = ()) -> BuildTarget:
    """Import the target's TensorRT and describe what it builds for; raises :class:`BackendUnavailableError` with
    the reason when it cannot build here (for ``tensorrt``: never without a CUDA device)."""
    if target not in TARGETS:
        raise ExportError(f"unknown --target {target!r}; valid: {', '.join(TARGETS)}")
    flavour = TARGETS[target]
    if flavour == "tensorrt":
        from runtime.cuda import compute_capability, device_name, require_device

        if compute_capabilities:
            raise ExportError("--compute-capability is for --target rtx; a TensorRT engine is built for the GPU "
                              "it is built on")
        require_device()  # never create a Builder without a device: it crashes the process
        trt = import_flavour(TARGETS[target])
        return BuildTarget(target, flavour, trt, trt.__version__, "{}.{}".format(*compute_capability()),
                           device_name(), _cuda_version_of(trt))
    bad = [c for c in compute_capabilities if c not in RTX_COMPUTE_CAPABILITIES]
    if bad:
        raise ExportError(f"--compute-capability {bad[0]} is not a TensorRT-RTX target; valid: "
                          f"{', '.join(RTX_COMPUTE_CAPABILITIES)}")
    trt = import_flavour(TARGETS[target])
    cc = ",".join(sorted(set(compute_capabilities), key=lambda c: tuple(map(int, c.split("."))))) or "any"
    return BuildTarget(target, flavour, trt, trt.__version__, cc, "any RTX GPU (ahead of time)" if cc == "any"
                       else f"RTX GPUs of compute capability {cc}", _cuda_version_of(trt))


# --------------------------------------------------------------------------------------------- keys, provenance
def engine_cache_key(*parts: Any) -> str:
    """Short stable hash of everything that changes a plan's bytes."""
    blob = json.dumps([BUILDER_REVISION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def calibration_hash(manifest: Manifest) -> str:
    """Hash of the INT8 calibration that produced the graph's scales (``""`` for FP32/FP16 graphs)."""
    if manifest.precision != "int8":
        return ""
    cfg = manifest.export_config
    keys = ("calib_data", "calib_split", "calib_count", "calib_method", "exclude_nodes", "calibration")
    return hashlib.sha256(json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True, default=str).encode()).hexdigest()


def _plugin_record(path: Path) -> dict[str, Any]:
    """sha256 and device code (SASS architectures, PTX) of a plugin library, read from the file itself."""
    rec: dict[str, Any] = {"path": str(path), "sha256": sha256_file(path), "sass": [], "ptx": []}
    try:
        from kernels.fatbin import device_code

        code = device_code(path)
        rec["sass"], rec["ptx"] = list(code.sass), list(code.ptx)
    except Exception as e:  # noqa: BLE001 - a library we cannot read is recorded as such, never guessed
        rec["device_code_error"] = f"{type(e).__name__}: {e}"
    return rec


def engine_provenance(manifest: Manifest, target: BuildTarget, plugin_libs: Sequence[Path]) -> dict[str, Any]:
    """What the runtime compares with the machine before loading (flavour, exact version, GPU, CUDA, inputs)."""
    return {
        "flavour": target.flavour, "tensorrt_version": target.version, "compute_capability": target.compute_capability,
        "gpu": target.gpu, "cuda_version": target.cuda_version, "onnx_sha256": manifest.onnx_sha256,
        "weights_sha256": manifest.checkpoint_sha256 or "untrained", "calibration_hash": calibration_hash(manifest),
        "plugin_libs": {Path(p).name: _plugin_record(Path(p)) for p in plugin_libs},
    }


def rebuild_command(manifest: Manifest, target: str, out: Path, compute_capability: str = "any",
                    workspace_mb: int = 1024) -> str:
    """The command that builds this engine again: same model, weights, size, calibration and target."""
    import shlex

    prec, cfg = manifest.precision, manifest.export_config
    q = shlex.quote
    parts = ["python -m export.trt", f"--model {manifest.model}", f"--{prec}"]
    if manifest.checkpoint:
        parts.append(f"--checkpoint {q(manifest.checkpoint)}")
    if list(manifest.input_hw) != list(_native_hw(manifest.model) or manifest.input_hw):
        parts.append(f"--input-size {manifest.input_hw[0]} {manifest.input_hw[1]}")
    if manifest.dynamic_batch:
        parts.append("--dynamic-batch")
    if prec == "int8":  # the same calibration, so the same scales (the calibration hash in the manifest)
        for opt, key in (("--calib-data", "calib_data"), ("--calib-split", "calib_split")):
            if cfg.get(key):
                parts.append(f"{opt} {q(str(cfg[key]))}")
        if cfg.get("calib_count"):
            parts.append(f"--calib-count {cfg['calib_count']}")
        if cfg.get("calib_method"):
            parts.append(f"--calib-method {cfg['calib_method']}")
        if cfg.get("exclude_nodes"):
            parts.append("--exclude-nodes " + " ".join(q(n) for n in cfg["exclude_nodes"]))
    if manifest.plugins:
        parts.append("--plugins")
    if target != "tensorrt":
        parts.append(f"--target {target}")
    for cc in ([] if compute_capability == "any" or target == "tensorrt" else compute_capability.split(",")):
        parts.append(f"--compute-capability {cc}")
    if workspace_mb != 1024:
        parts.append(f"--workspace-mb {workspace_mb}")
    parts.append(f"--out {q(str(out))}")
    return " ".join(parts)


def _native_hw(model: str) -> list[int] | None:
    try:
        from training import get_spec

        return list(get_spec(model).input_hw)
    except Exception:  # noqa: BLE001
        return None


def _cached_plan(entry: Path, log: Callable[[str], None]) -> tuple[bytes, list[dict[str, Any]]] | None:
    """A cache entry whose bytes still match the hash recorded beside them; a damaged one is dropped."""
    meta_path = entry.with_suffix(".json")
    if not (entry.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        data = entry.read_bytes()
        if hashlib.sha256(data).hexdigest() == meta["sha256"]:
            return data, meta["io"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log(f"warning: cached engine {entry.name} is damaged; rebuilding it")
    entry.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    return None


def build_engine(
    onnx_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    manifest: Manifest,
    plugin_libs: Sequence[str | os.PathLike[str]] = (),
    workspace_mb: int = 1024,
    log: Callable[[str], None] = print,
    *,
    target: str = "tensorrt",
    compute_capabilities: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Build (or fetch from the engine cache) an engine of ``onnx_path`` for ``target``; writes ``out`` and its
    manifest (the ONNX manifest plus :func:`engine_provenance`) atomically, and verifies what it wrote."""
    onnx_path, out = Path(onnx_path), Path(out)
    libs = [Path(p) for p in plugin_libs]
    bt = resolve_target(target, compute_capabilities)
    product = product_name(TARGETS[target])
    ops = plugin_ops(onnx_path)
    if ops and bt.flavour == "tensorrt-rtx":
        raise ExportError(f"{onnx_path.name} has plugin nodes ({', '.join(ops)}); TensorRT-RTX cannot host custom "
                          "plugins: build the reference graph (without --plugins) for --target rtx")
    if ops and not libs:
        raise ExportError(f"{onnx_path.name} has plugin nodes ({', '.join(ops)}) but no plugin library was given: "
                          f"{PLUGIN_BUILD_HINT}")
    prov = engine_provenance(manifest, bt, libs)
    key_prov = {**prov, "plugin_libs": {n: r["sha256"] for n, r in prov["plugin_libs"].items()}}
    shapes = f"1x{manifest.in_channels}x{manifest.input_hw[0]}x{manifest.input_hw[1]}"
    key = engine_cache_key(sha256_file(onnx_path), key_prov, manifest.precision, shapes, manifest.dynamic_batch,
                           workspace_mb)
    entry = CACHE_DIR / "engines" / f"{key}.engine"
    t0 = time.perf_counter()
    hit = _cached_plan(entry, log)
    if hit is not None:
        log(f"engine cache hit: {entry}")
        data, io = hit
    else:
        data, io = build_plan(onnx_path, manifest, bt, product, libs, workspace_mb, CACHE_DIR / "timing", progress,
                              log)
        write_bytes_atomic(entry, data)
        write_json_atomic(entry.with_suffix(".json"), {"sha256": hashlib.sha256(data).hexdigest(), "io": io})
    digest = hashlib.sha256(data).hexdigest()
    write_bytes_atomic(out, data)
    if sha256_file(out) != digest:
        out.unlink(missing_ok=True)
        raise ExportError(f"{out} does not read back as written (disk full or failing?); nothing kept")
    manifest.engine = {
        **prov, "cache_key": key, "shapes": shapes, "dynamic_batch": manifest.dynamic_batch, "io": io,
        "onnx": onnx_path.name, "engine_sha256": digest, "engine_bytes": len(data), "cache_hit": hit is not None,
        "build_s": round(time.perf_counter() - t0, 2), "rebuild": rebuild_command(manifest, target, out, bt.compute_capability, workspace_mb),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        manifest.save(manifest_path(out))
    except BaseException:
        out.unlink(missing_ok=True)  # an engine without its manifest cannot be loaded: keep neither
        raise
    log(f"{product} engine: {out} ({len(data) / 2**20:.1f} MB, {manifest.precision}, key {key})")
    return out


# --------------------------------------------------------------------------------------------- CLI
PLUGIN_BUILD_HINT = ("build it with `cmake -S kernels -B build/plugins -DTENSORRT_INCLUDE_DIR=<dir with NvInfer.h> && "
                     "cmake --build build/plugins` (or set POLYPSEG_PLUGIN_LIBRARY to the .so)")


def _plugin_libs(args) -> list[Path]:
    """--plugin-lib paths, else (with --plugins) the library found by kernels.plugin_library."""
    libs = [Path(p) for p in args.plugin_lib]
    for p in libs:
        if not p.is_file():
            raise ExportError(f"--plugin-lib {str(p)!r} does not exist")
    if args.plugins and not libs:
        from kernels.plugin_library import find_plugin_library

        found = find_plugin_library()
        libs = [found] if found else []
    return libs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.trt", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    for prec in ("fp32", "fp16", "int8"):
        g.add_argument(f"--{prec}", dest="precision", action="store_const", const=prec, help=f"{prec} engine")
    add_args(p)
    p.add_argument("--target", choices=tuple(TARGETS), default="tensorrt",
                   help="tensorrt: TensorRT 10/11 on this GPU (default); rtx: TensorRT-RTX, built ahead of time on "
                        "any machine for RTX GPUs")
    p.add_argument("--compute-capability", action="append", default=[], metavar="X.Y",
                   help=f"--target rtx: GPU generations to build for (repeatable; {', '.join(RTX_COMPUTE_CAPABILITIES)}"
                        "; default: any)")
    p.add_argument("--out", help="engine path (default: artifacts/<model>-<precision>[-rtx].engine)")
    p.add_argument("--plugin-lib", action="append", default=[], help="plugin shared library to load for the build")
    p.add_argument("--workspace-mb", type=int, default=1024)
    return p


def _check_destination(out: Path) -> None:
    """Refuse a destination that cannot be written before any long work starts."""
    why = check_destination(out, (".engine", ".plan"))
    if why:
        raise ExportError(f"--out {why}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    suffix = "" if args.target == "tensorrt" else f"-{args.target}"
    out = Path(args.out or f"artifacts/{args.model}-{args.precision}{suffix}.engine")
    onnx_path = out.with_suffix(".onnx")
    _check_destination(out)
    if args.workspace_mb < 1:
        raise ExportError(f"--workspace-mb must be at least 1, got {args.workspace_mb}")
    if args.plugins and args.target == "rtx":
        raise ExportError("--plugins with --target rtx: TensorRT-RTX cannot host custom plugins; drop --plugins "
                          "(the reference graph runs the same blocks as standard layers)")
    manifest = export_onnx(args.model, onnx_path, checkpoint=args.checkpoint, precision=args.precision,
                           input_hw=args.input_size, dynamic_batch=args.dynamic_batch, calib_data=args.calib_data,
                           calib_split=args.calib_split, calib_count=args.calib_count,
                           calib_method=args.calib_method, int8_flavour="qdq-s8",
                           exclude_nodes=args.exclude_nodes, plugins=args.plugins, parity_gate=args.parity_gate,
                           progress=args.progress)
    plugin_libs = _plugin_libs(args)
    if plugin_libs:
        manifest.export_config["plugin_libs"] = {str(p): sha256_file(p) for p in plugin_libs}
        manifest.save(manifest_path(onnx_path))
    why = why_no_engine(args.target)
    if why:
        where = ("On the target (Jetson Orin with JetPack 6 / TensorRT 10, or a TensorRT 11 GPU machine) run"
                 if args.target == "tensorrt" else "After `pip install tensorrt-rtx-cu13` (any machine) run")
        print(
            f"ONNX written: {onnx_path} + {manifest_path(onnx_path).name} ({manifest.precision}, precision carried "
            f"in the graph). No engine built: {why}. {where}: {rebuild_command(manifest, args.target, out)} — it "
            "writes the engine manifest the runtime checks before loading (a bare trtexec engine has none)",
            file=sys.stderr,
        )
        return EXIT_NO_ENGINE
    if args.plugins and not plugin_libs:
        raise ExportError(f"--plugins: the plugin library is not built; {PLUGIN_BUILD_HINT}, or pass --plugin-lib PATH")
    build_engine(onnx_path, out, manifest, plugin_libs, args.workspace_mb, target=args.target,
                 compute_capabilities=args.compute_capability, progress=args.progress)
    print(f"engine success ✅ saved as {out} ({out.stat().st_size / 2**20:.1f} MB) + {manifest_path(out).name}")
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

"""ONNX → TensorRT engine for TensorRT 10 (Jetson Orin, JetPack 6) and 11: precision comes from the graph.

Usage::

    python -m export.trt --model msnet --fp16 [--checkpoint CKPT] [--out msnet-fp16.engine] [--plugins]

Runs the ONNX steps of :mod:`export.onnx` for the requested precision (FP16 mixed-precision graph, or explicit
Q/DQ INT8 calibrated on real frames), then builds a strongly typed engine with the TensorRT Python API: no
precision builder flags and no calibrators (TensorRT 11 has neither), a persistent timing cache, and an engine
cache keyed on ONNX hash + plugin library hash + TensorRT version + GPU compute capability + precision + shapes.

Exit status: 0 = engine built (or taken from the cache); 3 = ONNX written but no engine, because this machine has
no CUDA device or no TensorRT (the message says what was written and how to build on the target); 1 = error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from runtime.errors import BackendUnavailableError
from runtime.manifest import Manifest, manifest_path, sha256_file

from .errors import ExportError
from .onnx import add_args, export_onnx

__all__ = ["EXIT_NO_ENGINE", "build_engine", "engine_cache_key", "main"]

EXIT_NO_ENGINE = 3
CACHE_DIR = Path(os.environ.get("POLYPSEG_CACHE", Path.home() / ".cache" / "polypseg"))


def engine_cache_key(onnx_sha: str, plugin_sha: str, trt_version: str, cc: str, precision: str, shapes: str) -> str:
    blob = json.dumps([onnx_sha, plugin_sha, trt_version, cc, precision, shapes]).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _why_no_engine() -> str | None:
    """None when an engine can be built here, else the reason (checked without touching TensorRT's runtime)."""
    from runtime.cuda import cuda_device_count

    if cuda_device_count() == 0:
        return "no CUDA device on this machine"
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"TensorRT is not importable ({type(e).__name__})"
    return None


def build_engine(
    onnx_path: Path, out: Path, manifest: Manifest, plugin_libs: Sequence[str] = (), workspace_mb: int = 1024, log=print
) -> Path:
    """Build (or fetch from the cache) a strongly typed engine for ``onnx_path``; writes ``out`` and its manifest."""
    from runtime.cuda import compute_capability, device_name, require_device

    require_device()  # never create a Builder without a device: it crashes the process
    import tensorrt as trt  # type: ignore[import-not-found]

    cc = "{}.{}".format(*compute_capability())
    plugin_hashes = {str(p): sha256_file(p) for p in plugin_libs}
    shapes = f"1x{manifest.in_channels}x{manifest.input_hw[0]}x{manifest.input_hw[1]}"
    key = engine_cache_key(manifest.onnx_sha256, ",".join(sorted(plugin_hashes.values())), trt.__version__, cc,
                           manifest.precision, shapes)
    cache = CACHE_DIR / "engines" / f"{key}.engine"
    t0 = time.perf_counter()
    if cache.is_file():
        log(f"engine cache hit: {cache}")
    else:
        logger = trt.Logger(trt.Logger.WARNING)
        registry = trt.get_plugin_registry()
        for p in plugin_libs:
            registry.load_library(str(p))
        builder = trt.Builder(logger)
        flags = 0
        major = int(trt.__version__.split(".")[0])
        if major < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # always on in TensorRT 11
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        tc_path = CACHE_DIR / "timing" / f"trt{trt.__version__}-sm{cc.replace('.', '')}.cache"
        timing = config.create_timing_cache(tc_path.read_bytes() if tc_path.is_file() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _Progress(trt, log)
        if manifest.dynamic_batch:
            prof = builder.create_optimization_profile()
            c, h, w = manifest.in_channels, *manifest.input_hw
            prof.set_shape(manifest.input_name, (1, c, h, w), (1, c, h, w), (8, c, h, w))
            config.add_optimization_profile(prof)
        log(f"building TensorRT {trt.__version__} engine for {device_name()} (sm {cc}), {manifest.precision} …")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError("TensorRT engine build failed (see the TensorRT log above)")
        tc_path.parent.mkdir(parents=True, exist_ok=True)
        tc_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(bytes(plan))
        os.replace(tmp, cache)
    tmp_out = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(cache, tmp_out)
    os.replace(tmp_out, out)
    manifest.engine = {
        "tensorrt_version": trt.__version__, "compute_capability": cc, "gpu": device_name(), "cache_key": key,
        "plugin_libs": plugin_hashes, "shapes": shapes, "onnx": str(onnx_path), "engine_sha256": sha256_file(out),
        "build_s": round(time.perf_counter() - t0, 1), "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.save(manifest_path(out))
    return out


class _Progress:
    """Prints TensorRT build phases (a long silent build is a known pain point)."""

    def __new__(cls, trt, log):
        class Monitor(trt.IProgressMonitor):
            def __init__(self):
                trt.IProgressMonitor.__init__(self)
                self._t = time.perf_counter()

            def phase_start(self, phase_name, parent_phase, num_steps):
                log(f"  [{time.perf_counter() - self._t:6.1f}s] {phase_name} ({num_steps} steps)")

            def step_complete(self, phase_name, step):
                return True

            def phase_finish(self, phase_name):
                pass

        return Monitor()


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
    p.add_argument("--out", help="engine path (default: artifacts/<model>-<precision>.engine)")
    p.add_argument("--plugin-lib", action="append", default=[], help="plugin shared library to load for the build")
    p.add_argument("--workspace-mb", type=int, default=1024)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"artifacts/{args.model}-{args.precision}.engine")
    onnx_path = out.with_suffix(".onnx")
    try:
        if out.suffix not in (".engine", ".plan"):
            raise ExportError(f"--out must end in .engine or .plan, got {str(out)!r}")
        manifest = export_onnx(args.model, onnx_path, checkpoint=args.checkpoint, precision=args.precision,
                               input_hw=args.input_size, dynamic_batch=args.dynamic_batch, calib_data=args.calib_data,
                               calib_split=args.calib_split, calib_count=args.calib_count,
                               calib_method=args.calib_method, int8_flavour="qdq-s8",
                               exclude_nodes=args.exclude_nodes, plugins=args.plugins, progress=args.progress)
        plugin_libs = _plugin_libs(args)
        if plugin_libs:
            manifest.export_config["plugin_libs"] = {str(p): sha256_file(p) for p in plugin_libs}
            manifest.save(manifest_path(onnx_path))
        why = _why_no_engine()
        if why:
            print(
                f"ONNX written: {onnx_path} + {manifest_path(onnx_path).name} ({manifest.precision}, precision carried "
                f"in the graph). No engine built: {why}. On the target (Jetson Orin with JetPack 6 / TensorRT 10, or a "
                f"TensorRT 11 GPU machine) run: python -m export.trt --model {args.model} --{args.precision} "
                f"{'--plugins ' if args.plugins else ''}--out {out.name}   (or: trtexec --onnx={onnx_path.name} "
                f"--saveEngine={out.name}{' --dynamicPlugins=libpolypseg_trt_plugins.so' if args.plugins else ''}; "
                "no precision flags needed)",
                file=sys.stderr,
            )
            return EXIT_NO_ENGINE
        if args.plugins and not plugin_libs:
            raise ExportError(f"--plugins: the plugin library is not built; {PLUGIN_BUILD_HINT}, or pass --plugin-lib PATH")
        build_engine(onnx_path, out, manifest, plugin_libs, args.workspace_mb)
        print(f"engine success ✅ saved as {out} ({out.stat().st_size / 2**20:.1f} MB) + {manifest_path(out).name}")
    except (ExportError, BackendUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from runtime.errors import cli_warnings

    cli_warnings()
    raise SystemExit(main())

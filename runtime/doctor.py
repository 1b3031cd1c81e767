"""What can run on this machine, and why not: the one command to run on a target box.

Usage::

    python -m runtime.doctor                                   # the table: GPU, driver, runtimes, plugin library
    python -m runtime.doctor --model artifacts/msnet_effl0.onnx     # + which backends here can run this model
    python -m runtime.doctor --model model.engine --plugin-lib libpolypseg_trt_plugins.so
    python -m runtime.doctor --require gpu --require trt --json doctor.json

The table shows the GPU (or exactly why there is none: no cuda-python, no NVIDIA driver, a driver too old for
cuda-python's CUDA runtime, no device), the NVIDIA driver and the CUDA versions, TensorRT / TensorRT-RTX / TensorRT
lean, ONNX Runtime (providers that work here versus providers only listed: onnxruntime-gpu lists the CUDA and
TensorRT providers even where they cannot load) and OpenVINO devices, and the TensorRT plugin library: where it was
found (or everywhere it was looked for), whether it loads into TensorRT's plugin registry with our three creators,
the SASS and PTX it carries (read from the file by :mod:`kernels.fatbin`) and whether that covers this GPU.

``--model PATH``:

* an ONNX file (with its ``X.manifest.json``): ONNX Runtime and OpenVINO are tried on the CPU (a session is created,
  nothing is run); a deploy graph with plugin nodes (``manifest.plugins``, or nodes named like our plugins) runs
  only on TensorRT with the plugin library, and TensorRT needs a GPU;
* a TensorRT engine (``.engine``/``.plan`` with ``X.engine.manifest.json``): checked by
  ``runtime.engine_check.engine_problems`` (TensorRT flavour and version, GPU, CUDA, plugin libraries).

``--require gpu|trt|plugins|ort|openvino`` (repeatable) makes a missing capability an error: ``gpu`` a usable CUDA
device; ``trt`` that plus a TensorRT the backend loads engines with (``tensorrt`` or ``tensorrt_rtx``);
``plugins`` the plugin library found, loading with all three creators and carrying a kernel image for this GPU (when there is one); ``ort`` /
``openvino`` the CPU runtime.

Exit status: 0 when everything requested can work here (without ``--model`` or ``--require``, always 0: the table
shows what is missing); 2 when the model cannot run on any backend here or a requirement is not met; 1 for a usage
error (missing model file, unreadable manifest), printed as one line on stderr. ``--json FILE`` writes the facts,
the model verdict and the requirement results (atomically).

Never creates a TensorRT runtime or builder (:mod:`runtime.machine`) and never imports torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from common.cli import entry

from .errors import RuntimeInputError
from .machine import MachineFacts, machine_facts
from .manifest import Manifest, write_json_atomic

__all__ = ["REQUIREMENTS", "check_engine", "check_onnx", "main", "report", "requirement_problems"]

REQUIREMENTS = ("gpu", "trt", "plugins", "ort", "openvino")
ENGINE_SUFFIXES = (".engine", ".plan")


def _v(version: str | None, missing: str = "not installed") -> str:
    return version or missing


def plugin_problems(f: MachineFacts) -> list[str]:
    """Why the plugin library cannot serve TensorRT here (empty: it can)."""
    from kernels.plugin_library import PLUGINS

    lib = f.plugin_library
    if lib is None or lib.path is None:
        return [f"plugin library not found ({lib.load_error if lib else 'not searched'}): build it with "
                "TENSORRT_INCLUDE_DIR=… pip install -e . or pass --plugin-lib"]
    out = []
    if lib.loads is False:
        out.append(f"plugin library does not load: {lib.load_error}")
    elif lib.loads is None:
        out.append(f"plugin library not loaded: {lib.load_error}")
    elif missing := [n for n in PLUGINS if n not in lib.creators]:
        out.append(f"plugin library lacks the creators {', '.join(missing)}")
    if lib.device_code_error:
        out.append(f"plugin library device code unreadable: {lib.device_code_error}")
    if lib.runs_here is False:
        out.append(f"plugin library has no kernels for this GPU: {lib.runs_here_reason}")
    return out


def requirement_problems(req: str, f: MachineFacts) -> list[str]:
    """One line per unmet part of a ``--require`` item."""
    gpu = [] if f.gpu_count > 0 else [f"no GPU: {f.gpu_status}"]
    if req == "gpu":
        return gpu
    if req == "trt":
        trt = [] if f.tensorrt or f.tensorrt_rtx else [
            "no TensorRT runtime the TensorRT backend loads (tensorrt, or tensorrt-rtx-cu13 on an RTX GPU)"]
        return gpu + trt
    if req == "plugins":
        return plugin_problems(f)
    if req == "ort":
        return [] if "CPUExecutionProvider" in f.onnxruntime_providers else ["ONNX Runtime is not installed"]
    if req == "openvino":
        return [] if "CPU" in f.openvino_devices else [
            "OpenVINO is not installed" if not f.openvino else "OpenVINO has no CPU device"]
    raise ValueError(f"unknown requirement {req!r}")


def _plugin_nodes(path: Path, manifest: Manifest) -> Counter[str]:
    """Plugin op types of the graph (from the ONNX file when the onnx package is present, else the manifest)."""
    from kernels.plugin_library import PLUGINS

    counts: Counter[str] = Counter()
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        counts.update(n.op_type for n in graph.node if n.op_type in PLUGINS)
    for p in manifest.plugins:
        counts[p.get("name", "?")] = max(counts[p.get("name", "?")], int(p.get("count", 1)))
    return counts


def _try_onnxruntime(path: Path) -> str:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the reason is the verdict
        return f"ONNX Runtime cannot load it: {str(e).strip().splitlines()[0]}"
    return ""


def _try_openvino(path: Path) -> str:
    import openvino as ov

    try:
        ov.Core().compile_model(str(path), "CPU")
    except Exception as e:  # noqa: BLE001
        return f"OpenVINO cannot compile it: {str(e).strip().splitlines()[0]}"
    return ""


def check_onnx(path: Path, manifest: Manifest, f: MachineFacts) -> dict[str, str]:
    """Backend → "" (can run it here) or why not."""
    plugins = _plugin_nodes(path, manifest)
    gpu = "" if f.gpu_count > 0 else f"needs a GPU, and here there is none: {f.gpu_status}"
    if plugins:
        nodes = ", ".join(f"{n} ×{c}" for n, c in sorted(plugins.items()))
        cpu = f"deploy graph with TensorRT plugin nodes ({nodes}): TensorRT only"
        trt = [gpu] if gpu else []
        trt += [] if f.tensorrt else ["needs the tensorrt package to build an engine"]
        trt += plugin_problems(f)
        return {"onnxruntime": cpu, "openvino": cpu, "tensorrt": "; ".join(trt)}
    out = {
        "onnxruntime": _try_onnxruntime(path) if f.onnxruntime else "ONNX Runtime is not installed",
        "openvino": (_try_openvino(path) if "CPU" in f.openvino_devices else
                     "OpenVINO is not installed" if not f.openvino else "OpenVINO has no CPU device"),
        "tensorrt": "; ".join(p for p in (gpu, "" if f.tensorrt else "tensorrt is not installed") if p),
    }
    if f.tensorrt_rtx:
        out["tensorrt-rtx"] = gpu and f"builds engines here, but running them {gpu}"
    return out


def check_engine(path: Path, manifest: Manifest, f: MachineFacts, plugin_libs: Sequence[str]) -> list[str]:
    """One line per reason the engine cannot run here (empty: it can)."""
    from .engine_check import engine_problems

    return list(engine_problems(manifest, f, plugin_libs=tuple(plugin_libs), name=path.name))


def report(f: MachineFacts) -> list[str]:
    """The facts as aligned ``label  value`` lines."""
    rows: list[tuple[str, str]] = []
    if f.gpu_count:
        rows.append(("GPU", f"{f.gpu_name} (compute capability {f.compute_capability})"
                            + (f", {f.gpu_count} devices" if f.gpu_count > 1 else "")))
    else:
        rows.append(("GPU", f"none: {f.gpu_status}"))
    rows.append(("NVIDIA driver", f"{_v(f.driver_version, 'not found')}"
                                  + (f" (supports CUDA {f.driver_cuda_version})" if f.driver_cuda_version else "")))
    rows.append(("CUDA runtime", f"{_v(f.cuda_runtime_version, 'cuda-python not installed')} (cuda-python)"))
    rows.append(("TensorRT", _v(f.tensorrt)))
    rtx = " (builds engines without a GPU; runs them on an RTX GPU)" if f.tensorrt_rtx else ""
    rows.append(("TensorRT-RTX", _v(f.tensorrt_rtx) + rtx))
    rows.append(("TensorRT lean", _v(f.tensorrt_lean) + (" (runs engines; no ONNX parser or builder)"
                                                        if f.tensorrt_lean else "")))
    if f.onnxruntime:
        listed_only = [p for p in f.onnxruntime_providers if p not in f.onnxruntime_usable]
        rows.append(("ONNX Runtime", f"{f.onnxruntime}: works here: {', '.join(f.onnxruntime_usable) or 'none'}"
                     + (f"; listed but cannot load without a GPU: {', '.join(listed_only)}" if listed_only else "")))
    else:
        rows.append(("ONNX Runtime", "not installed"))
    rows.append(("OpenVINO", f"{f.openvino.split('-')[0]}: devices {', '.join(f.openvino_devices) or 'none'}" if f.openvino
                 else "not installed"))
    lib = f.plugin_library
    if lib is None or lib.path is None:
        rows.append(("plugin library", f"not found ({lib.load_error if lib else '?'})"))
        rows += [("  searched", s) for s in (lib.searched if lib else ())]
    else:
        rows.append(("plugin library", lib.path))
        rows.append(("  sha256", lib.sha256[:16] + "…"))
        loads = ("yes" if lib.loads else "NO" if lib.loads is False else "not checked") + (
            f" ({lib.registry})" if lib.registry else "") + (f": {lib.load_error}" if lib.load_error else "")
        rows.append(("  loads", loads))
        if lib.loads:
            rows.append(("  creators", ", ".join(lib.creators) or "none of ours"))
        rows.append(("  SASS", ", ".join(lib.sass) or lib.device_code_error or "none"))
        rows.append(("  PTX", ", ".join(lib.ptx) or "none"))
        here = ("unknown (no GPU)" if lib.runs_here is None else
                ("yes: " if lib.runs_here else "NO: ") + lib.runs_here_reason)
        rows.append(("  this GPU", here))
    rows += [("note", n) for n in f.notes]
    width = max(len(k) for k, _ in rows) + 2
    return [f"{k:<{width}}{v}" for k, v in rows]


def _facts_dict(f: MachineFacts) -> dict[str, Any]:
    return {**asdict(f), "onnxruntime_usable": list(f.onnxruntime_usable)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.doctor", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="an ONNX file or a TensorRT engine (with its manifest) to check")
    p.add_argument("--plugin-lib", help="the TensorRT plugin library to check (default: the one found)")
    p.add_argument("--require", action="append", choices=REQUIREMENTS, default=[],
                   help="exit 2 unless this works here (repeatable)")
    p.add_argument("--json", help="write the facts and verdicts to this JSON file")
    args = p.parse_args(argv)
    try:
        model = Path(args.model) if args.model else None
        if model is not None and not model.is_file():
            raise RuntimeInputError(f"--model {args.model!r}: no such file")
        if args.plugin_lib and not Path(args.plugin_lib).is_file():
            raise RuntimeInputError(f"--plugin-lib {args.plugin_lib!r}: no such file")
        manifest = Manifest.load(model) if model is not None else None
        if model is not None:
            manifest.check_matches(model)
    except RuntimeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    facts = machine_facts(args.plugin_lib)
    print("\n".join(report(facts)))
    verdict: dict[str, Any] = {}
    failed = False
    if model is not None:
        if model.suffix in ENGINE_SUFFIXES:
            libs = [args.plugin_lib] if args.plugin_lib else [
                facts.plugin_library.path] if facts.plugin_library and facts.plugin_library.path else []
            problems = check_engine(model, manifest, facts, libs)
            verdict = {"kind": "engine", "path": str(model), "problems": problems}
            print(f"\nengine {model.name}: " + ("can run here" if not problems else "cannot run here"))
            print("\n".join(f"  - {line}" for line in problems))
            failed = bool(problems)
        else:
            backends = check_onnx(model, manifest, facts)
            verdict = {"kind": "onnx", "path": str(model), "backends": backends}
            print(f"\nmodel {model.name} ({manifest.model}, {manifest.precision}):")
            width = max(map(len, backends)) + 2
            print("\n".join(f"  {b:<{width}}{'yes' if not why else 'no: ' + why}" for b, why in backends.items()))
            usable = [b for b, why in backends.items() if not why]
            print("  -> runs here on " + ", ".join(usable) if usable else "  -> no backend on this machine runs it")
            failed = not usable
    required = {r: requirement_problems(r, facts) for r in dict.fromkeys(args.require)}
    for r, problems in required.items():
        print(f"require {r}: " + ("ok" if not problems else "MISSING: " + "; ".join(problems)))
        failed |= bool(problems)
    code = 2 if failed else 0
    if args.json:
        write_json_atomic(args.json, {"facts": _facts_dict(facts), "model": verdict or None, "required": required,
                                      "exit_code": code})
    return code


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

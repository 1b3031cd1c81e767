"""Where the time goes: a per-layer profile of an exported model on a CPU backend, and the rate its convolutions run at.

Usage::

    python -m runtime.profile artifacts/bench/msnet-352x352-int8-qdq-s8.onnx [--backend openvino|ort] [--threads 2]
        [--rounds 20] [--top 12] [--no-reference] [--json OUT]

Prints the median latency, the time per executed op type and kernel, the slowest layers, and for the convolutions
their multiply-accumulates (counted from the ONNX graph), the rate they ran at (GMAC/s), and the rate the same backend
reaches on a large dense 3×3 convolution of the same precision (256→256 channels on 56×56, built in memory): the
best case to hold the model's convolutions against. Timings are medians over ``--rounds`` inferences of a fixed
input (dense kernels do not depend on the values). Torch-free, like the rest of the runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.cli import entry
from common.io import check_destination

from .errors import BackendUnavailableError, RuntimeInputError
from .manifest import Manifest, manifest_path, write_json_atomic

__all__ = ["conv_macs", "main", "profile_model", "reference_conv_rate"]

CONV_TYPES = ("Convolution", "Conv", "QLinearConv", "FusedConv", "GroupConvolution")


def conv_macs(onnx_path: str | os.PathLike[str]) -> dict[str, int]:
    """Multiply-accumulates of every Conv node of the graph (ONNX node name → MACs), from shape inference."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes: dict[str, list[int]] = {i.name: list(i.dims) for i in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    out = {}
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        w, y = shapes.get(n.input[1]), shapes.get(n.output[0])
        if not w or not y or len(w) != 4 or len(y) != 4:
            continue
        out[n.name or n.output[0]] = int(np.prod(y) * np.prod(w[1:]))  # N·Cout·H·W × (Cin/groups)·kh·kw
    return out


def _open(backend: str, path: Path, threads: int | None):
    if backend == "openvino":
        from .backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, threads, perf_count=True).open()
    if backend == "ort":
        from .backends.onnxruntime import OrtBackend

        return OrtBackend(path, "cpu", threads, profile=True).open()
    raise RuntimeInputError(f"profile: backend must be 'openvino' or 'ort', got {backend!r}")


def profile_model(path: str | os.PathLike[str], backend: str = "openvino", threads: int | None = None,
                  rounds: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Latency and per-layer times (ms, mean over ``rounds``) of one model on one backend."""
    import time

    path = Path(path)
    be = _open(backend, path, threads)
    spec = be.input_spec()
    shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.dtype(spec.dtype))
    for _ in range(warmup):
        be.infer(x, check=False)
    lat, layers = [], defaultdict(lambda: {"ms": 0.0})
    for _ in range(rounds):
        t = time.perf_counter()
        be.infer(x, check=False)
        lat.append((time.perf_counter() - t) * 1e3)
        if backend == "openvino":
            for r in be.layer_profile():
                d = layers[r["name"]]
                d.update({k: r[k] for k in ("name", "type", "kernel")})
                d["ms"] += r["ms"] / rounds
    if backend == "ort":
        for r in be.layer_profile(skip_runs=warmup):
            layers[r["name"]] = r
    be.close()
    return {"model": str(path), "backend": backend, "threads": threads, "rounds": rounds,
            "latency_ms": {"p50": float(np.median(lat)), "p90": float(np.percentile(lat, 90))},
            "layers": sorted(layers.values(), key=lambda d: -d["ms"])}


def _dense_conv_model(path: Path, int8: bool, c: int = 256, hw: int = 56, n: int = 4) -> int:
    """A chain of ``n`` 3×3 convolutions c→c on hw×hw (Q/DQ uint8 × int8, or float); returns MACs per conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # uint8 activations (what AVX-512 VNNI and ONNX Runtime's int8 kernels multiply natively), int8 weights
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sa"),
             numpy_helper.from_array(np.array(0, np.uint8), "za")]
    nodes, prev = [], "x"
    for i in range(n):
        w = rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.02
        inits.append(numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}"))
        if int8:
            inits += [numpy_helper.from_array(np.clip(np.round(w / 4e-4), -127, 127).astype(np.int8), f"wq{i}"),
                      numpy_helper.from_array(np.full(c, 4e-4, np.float32), f"ws{i}"),
                      numpy_helper.from_array(np.zeros(c, np.int8), f"wz{i}")]
            nodes += [helper.make_node("QuantizeLinear", [prev, "sa", "za"], [f"q{i}"]),
                      helper.make_node("DequantizeLinear", [f"q{i}", "sa", "za"], [f"d{i}"]),
                      helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", f"wz{i}"], [f"w{i}"], axis=0)]
            xin = f"d{i}"
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            xin = prev
        nodes += [helper.make_node("Conv", [xin, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    if int8:  # quantise the last output too, or ONNX Runtime runs the last convolution as a float FusedConv
        nodes += [helper.make_node("QuantizeLinear", [prev, "sa", "za"], ["qout"]),
                  helper.make_node("DequantizeLinear", ["qout", "sa", "za"], ["out"])]
        prev = "out"
    graph = helper.make_graph(nodes, "dense_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, c, hw, hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime / OpenVINO we support
    onnx.save(model, str(path))
    return c * c * 9 * hw * hw


def reference_conv_rate(backend: str = "openvino", threads: int | None = None, int8: bool = True,
                        rounds: int = 20) -> float:
    """GMAC/s the backend reaches on dense 3×3 convolutions 256→256 on 56×56 (uint8×int8 Q/DQ or float32)."""
    with tempfile.TemporaryDirectory(prefix="polypseg-refconv-") as d:
        p = Path(d) / "dense.onnx"
        macs = _dense_conv_model(p, int8)
        prof = profile_model(p, backend, threads, rounds)
    conv_ms = [r["ms"] for r in prof["layers"] if r["type"] in CONV_TYPES]
    # the first convolution also reads the float input: take the typical one
    return macs / (float(np.median(conv_ms)) * 1e-3) / 1e9 if conv_ms else float("nan")


def _print(prof: dict[str, Any], macs: dict[str, int], ref: float | None, top: int) -> dict[str, Any]:
    layers = prof["layers"]
    total = sum(r["ms"] for r in layers)
    print(f"{Path(prof['model']).name} on {prof['backend']} ({prof['threads'] or 'all'} threads): "
          f"{prof['latency_ms']['p50']:.1f} ms median latency over {prof['rounds']} runs "
          f"(layers sum to {total:.1f} ms)")
    by = defaultdict(lambda: [0.0, 0])
    for r in layers:
        by[(r["type"], r["kernel"])][0] += r["ms"]
        by[(r["type"], r["kernel"])][1] += 1
    print(f"\n{'op type':<22}{'kernel':<28}{'ms':>8}{'%':>7}{'n':>6}")
    for (t, k), (ms, n) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        if ms >= 0.005:
            print(f"{t:<22}{k[:27]:<28}{ms:8.2f}{100 * ms / total:7.1f}{n:6d}")
    print(f"\nslowest {top} layers:")
    for r in layers[:top]:
        print(f"{r['ms']:8.2f} ms  {r['type']:<14} {r['kernel'][:24]:<25} {r['name'][:80]}")
    conv_ms = sum(r["ms"] for r in layers if r["type"] in CONV_TYPES)
    gmac = sum(macs.values()) / 1e9
    summary = {"latency_ms": prof["latency_ms"], "layers_ms": total, "conv_ms": conv_ms, "conv_gmac": gmac,
               "conv_gmac_per_s": gmac / (conv_ms * 1e-3) if conv_ms else None, "reference_gmac_per_s": ref,
               "by_type": [{"type": t, "kernel": k, "ms": ms, "n": n} for (t, k), (ms, n) in by.items()]}
    if conv_ms:
        print(f"\nconvolutions: {gmac:.2f} GMAC in {conv_ms:.1f} ms ({100 * conv_ms / total:.0f} % of the layer time) "
              f"→ {summary['conv_gmac_per_s']:.0f} GMAC/s")
    if ref and conv_ms:
        best = gmac / ref * 1e3
        summary["conv_ms_at_reference_rate"] = best
        print(f"reference: this backend runs a dense 3×3 convolution 256→256 on 56×56 of the same precision at "
              f"{ref:.0f} GMAC/s; at that rate the convolutions would take {best:.1f} ms, the rest "
              f"{total - conv_ms:.1f} ms → {best + total - conv_ms:.1f} ms per frame")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.profile", description=__doc__.split("\n")[0])
    p.add_argument("model", help="an exported .onnx (its manifest beside it tells the precision)")
    p.add_argument("--backend", choices=("openvino", "ort"), default=None,
                   help="default: OpenVINO when installed, else ONNX Runtime")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--top", type=int, default=12, help="slowest layers to list")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the dense-convolution reference rate")
    p.add_argument("--json", help="write the profile and summary here")
    args = p.parse_args(argv)
    path = Path(args.model)
    try:
        if args.json and (why := check_destination(args.json, (".json",))):
            raise RuntimeInputError(f"--json: {why}")
        if args.rounds < 1:
            raise RuntimeInputError(f"--rounds must be at least 1, got {args.rounds}")
        if not path.is_file():
            raise RuntimeInputError(f"model file {str(path)!r} does not exist")
        if path.suffix != ".onnx":
            raise RuntimeInputError(f"{path.name}: runtime.profile profiles ONNX files on CPU backends "
                                    "(profile TensorRT engines with trtexec --dumpProfile)")
        if args.backend is None:
            from .backends.openvino import openvino_available

            args.backend = "openvino" if openvino_available() else "ort"
        mp = manifest_path(path)
        int8 = Manifest.load(mp).precision == "int8" if mp.is_file() else False
        prof = profile_model(path, args.backend, args.threads, args.rounds)
        ref = reference_conv_rate(args.backend, args.threads, int8, args.rounds) if args.reference else None
    except (RuntimeInputError, BackendUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = _print(prof, conv_macs(path), ref, args.top)
    if args.json:
        write_json_atomic(args.json, {**prof, "summary": summary})
        print(f"wrote {args.json}")
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

"""Speed on paper — a PREDICTION, not a measurement: DRAM bytes and FLOPs of the three fused ops against the ONNX
subgraphs they replace, for every op instance of every model at its native input size, and the time a roofline
predicts for them on a Jetson AGX Orin 64GB and an H100 SXM. No GPU has run these kernels.

Usage::

    python -m export.roofline [--model msnet m2snet msnet_effl0 m2snet_effl0 msga] [--dtype float32 float16]
                               [--totals] [--json OUT]

Element size s = 4 (float32 I/O) or 2 (float16 I/O); batch 1; C = 64 everywhere in these models.

**Fused kernels** (what ``*_kernel.cuh`` does):

* DRAM bytes are *ideal*: every input read once, the output written once, parameters once (M2SNet's folded BN,
  16·C bytes, float32 in both dtypes). MultiScaleSubtraction reads A through 4 bilinear taps per output element and
  M2SNet's blocks re-read a 2-pixel halo of A and B: we assume those re-reads hit L1/L2 (neighbouring threads share
  taps; A is ≤ 1/4 of B). PositionAttention's blocks each stream all of K and V: we assume K and V stay in L2 (per
  image (D + C)·N·s ≈ 1.2 MB float32 at msga's size, against 4 MB of L2 on Orin and 50 MB on H100) and report the
  L2 traffic separately (``l2_bytes``): ⌈N/kQ⌉ query blocks × ⌈C/kCh⌉ channel passes × (D·N of K) + ⌈N/kQ⌉ × C·N of V,
  plus Q, X and the output once (kQ = 64, kCh = 16). ChannelAttention's C blocks (one per row) each stream X twice
  (row of E, then A·X): l2_bytes = C·(2·C·N + 2·N)·s.
* FLOPs (FMA = 2, exp = 1, compare/max/abs = 1): MultiScaleSubtraction 11 per output element (3 lerps + |a − b|), M2SNet
  +18 (4 BN FMAs, 4 ReLU, 2 |·−·|, 2 adds) plus the staging of channel sums over tile + halo (11·C per staged pixel)
  and 68 adds per thread for the 3×3 and 5×5 box sums; PositionAttention N²·(⌈C/16⌉·(2D + 7) + 3C) (the scores are
  recomputed for each 16-channel pass; online softmax 7; acc·corr + w·v = 3 per channel) + 3·C·N + N·⌈C/16⌉;
  ChannelAttention 4·C²·N + 4·C² + 3·C·N + 254·C (two C×C×N products, row min, exp, sum, tree reductions).
* None of the kernels uses tensor cores (plain FP32 FMAs on CUDA cores, float32 accumulation also for float16 I/O),
  so their FLOP roof is the CUDA-core FP32 peak in both dtypes.

**Unfused subgraphs** (the nodes each plugin node replaces in the graph ``python -m export.onnx`` writes today,
checked node by node against a real export in ``tests/kernels/test_roofline.py``): every node reads its inputs
from DRAM and writes its output (TensorRT's own pointwise fusion would remove some of this traffic); Reshape is a
view (0 bytes). MSNet: [Resize] → Sub → Abs. M2SNet adds, per unit, ReduceSum over channels of up(A) and of B (shared
by both scales), then per scale k ∈ {3, 5} and side: AveragePool k×k, Mul k², Expand to C channels,
BatchNormalization, Relu; per scale Sub, Abs; two Adds. PositionAttention (its three 1×1 convolutions stay outside
the plugin): Reshape ×3, Transpose Q, MatMul QᵀK (N×N), Softmax (N×N in and out), Transpose (N×N), MatMul V·Aᵀ,
Reshape, Mul gamma, Add X. ChannelAttention: Reshape, Transpose, MatMul X·Xᵀ, ReduceMax, Sub, Softmax, MatMul A·X,
Reshape, Mul, Add. Their FLOPs: 1 per output element for Sub/Abs/Add/Mul/Relu, 9 for Resize, k² + 1 for AveragePool,
2 for BatchNormalization, 5 for Softmax, 1 per input element for ReduceSum/ReduceMax, 2·M·N·K for MatMul, none for
Transpose/Expand/Reshape/Cast. float16: the FP16 graph (``export.precision.to_fp16``) keeps Softmax, ReduceSum, ReduceMax and
BatchNormalization in float32 with a Cast on each side (counted: Cast reads 2 and writes 4 bytes per element or
back); nodes the converter keeps in float32 because of their values on real frames are not modelled (so the FP16
unfused bytes are a lower bound).

**Prediction** (``predict``): fused time = max(bytes / (0.7 · DRAM bandwidth), FLOPs / CUDA-core FP32 peak), one
kernel per instance; unfused time = Σ over nodes of max(bytes / (0.7 · bandwidth), FLOPs / peak), one kernel per node,
peak = dense tensor-core peak for MatMul (TF32 / FP16, what TensorRT uses), the CUDA-core peak of the node's dtype
otherwise; no launch overheads anywhere. ``fused_us_lane_capped`` also caps the FLOP rate by the launch's parallelism
(threads launched / CUDA cores, when below 1): PositionAttention launches B·⌈N/64⌉·64 threads, which cannot fill an
H100. Model totals are sums over instances.

Shapes come from one forward pass of each registered model on torch's ``meta`` device, with hooks (torch is
imported only in :func:`instances`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from common.cli import entry
from common.io import write_json_atomic

from .roofline_count import (  # noqa: F401 - the counting half, re-exported: export.roofline is the one entry point
    CAM_THREADS,
    DEFAULT_MODELS,
    DTYPES,
    FP32_OP_TYPES,
    MSS_HALO,
    MSS_TILE,
    OPS,
    PAM_KCH,
    PAM_KQ,
    Count,
    Fused,
    Instance,
    Kernel,
    Node,
    Subgraph,
    count,
    fused,
    instances,
    unfused_kernels,
    unfused_nodes,
)

__all__ = [
    "BANDWIDTH_EFFICIENCY", "DEFAULT_MODELS", "DEVICES", "FP32_OP_TYPES", "PREDICTION", "Count", "Device", "Fused",
    "Instance", "Kernel", "Node", "Subgraph", "count", "format_table", "fused", "instances", "main", "predict", "rows",
    "totals", "unfused_kernels", "unfused_nodes",
]

PREDICTION = ("PREDICTION from DRAM byte and FLOP counts (roofline at 70 % of peak bandwidth); "
              "no GPU has run these kernels")


# ============================================================================ device constants (PREDICTION inputs)
@dataclass(frozen=True)
class Device:
    name: str
    dram_gbps: float  # peak DRAM bandwidth, GB/s
    fp32_tflops: float  # CUDA-core (non-tensor) FP32 FMA peak
    fp16_tflops: float  # CUDA-core (non-tensor) FP16 (half2) peak
    tf32_tc_tflops: float  # dense tensor-core TF32 peak (unfused MatMul nodes only)
    fp16_tc_tflops: float  # dense tensor-core FP16 peak (unfused MatMul nodes only)
    cuda_cores: int
    l2_mb: float
    source: str


DEVICES: dict[str, Device] = {
    "orin": Device(
        "Jetson AGX Orin 64GB", 204.8, 2048 * 2 * 1.3e9 / 1e12, 2 * 2048 * 2 * 1.3e9 / 1e12, 21.25, 42.5, 2048, 4.0,
        "NVIDIA Jetson AGX Orin series data sheet / technical brief: 256-bit LPDDR5 204.8 GB/s; GPU 16 SMs × 128 = "
        "2048 CUDA cores at 1.3 GHz max → 2048 × 2 FLOP × 1.3 GHz = 5.3 TFLOP/s FP32; 4 MB L2; 64 tensor cores, "
        "170 sparse INT8 TOPS. Assumed: FP16 on CUDA cores 2× FP32 (half2); dense tensor FP16 = 170/2/2 = 42.5, "
        "TF32 half of that (Ampere ratios)."),
    "h100": Device(
        "H100 SXM", 3350.0, 67.0, 134.0, 494.7, 989.4, 16896, 50.0,
        "NVIDIA H100 SXM data sheet: HBM3 3.35 TB/s; FP32 67 TFLOP/s (CUDA cores); TF32 / FP16 tensor 989 / 1979 "
        "TFLOP/s with sparsity → 494.7 / 989.4 dense; Hopper white paper: 132 SMs × 128 = 16896 FP32 cores, FP16 "
        "non-tensor 133.8 (≈ 2× FP32), 50 MB L2."),
}
BANDWIDTH_EFFICIENCY = 0.70  # achievable fraction of peak DRAM bandwidth (assumption: typical STREAM-like share)


# ============================================================================ prediction
def predict(c: Count, device: str) -> dict[str, float]:
    """Predicted microseconds on ``device`` (a PREDICTION, see the module docstring): ``fused_us``,
    ``fused_us_lane_capped``, ``unfused_us``, ``unfused_memory_bound`` (1.0 if every unfused node is memory-bound)."""
    dev = DEVICES[device]
    bw = dev.dram_gbps * 1e9 * BANDWIDTH_EFFICIENCY
    fp32 = dev.fp32_tflops * 1e12
    lanes = min(1.0, c.threads / dev.cuda_cores)
    peak = {"fp32": dev.fp32_tflops, "fp16": dev.fp16_tflops, "tf32_tc": dev.tf32_tc_tflops,
            "fp16_tc": dev.fp16_tc_tflops}
    unfused, bound = 0.0, True
    for k in c.kernels:
        t_mem, t_math = k.bytes / bw, k.flops / (peak[k.unit] * 1e12)
        unfused += max(t_mem, t_math)
        bound &= t_mem >= t_math
    return {"fused_us": 1e6 * max(c.fused_bytes / bw, c.fused_flops / fp32),
            "fused_us_lane_capped": 1e6 * max(c.fused_bytes / bw, c.fused_flops / (fp32 * lanes)),
            "unfused_us": 1e6 * unfused, "unfused_memory_bound": float(bound)}


def rows(models: Sequence[str], dtypes: Sequence[str] = tuple(DTYPES)) -> list[dict[str, Any]]:
    """One row per (instance, dtype) with counts and predictions."""
    out = []
    for name in models:
        for inst in instances(name):
            for dt in dtypes:
                c = count(inst, DTYPES[dt])
                row: dict[str, Any] = {"model": inst.model, "op": inst.op, "block": inst.block,
                                       "shape": dict(inst.shape), "label": inst.label(), "dtype": dt}
                row.update({k: v for k, v in asdict(c).items() if k != "kernels"})
                row["unfused_nodes"] = [k.op_type for k in c.kernels]
                for dev in DEVICES:
                    row[dev] = predict(c, dev)
                out.append(row)
    return out


_SUMMED = ("fused_bytes", "unfused_bytes", "fused_flops", "unfused_flops", "l2_bytes")


def _sum(rs: list[dict[str, Any]], **key: Any) -> dict[str, Any]:
    t: dict[str, Any] = dict(key, n=len(rs))
    for k in _SUMMED:
        t[k] = sum(r[k] for r in rs)
    for dev in DEVICES:
        t[dev] = {k: sum(r[dev][k] for r in rs) for k in ("fused_us", "fused_us_lane_capped", "unfused_us")}
    return t


def totals(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sums per (model, op, dtype) and, for models with several ops, per (model, "all", dtype)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rs:
        groups.setdefault((r["model"], r["op"], r["dtype"]), []).append(r)
    out = [_sum(v, model=m, op=op, dtype=dt) for (m, op, dt), v in groups.items()]
    for m in dict.fromkeys(r["model"] for r in rs):
        if len({r["op"] for r in rs if r["model"] == m}) > 1:
            for dt in dict.fromkeys(r["dtype"] for r in rs):
                out.append(_sum([r for r in rs if r["model"] == m and r["dtype"] == dt], model=m, op="all", dtype=dt))
    return out


# ============================================================================ table
_SHORT = {"MultiScaleSubtraction": "MSS", "PositionAttention": "PAM", "ChannelAttention": "CAM", "all": "all"}
_HEAD = (f"{'model':<13}{'op':<4}{'n':>3}  {'instance shape':<24}{'dtype':<8}{'MB fused':>9}{'MB unfused':>11}"
         f"{'x':>6}{'GFLOP':>8}{'L2 MB':>8}{'Orin us fused/unfused':>23}{'H100 us fused/unfused':>23}")


def _line(model: str, op: str, n: int, label: str, r: dict[str, Any]) -> str:
    l2 = f"{r['l2_bytes'] / 1e6:8.1f}" if r["l2_bytes"] else f"{'-':>8}"
    cells = "".join(f"{r[d]['fused_us']:>12.1f} /{r[d]['unfused_us']:>9.1f}" for d in DEVICES)
    return (f"{model:<13}{_SHORT[op]:<4}{n:>3}  {label:<24}{r['dtype'].replace('float', 'fp'):<8}"
            f"{r['fused_bytes'] / 1e6:>9.2f}{r['unfused_bytes'] / 1e6:>11.2f}"
            f"{r['unfused_bytes'] / r['fused_bytes']:>6.1f}{r['fused_flops'] / 1e9:>8.3f}{l2}{cells}")


def format_table(rs: list[dict[str, Any]], only_totals: bool = False) -> str:
    lines = [f"{PREDICTION}.", "fused = max(bytes/(0.7 BW), FLOPs/CUDA-core FP32 peak); unfused = sum over ONNX nodes "
             "of max(bytes/(0.7 BW), FLOPs/peak); GFLOP = fused kernel; L2 MB = fused kernel's L2 traffic.",
             *(f"{d.name}: {d.dram_gbps:g} GB/s, FP32 {d.fp32_tflops:.1f} TFLOP/s" for d in DEVICES.values()), "",
             _HEAD]
    tots = totals(rs)
    for model in dict.fromkeys(r["model"] for r in rs):
        for dt in dict.fromkeys(r["dtype"] for r in rs):
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for r in rs:
                if r["model"] == model and r["dtype"] == dt:
                    groups.setdefault((r["op"], r["label"]), []).append(r)
            if not only_totals:  # identical instances on one line
                for (op, label), g in groups.items():
                    lines.append(_line(model, op, len(g), label, _sum(g, dtype=dt)))
            for t in tots:  # (an op total equal to its only shape line is left out)
                if t["model"] == model and t["dtype"] == dt and (
                        only_totals or t["op"] == "all" or sum(op == t["op"] for op, _ in groups) > 1):
                    lines.append(_line(model, t["op"], t["n"], "TOTAL", t))
            if not only_totals:
                lines.append("")
    capped = [(t, d) for t in tots for d in DEVICES if t[d]["fused_us_lane_capped"] > 1.05 * t[d]["fused_us"]]
    if capped:
        lines.append("Launches with fewer threads than CUDA cores: fused total at FP32 peak × threads / cores (one FMA "
                     "per thread and cycle at best; --json fused_us_lane_capped):")
        for t, d in capped:
            lines.append(f"  {t['model']} {_SHORT[t['op']]} {t['dtype']} on {DEVICES[d].name}: "
                         f"{t[d]['fused_us']:.1f} -> {t[d]['fused_us_lane_capped']:.1f} us")
    compute = sorted({(r["model"], _SHORT[r["op"]], d) for r in rs for d in DEVICES
                      if not r[d]["unfused_memory_bound"]})
    lines.append("Unfused nodes: all memory-bound at these peaks." if not compute else
                 "Unfused instances with a compute-bound node: " + ", ".join(f"{m} {o} ({d})" for m, o, d in compute))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.roofline",
                                description="Fused vs unfused bytes/FLOPs and PREDICTED Orin/H100 times")
    p.add_argument("--model", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--totals", action="store_true", help="only the per-model totals")
    p.add_argument("--json", help="write instances, totals and assumptions to this file")
    args = p.parse_args(argv)
    try:
        rs = rows(args.model, args.dtype)
    except (KeyError, ValueError) as e:  # unknown model, or one without fused ops
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rs, args.totals))
    if args.json:  # atomically: a temporary file renamed over the target
        doc = {"prediction": PREDICTION,
               "assumptions": {"bandwidth_efficiency": BANDWIDTH_EFFICIENCY,
                               "devices": {k: asdict(v) for k, v in DEVICES.items()},
                               "fp16_graph_float32_ops": list(FP32_OP_TYPES),
                               "counting_rules": __doc__},
               "instances": rs, "totals": totals(rs)}
        write_json_atomic(args.json, doc)
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

"""Speed on paper: DRAM bytes and FLOPs of the fused ops against the unfused ONNX subgraphs they replace, at the
models' native sizes, and a *predicted* time on Jetson AGX Orin and H100 from those counts.

Usage::

    python -m kernels.roofline [--model msnet msnet_effl0 m2snet msga] [--dtype float32 float16] [--json OUT]

Counting rules (element size s = 4 or 2 bytes):

* fused kernels read every input once and write the output once (ideal DRAM traffic: bilinear taps, halos and the
  key/value tiles of PositionAttention are assumed to hit L1/L2; PositionAttention's L2 traffic — every query block
  streams all of K and V — is reported separately); FLOPs follow the kernel source, including M2SNet's per-pixel box
  sums of the channel sums;
* unfused subgraphs are the exported ONNX ops (``Resize → Sub → Abs`` and M2SNet's ReduceSum/AveragePool/Mul/Expand/
  BatchNormalization/Relu/Sub/Abs/Add; DANet's Reshape/Transpose/MatMul/Softmax/ReduceMax/Sub/Mul/Add): each op reads
  its inputs from DRAM and writes its output, as it does when TensorRT cannot fuse across it.

Prediction (a PREDICTION, not a measurement — no GPU has run these kernels): fused time = max(bytes / (70 % of the
DRAM bandwidth), FLOPs / CUDA-core FP32 peak) (the kernels use CUDA cores and accumulate in float32); unfused time =
bytes / (70 % of the bandwidth) only, i.e. a lower bound that ignores launch overheads and assumes the MatMuls run at
tensor-core speed. Shapes are taken from a real forward pass of each registered model (torch is imported only for
that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

__all__ = ["DEVICES", "Instance", "count", "instances", "main", "predict_us"]

# name: (DRAM bandwidth GB/s, FP32 CUDA-core peak TFLOP/s, source)
DEVICES = {
    "Jetson AGX Orin 64GB": (204.8, 5.3, "LPDDR5 204.8 GB/s; 2048 CUDA cores × 2 FLOP × 1.3 GHz"),
    "H100 SXM": (3350.0, 67.0, "HBM3 3.35 TB/s; 67 TFLOP/s FP32 (non-tensor) datasheet"),
}
BANDWIDTH_EFFICIENCY = 0.7


@dataclass
class Instance:
    op: str
    model: str
    block: str
    shape: dict[str, int]


@dataclass
class Count:
    fused_bytes: float
    unfused_bytes: float
    flops: float
    l2_bytes: float = 0.0


def count(inst: Instance, s: int) -> Count:
    """Bytes (element size ``s``) and FLOPs of one op instance, fused and unfused."""
    d = inst.shape
    if inst.op == "MultiScaleSubtraction":
        n, c, h, w, H, W, scales = d["N"], d["C"], d["h"], d["w"], d["H"], d["W"], d["scales"]
        a, x = n * c * h * w, n * c * H * W  # elements of A and of the output
        px = n * H * W
        fused = s * (a + 2 * x) + (16 * c if scales else 0)
        flops = 10.0 * x  # bilinear tap blend (8) + sub + abs
        # unfused MSNet: Resize (A → U), Sub (U, B → S), Abs (S → D); identity-size units have no Resize
        unfused = s * ((a + x if (h, w) != (H, W) else 0) + 3 * x + 2 * x)
        if scales:
            flops += 2.0 * c * px  # channel sums of up(A) and B
            flops += 2 * (9 + 25) * px * 1.0  # k×k box sums of both sums, k = 3, 5
            flops += 2 * 7.0 * x  # per scale and channel: 2 FMA, 2 ReLU, sub, abs, add
            per_side = 2 * (px + px) + 2 * (px + px) + (px + x) + 2 * x + 2 * x  # AvgPool, Mul, Expand, BN, Relu
            unfused += s * (2 * (x + px) + 2 * (2 * per_side + 3 * x + 2 * x + 3 * x))  # ReduceSum ×2; 2 scales
        return Count(fused, unfused, flops)
    b, c, nn = d["B"], d["C"], d["N"]
    if inst.op == "PositionAttention":
        dq = d["D"]
        fused = s * (2 * b * dq * nn + 3 * b * c * nn)
        passes = -(-c // 16)  # the kernel recomputes the scores for every 16-channel chunk (kCh) of V
        flops = 2.0 * b * nn * nn * (dq * passes + c) + 5.0 * b * nn * nn * passes
        l2 = s * b * (nn / 64) * nn * (dq * passes + c)  # each 64-query block streams all keys (per pass) and values
        nsq = b * nn * nn
        unfused = s * (2 * (2 * b * dq * nn)  # reshape/transpose copies of Q (and K)
                       + (2 * b * dq * nn + nsq)  # MatMul Qᵀ·K → N×N energies
                       + 2 * nsq  # Softmax
                       + 2 * nsq  # Transpose of the attention
                       + (b * c * nn + nsq + b * c * nn)  # MatMul V·Aᵀ
                       + 2 * b * c * nn + 3 * b * c * nn)  # Mul gamma, Add x
        return Count(fused, unfused, flops, l2)
    if inst.op == "ChannelAttention":
        fused = s * 2 * b * c * nn
        flops = 4.0 * b * c * c * nn + 5.0 * b * c * c
        csq = b * c * c
        unfused = s * (2 * b * c * nn  # transpose copy of X
                       + (2 * b * c * nn + csq)  # MatMul X·Xᵀ
                       + (csq + b * c) + (csq + b * c + csq)  # ReduceMax, Sub
                       + 2 * csq  # Softmax
                       + (csq + b * c * nn + b * c * nn)  # MatMul A·X
                       + 2 * b * c * nn + 3 * b * c * nn)  # Mul gamma, Add x
        return Count(fused, unfused, flops)
    raise ValueError(f"unknown op {inst.op!r}")


def predict_us(c: Count, device: str) -> tuple[float, float]:
    """(fused, unfused) predicted microseconds on ``device`` — a prediction, see the module docstring."""
    bw, peak, _ = DEVICES[device]
    bw_b = bw * 1e9 * BANDWIDTH_EFFICIENCY
    fused = max(c.fused_bytes / bw_b, c.flops / (peak * 1e12))
    return fused * 1e6, c.unfused_bytes / bw_b * 1e6


def instances(model_name: str) -> list[Instance]:
    """Every fused-op instance of a registered model at its native input size, from one real forward pass."""
    import torch

    import training
    from training.models.msga import ChannelAttention, PositionAttention
    from training.models.msnet import MSNet

    model = training.create_model(model_name).eval()
    h, w = model.spec.input_hw
    found: list[Instance] = []
    hooks = []
    if isinstance(model, MSNet):
        scales = 2 if model.multiscale else 0
        orig = model._su

        def su(name, a, b):
            found.append(Instance("MultiScaleSubtraction", model_name, name, {
                "N": a.shape[0], "C": a.shape[1], "h": a.shape[2], "w": a.shape[3], "H": b.shape[2],
                "W": b.shape[3], "scales": scales}))
            return orig(name, a, b)

        model._su = su
    for qual, mod in model.named_modules():
        if isinstance(mod, (PositionAttention, ChannelAttention)):
            def hook(m, args, out, qual=qual):
                x = args[0]
                shape = {"B": x.shape[0], "C": x.shape[1], "N": x.shape[2] * x.shape[3]}
                if isinstance(m, PositionAttention):
                    shape["D"] = m.query_conv.out_channels
                found.append(Instance(type(m).__name__, model_name, qual, shape))
            hooks.append(mod.register_forward_hook(hook))
    with torch.inference_mode():
        model(torch.zeros(1, model.spec.in_channels, h, w))
    for hk in hooks:
        hk.remove()
    return found


def table(models: Sequence[str], dtypes: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        for inst in instances(name):
            for dt in dtypes:
                c = count(inst, 2 if dt == "float16" else 4)
                row = {**asdict(inst), "dtype": dt, **asdict(c)}
                for dev in DEVICES:
                    f, u = predict_us(c, dev)
                    row[f"{dev} fused_us"], row[f"{dev} unfused_us"] = f, u
                rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.roofline", description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", default=["msnet", "m2snet", "msnet_effl0", "msga"])
    p.add_argument("--dtype", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    p.add_argument("--per-instance", action="store_true", help="one line per op instance (default: per model)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = table(args.model, args.dtype)
    devs = list(DEVICES)
    print("PREDICTION (no GPU measurement): fused = max(bytes/(0.7·BW), FLOPs/FP32 peak); unfused = bytes/(0.7·BW)")
    print(f"{'model':<13}{'op':<22}{'n':>3}{'dtype':>8}{'MB fused':>10}{'MB unfused':>11}{'ratio':>7}{'GFLOP':>8}"
          + "".join(f"{d.split()[0] + ' µs f/u':>22}" for d in devs))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["model"], r["op"], r["dtype"]) + ((r["block"],) if args.per_instance else ())
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        fb = sum(r["fused_bytes"] for r in rs) / 1e6
        ub = sum(r["unfused_bytes"] for r in rs) / 1e6
        gf = sum(r["flops"] for r in rs) / 1e9
        cells = "".join(f"{sum(r[d + ' fused_us'] for r in rs):>10.1f} / {sum(r[d + ' unfused_us'] for r in rs):<9.1f}"
                        for d in devs)
        label = key[1] + (f" {key[3]}" if args.per_instance else "")
        print(f"{key[0]:<13}{label:<22}{len(rs):>3}{key[2]:>8}{fb:>10.2f}{ub:>11.2f}{ub / fb:>7.1f}{gf:>8.2f}{cells}")
    if args.json:  # atomically: a temporary file renamed over the target
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

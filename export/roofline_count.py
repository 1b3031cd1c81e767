"""Counting for :mod:`export.roofline`: the fused-op instances of the registered models, and the DRAM bytes and
FLOPs of each instance as one fused kernel and as the unfused ONNX subgraph it replaces. The counting rules are
written out in the docstring of :mod:`export.roofline` (the CLI's JSON carries them); this module only counts — the
devices, the prediction and the table live there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kernels.kernel_constants import kernel_constants

__all__ = [
    "CAM_THREADS", "DEFAULT_MODELS", "DTYPES", "FP32_OP_TYPES", "MSS_HALO", "MSS_TILE", "OPS", "PAM_KCH", "PAM_KQ",
    "Count", "Fused", "Instance", "Kernel", "Node", "Subgraph", "count", "fused", "instances", "unfused_kernels",
    "unfused_nodes",
]

# ops the FP16 graph keeps in float32 (copy of export.precision.FP32_OP_TYPES; a test keeps them equal)
FP32_OP_TYPES = (
    "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceSumSquare",
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization",
    "Exp", "Log", "Pow", "Sqrt", "Erf", "Range",
)

DEFAULT_MODELS = ("msnet", "m2snet", "msnet_effl0", "m2snet_effl0", "msga")
DTYPES = {"float32": 4, "float16": 2}
OPS = ("MultiScaleSubtraction", "PositionAttention", "ChannelAttention")

# kernel launch constants, read from their one definition in kernels/*/*_kernel.cuh (square MSS tiles)
MSS_TILE, MSS_HALO = kernel_constants("mss")["kTileX"], kernel_constants("mss")["kHalo"]
PAM_KQ, PAM_KCH = kernel_constants("pam")["kQ"], kernel_constants("pam")["kCh"]
CAM_THREADS = kernel_constants("cam")["kThreads"]



# ============================================================================ instances
@dataclass(frozen=True)
class Instance:
    """One fused-op instance. ``shape``: MultiScaleSubtraction N, C, h, w, H, W, scales (0 or 2);
    PositionAttention B, C, D, H, W; ChannelAttention B, C, H, W."""

    op: str
    model: str
    block: str
    shape: dict[str, int] = field(hash=False)

    def label(self) -> str:
        d = self.shape
        if self.op == "MultiScaleSubtraction":
            return f"C{d['C']} {d['h']}x{d['w']}->{d['H']}x{d['W']}" + (" k3,5" if d["scales"] else "")
        n = f"N{d['H'] * d['W']}({d['H']}x{d['W']})"
        return f"C{d['C']} D{d['D']} {n}" if self.op == "PositionAttention" else f"C{d['C']} {n}"


def instances(model_name: str) -> list[Instance]:
    """Every fused-op instance of a registered model at its native input size (``training.get_spec(name).input_hw``),
    from one forward pass with hooks, run on the ``meta`` device (real shapes, no data). Imports torch (only here)."""
    import torch

    import training
    from training.models.blocks import ChannelAttention, PositionAttention
    from training.models.msnet import MSNet

    with torch.device("meta"):  # shapes only: no weight initialisation, no arithmetic
        model = training.create_model(model_name).eval()
    h, w = training.get_spec(model_name).input_hw
    found: list[Instance] = []
    hooks = []
    if isinstance(model, MSNet):
        scales = 2 if model.multiscale else 0
        su = model._su  # the subtraction unit: name, A (before its resize), B

        def su_hook(name, a, b):
            found.append(Instance("MultiScaleSubtraction", model_name, name, {
                "N": a.shape[0], "C": a.shape[1], "h": a.shape[2], "w": a.shape[3], "H": b.shape[2],
                "W": b.shape[3], "scales": scales}))
            return su(name, a, b)

        model._su = su_hook
    for qual, mod in model.named_modules():
        if isinstance(mod, (PositionAttention, ChannelAttention)):
            def hook(m, args, out, qual=qual):
                x = args[0]
                shape = {"B": x.shape[0], "C": x.shape[1], "H": x.shape[2], "W": x.shape[3]}
                if isinstance(m, PositionAttention):
                    shape["D"] = m.query_conv.out_channels
                found.append(Instance(type(m).__name__, model_name, qual, shape))
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, model.spec.in_channels, h, w, device="meta"))
    finally:
        for hk in hooks:
            hk.remove()
    if not found:
        raise ValueError(f"{model_name} runs none of {', '.join(OPS)}; plugin models: {', '.join(DEFAULT_MODELS)}")
    return found


# ============================================================================ fused kernels
@dataclass
class Fused:
    bytes: int  # ideal DRAM traffic
    flops: float
    l2_bytes: int  # traffic between the SMs and L2 where the kernel relies on L2 reuse (0: not modelled)
    threads: int  # threads launched


def _staged(n: int) -> int:
    """Σ over the tiles along one axis of the in-image part of tile + halo (MultiScaleSubtraction staging)."""
    return sum(min(t + MSS_TILE + MSS_HALO, n) - max(t - MSS_HALO, 0) for t in range(0, n, MSS_TILE))


def fused(inst: Instance, s: int) -> Fused:
    d = inst.shape
    if inst.op == "MultiScaleSubtraction":
        n, c, h, w, H, W = d["N"], d["C"], d["h"], d["w"], d["H"], d["W"]
        x = n * c * H * W
        threads = n * math.ceil(H / MSS_TILE) * math.ceil(W / MSS_TILE) * MSS_TILE * MSS_TILE
        nbytes = s * (n * c * h * w + 2 * x)
        flops = 11.0 * x
        if d["scales"]:
            nbytes += 4 * 4 * c  # g3, h3, g5, h5 (float32)
            flops += 18.0 * x + 11.0 * c * n * _staged(H) * _staged(W) + 68.0 * threads
        return Fused(nbytes, flops, 0, threads)
    if inst.op == "PositionAttention":
        b, c, dq, nn = d["B"], d["C"], d["D"], d["H"] * d["W"]
        passes, blocks = math.ceil(c / PAM_KCH), math.ceil(nn / PAM_KQ)
        nbytes = s * b * (2 * dq * nn + 3 * c * nn)
        flops = b * (nn * nn * (passes * (2.0 * dq + 7) + 3.0 * c) + 3.0 * c * nn + nn * passes)
        l2 = s * b * (blocks * (passes * dq * nn + c * nn) + dq * nn + 2 * c * nn)
        return Fused(nbytes, flops, l2, b * blocks * PAM_KQ)
    if inst.op == "ChannelAttention":
        b, c, nn = d["B"], d["C"], d["H"] * d["W"]
        flops = b * (4.0 * c * c * nn + 4.0 * c * c + 3.0 * c * nn + 2 * (CAM_THREADS - 1) * c)
        return Fused(s * b * 2 * c * nn, flops, s * b * c * (2 * c * nn + 2 * nn), b * c * CAM_THREADS)
    raise ValueError(f"unknown op {inst.op!r}")


# ============================================================================ unfused ONNX subgraphs
@dataclass(frozen=True)
class Node:
    """One ONNX node of an unfused subgraph: activation inputs (tensor names), output, FLOPs, parameter bytes."""

    op_type: str
    inputs: tuple[str, ...]
    output: str
    flops: float = 0.0
    param_bytes: int = 0  # initializers read (BatchNormalization: 4·C float32)


@dataclass
class Subgraph:
    inputs: dict[str, int]  # block input → elements
    nodes: list[Node]
    elems: dict[str, int]  # every tensor → elements

    def add(self, op_type: str, inputs: Sequence[str], out: str, out_elems: int, flops: float = 0.0,
            param_bytes: int = 0) -> str:
        self.elems[out] = out_elems
        self.nodes.append(Node(op_type, tuple(inputs), out, flops, param_bytes))
        return out


def unfused_nodes(inst: Instance) -> Subgraph:
    """The ONNX nodes the plugin node replaces (float32 graph, before FP16 casts)."""
    d = inst.shape
    if inst.op == "MultiScaleSubtraction":
        n, c, h, w, H, W = d["N"], d["C"], d["h"], d["w"], d["H"], d["W"]
        x, px = n * c * H * W, n * H * W
        g = Subgraph({"A": n * c * h * w, "B": x}, [], {"A": n * c * h * w, "B": x})
        u = g.add("Resize", ["A"], "U", x, 9.0 * x) if (h, w) != (H, W) else "A"  # identity resize: not exported
        out = g.add("Abs", [g.add("Sub", [u, "B"], "S", x, x)], "D0", x, x)
        if d["scales"]:
            sums = {side: g.add("ReduceSum", [t], f"sum{side}", px, float(x)) for side, t in (("a", u), ("b", "B"))}
            for k in (3, 5):
                r = {}
                for side in "ab":
                    p = g.add("AveragePool", [sums[side]], f"pool{k}{side}", px, (k * k + 1.0) * px)
                    m = g.add("Mul", [p], f"mul{k}{side}", px, float(px))
                    e = g.add("Expand", [m], f"exp{k}{side}", x)
                    bn = g.add("BatchNormalization", [e], f"bn{k}{side}", x, 2.0 * x, 4 * 4 * c)
                    r[side] = g.add("Relu", [bn], f"relu{k}{side}", x, float(x))
                t = g.add("Abs", [g.add("Sub", [r["a"], r["b"]], f"sub{k}", x, x)], f"abs{k}", x, x)
                out = g.add("Add", [out, t], f"add{k}", x, x)
        return g
    if inst.op == "PositionAttention":
        b, c, dq, nn = d["B"], d["C"], d["D"], d["H"] * d["W"]
        qk, cv, nsq = b * dq * nn, b * c * nn, b * nn * nn
        g = Subgraph({"Q": qk, "K": qk, "V": cv, "X": cv}, [], {"Q": qk, "K": qk, "V": cv, "X": cv})
        qt = g.add("Transpose", [g.add("Reshape", ["Q"], "Qr", qk)], "Qt", qk)
        e = g.add("MatMul", [qt, g.add("Reshape", ["K"], "Kr", qk)], "E", nsq, 2.0 * nsq * dq)
        at = g.add("Transpose", [g.add("Softmax", [e], "A", nsq, 5.0 * nsq)], "At", nsq)
        o = g.add("MatMul", [g.add("Reshape", ["V"], "Vr", cv), at], "O", cv, 2.0 * nsq * c)
        y = g.add("Mul", [g.add("Reshape", [o], "Or", cv)], "G", cv, cv)
        g.add("Add", [y, "X"], "Y", cv, cv)
        return g
    if inst.op == "ChannelAttention":
        b, c, nn = d["B"], d["C"], d["H"] * d["W"]
        cv, csq = b * c * nn, b * c * c
        g = Subgraph({"X": cv}, [], {"X": cv})
        xr = g.add("Reshape", ["X"], "Xr", cv)
        e = g.add("MatMul", [xr, g.add("Transpose", [xr], "Xt", cv)], "E", csq, 2.0 * csq * nn)
        m = g.add("ReduceMax", [e], "M", b * c, float(csq))
        a = g.add("Softmax", [g.add("Sub", [m, e], "S", csq, csq)], "A", csq, 5.0 * csq)
        o = g.add("MatMul", [a, xr], "O", cv, 2.0 * csq * nn)
        y = g.add("Mul", [g.add("Reshape", [o], "Or", cv)], "G", cv, cv)
        g.add("Add", [y, "X"], "Y", cv, cv)
        return g
    raise ValueError(f"unknown op {inst.op!r}")


@dataclass(frozen=True)
class Kernel:
    """One unfused node as it runs: bytes moved, FLOPs, and which peak applies (``fp32``, ``fp16``, ``tf32_tc``,
    ``fp16_tc``)."""

    op_type: str
    bytes: int
    flops: float
    unit: str


def unfused_kernels(inst: Instance, s: int) -> list[Kernel]:
    """The unfused nodes with their DRAM bytes at element size ``s``; float16 adds the FP16 graph's Casts around the
    float32-only nodes (``FP32_OP_TYPES``)."""
    g = unfused_nodes(inst)
    f32 = {nd.output for nd in g.nodes if s == 2 and nd.op_type in FP32_OP_TYPES}
    out: list[Kernel] = []
    cast_in: set[str] = set()
    consumers: dict[str, list[Node]] = {}
    for nd in g.nodes:
        for t in nd.inputs:
            consumers.setdefault(t, []).append(nd)
    final = g.nodes[-1].output
    for nd in g.nodes:
        es = 4 if nd.output in f32 else s
        if nd.op_type == "Reshape":
            out.append(Kernel("Reshape", 0, 0.0, "fp32"))
            continue
        if nd.output in f32:
            for t in nd.inputs:  # a float16 tensor entering a float32 node: Cast to float32 (one per tensor)
                if t not in f32 and t not in cast_in:
                    cast_in.add(t)
                    out.append(Kernel("Cast", 6 * g.elems[t], 0.0, "fp32"))
        moved = es * (sum(g.elems[t] for t in nd.inputs) + g.elems[nd.output]) + nd.param_bytes
        if nd.op_type == "MatMul":
            unit = "tf32_tc" if s == 4 else "fp16_tc"
        else:
            unit = "fp32" if es == 4 else "fp16"
        out.append(Kernel(nd.op_type, moved, nd.flops, unit))
        if nd.output in f32 and (nd.output == final or any(c.output not in f32 for c in consumers.get(nd.output, []))):
            out.append(Kernel("Cast", 6 * g.elems[nd.output], 0.0, "fp32"))  # back to float16
    return out


# ============================================================================ counts
@dataclass
class Count:
    fused_bytes: int
    fused_flops: float
    l2_bytes: int
    threads: int
    unfused_bytes: int
    unfused_flops: float
    unfused_kernels: int  # nodes that move data (Reshape views excluded, Casts included)
    kernels: list[Kernel] = field(repr=False, default_factory=list)


def count(inst: Instance, s: int) -> Count:
    """Bytes (element size ``s``) and FLOPs of one instance, fused and unfused."""
    f = fused(inst, s)
    ks = unfused_kernels(inst, s)
    return Count(f.bytes, f.flops, f.l2_bytes, f.threads, sum(k.bytes for k in ks), sum(k.flops for k in ks),
                 sum(k.bytes > 0 for k in ks), ks)

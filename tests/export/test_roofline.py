"""export.roofline: byte/FLOP counts of hand-computed instances, instance enumeration from real forward passes, the
unfused node lists against real exported graphs (float32 and the FP16 graph's casts), and the CLI's JSON."""

from __future__ import annotations

import collections
import json

import pytest

from export import roofline as R
from export.roofline import DEVICES, Instance, count, predict


def _mss(h, w, H, W, scales=0, C=2):
    return Instance("MultiScaleSubtraction", "t", "u", {"N": 1, "C": C, "h": h, "w": w, "H": H, "W": W,
                                                         "scales": scales})


def test_multiscale_subtraction_counts_by_hand():
    # MSNet unit, A [1,2,1,1] → B [1,2,2,2]: a = 2, x = 8 elements
    c = count(_mss(1, 1, 2, 2), 4)
    assert c.fused_bytes == 4 * (2 + 8 + 8)  # read A, read B, write D
    assert c.unfused_bytes == 4 * ((2 + 8) + (8 + 8 + 8) + (8 + 8))  # Resize, Sub, Abs
    assert count(_mss(1, 1, 2, 2), 2).unfused_bytes == 2 * 50
    assert count(_mss(2, 2, 2, 2), 4).unfused_bytes == 4 * (24 + 16)  # identity size: no Resize node
    # M2SNet unit: + ReduceSum ×2 (8 → 4), per scale and side AveragePool 4→4, Mul 4→4, Expand 4→8, BN 8→8 (+4·C
    # float32 parameters), Relu 8→8; per scale Sub, Abs; 2 Adds
    m2 = count(_mss(1, 1, 2, 2, scales=2), 4)
    assert m2.fused_bytes == 72 + 16 * 2  # + g3, h3, g5, h5
    elems = 10 + 24 + 16 + 2 * 12 + 4 * (8 + 8 + 12 + 16 + 16) + 2 * 24 + 2 * 16 + 2 * 24
    assert elems == 442 and m2.unfused_bytes == 4 * 442 + 4 * (4 * 2 * 4)
    # float16 graph: ReduceSum and BN stay float32, with Casts (6 bytes per element): up(A), B, two sums, 4 Expand
    # outputs in; 4 BN outputs back
    m216 = count(_mss(1, 1, 2, 2, scales=2), 2)
    casts = 6 * (8 + 8 + 4 + 4 + 4 * 8 + 4 * 8)
    assert m216.unfused_bytes == 2 * (442 - 24 - 64) + 4 * (24 + 64) + 128 + casts == 1716
    assert R.unfused_kernels(_mss(1, 1, 2, 2, scales=2), 2).count(R.Kernel("Cast", 48, 0.0, "fp32")) == 10
    # FLOPs: 29 per output element + staging (11·C per staged pixel, 4 pixels) + 68 per thread (one 256-thread block)
    assert m2.fused_flops == 29 * 8 + 11 * 2 * 4 + 68 * 256
    assert count(_mss(1, 1, 2, 2), 4).fused_flops == 11 * 8


def test_attention_counts_by_hand():
    pam = Instance("PositionAttention", "t", "p", {"B": 1, "C": 8, "D": 1, "H": 2, "W": 2})  # N = 4
    p = count(pam, 2)
    assert p.fused_bytes == 2 * (2 * 4 + 3 * 32)  # Q, K [1,1,4]; V, X, out [1,8,4]
    assert p.fused_flops == 16 * (1 * (2 * 1 + 7) + 3 * 8) + 3 * 32 + 4  # one 16-channel pass
    assert p.l2_bytes == 2 * (1 * (1 * 4 + 8 * 4) + 4 + 2 * 32) and p.threads == 64
    # Transpose Q 4→4, MatMul 4+4→16, Softmax 16→16, Transpose 16→16, MatMul 32+16→32, Mul 32→32, Add 64→32
    assert count(pam, 4).unfused_bytes == 4 * 336
    assert p.unfused_bytes == 2 * (336 - 32) + 4 * 32 + 2 * 6 * 16  # Softmax in float32 between two Casts
    cam = Instance("ChannelAttention", "t", "c", {"B": 1, "C": 2, "H": 1, "W": 3})  # N = 3
    c = count(cam, 4)
    assert c.fused_bytes == 4 * 2 * 6 and c.l2_bytes == 4 * 2 * (2 * 6 + 2 * 3) and c.threads == 256
    assert c.fused_flops == 4 * 4 * 3 + 4 * 4 + 3 * 6 + 2 * 127 * 2
    # Transpose 6→6, MatMul 6+6→4, ReduceMax 4→2, Sub 2+4→4, Softmax 4→4, MatMul 4+6→6, Mul 6→6, Add 12→6
    assert c.unfused_bytes == 4 * 98
    assert count(cam, 2).unfused_bytes == 2 * (98 - 14) + 4 * 14 + 6 * (4 + 2 + 4 + 4)


def test_prediction_is_the_roofline_of_the_counts():
    orin = DEVICES["orin"]
    bw = orin.dram_gbps * 1e9 * R.BANDWIDTH_EFFICIENCY
    c = count(_mss(11, 11, 22, 22, C=64), 4)  # memory-bound
    assert predict(c, "orin")["fused_us"] == pytest.approx(c.fused_bytes / bw * 1e6)
    pam = count(Instance("PositionAttention", "t", "p", {"B": 1, "C": 64, "D": 8, "H": 64, "W": 64}), 4)
    p = predict(pam, "orin")  # compute-bound on CUDA cores
    assert p["fused_us"] == pytest.approx(pam.fused_flops / (orin.fp32_tflops * 1e12) * 1e6)
    assert p["unfused_us"] >= pam.unfused_bytes / bw * 1e6 * (1 - 1e-12)  # sum over nodes ≥ bytes / bandwidth
    h = predict(pam, "h100")
    assert h["fused_us_lane_capped"] == pytest.approx(h["fused_us"] * DEVICES["h100"].cuda_cores / 4096)


def test_fp16_graph_op_list_is_the_exporters():
    from export.precision import FP32_OP_TYPES

    assert tuple(R.FP32_OP_TYPES) == tuple(FP32_OP_TYPES)


@pytest.fixture(scope="module")
def table():
    return R.rows(R.DEFAULT_MODELS)


def test_default_models_are_the_plugin_models():
    import training

    assert set(R.DEFAULT_MODELS) == {m for m in training.list_models() if training.get_spec(m).plugin_blocks}


def test_instances_of_every_model(table):
    import training
    from training.models.blocks import ChannelAttention, PositionAttention
    from training.models.msnet import SUBTRACTION_UNITS

    f32 = [r for r in table if r["dtype"] == "float32"]
    for model, s in (("msnet", 11), ("m2snet", 11), ("msnet_effl0", 8), ("m2snet_effl0", 8)):
        units = [r for r in f32 if r["model"] == model]
        assert [r["block"] for r in units] == list(SUBTRACTION_UNITS)  # 10 units, evaluation order
        sizes = [(r["shape"]["h"] // s, r["shape"]["H"] // s) for r in units]  # in units of the x5 map
        assert sizes == [(1, 2), (2, 4), (4, 8), (8, 8), (2, 4), (4, 8), (8, 8), (4, 8), (8, 8), (8, 8)]
        assert {r["shape"]["C"] for r in units} == {64}
        assert {r["shape"]["scales"] for r in units} == {2 if model.startswith("m2") else 0}
        assert units[0]["shape"]["H"] * 32 // 2 == training.get_spec(model).input_hw[0]
    import torch

    with torch.device("meta"):
        model = training.create_model("msga")
    att = [r for r in f32 if r["model"] == "msga"]
    for op, cls in (("PositionAttention", PositionAttention), ("ChannelAttention", ChannelAttention)):
        n_modules = sum(isinstance(m, cls) for m in model.modules())
        assert sum(r["op"] == op for r in att) == n_modules > 0
    hw = training.get_spec("msga").input_hw
    assert all(r["shape"]["H"] * 4 == hw[0] and r["shape"]["W"] * 4 == hw[1] for r in att)  # stride 4
    assert all(r["shape"]["D"] == r["shape"]["C"] // 8 for r in att if r["op"] == "PositionAttention")


def test_fusing_saves_bytes_and_predicted_time_everywhere(table):
    by_key = {(r["model"], r["block"], r["dtype"]): r for r in table}
    for r in table:
        assert 0 < r["fused_bytes"] < r["unfused_bytes"], (r["model"], r["block"], r["dtype"])
        for dev in DEVICES:
            assert 0 < r[dev]["fused_us"] < r[dev]["unfused_us"], (r["model"], r["block"], r["dtype"], dev)
        if r["dtype"] == "float16":  # half the bytes, except M2SNet's float32 BN parameters
            f32 = by_key[(r["model"], r["block"], "float32")]
            params = 16 * r["shape"]["C"] if r["shape"].get("scales") else 0
            assert r["fused_bytes"] - params == (f32["fused_bytes"] - params) // 2
    tot = {(t["model"], t["op"], t["dtype"]): t for t in R.totals(table)}
    assert tot[("msnet", "MultiScaleSubtraction", "float32")]["n"] == 10
    both = tot[("msga", "all", "float32")]
    assert both["fused_bytes"] == sum(tot[("msga", op, "float32")]["fused_bytes"]
                                      for op in ("PositionAttention", "ChannelAttention"))


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert R.main(["--model", "msnet_effl0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PREDICTION" in text and "TOTAL" in text and "C64 8x8->16x16" in text
    doc = json.loads(out.read_text())
    assert set(doc) == {"prediction", "assumptions", "instances", "totals"}
    assert set(doc["assumptions"]["devices"]) == set(DEVICES) and doc["assumptions"]["bandwidth_efficiency"] == 0.7
    row = doc["instances"][0]
    assert {"model", "op", "block", "shape", "dtype", "fused_bytes", "unfused_bytes", "fused_flops", "l2_bytes",
            "unfused_nodes", *DEVICES} <= set(row)
    assert {"fused_us", "fused_us_lane_capped", "unfused_us"} <= set(row["orin"])
    assert len(doc["instances"]) == 20 and [t["n"] for t in doc["totals"]] == [10, 10]


# ------------------------------------------------------------------ the node lists against real exported graphs
_PLUMBING = {"Shape", "Gather", "Constant", "Unsqueeze", "Concat", "Slice", "Identity"}


def _block_signature(m, block, fp16: bool):
    """Multiset of (op_type, input elements, output elements) of a block's data nodes, and (for the FP16 graph)
    of its Casts (every Cast whose output a block node reads)."""
    import numpy as np

    from export.graph import GraphIndex

    ix = GraphIndex(m)
    byname = {n.name: n for n in m.graph.node}
    nodes = [byname[n] for n in block.nodes if byname[n].op_type not in _PLUMBING | {"Cast"}]

    def numel(t):
        return int(np.prod(ix.shape(t)))

    def acts(n):
        return tuple(sorted(numel(i) for i in n.input if i and i not in ix.initializers
                            and (ix.producer.get(i) is None or ix.producer[i].op_type != "Constant")))

    sig = collections.Counter((n.op_type, acts(n), numel(n.output[0])) for n in nodes)
    if fp16:
        read = {i for n in nodes for i in n.input}
        sig.update(("Cast", (numel(c.input[0]),), numel(c.output[0])) for c in m.graph.node
                   if c.op_type == "Cast" and c.output[0] in read)
    return sig


def _roofline_signature(inst, fp16: bool):
    g = R.unfused_nodes(inst)
    sig = collections.Counter((n.op_type, tuple(sorted(g.elems[t] for t in n.inputs)), g.elems[n.output])
                              for n in g.nodes)
    if fp16:
        sig.update(("Cast", (k.bytes // 6,), k.bytes // 6) for k in R.unfused_kernels(inst, 2) if k.op_type == "Cast")
    return sig


def _check_export(model, hw, tmp_path, make_instance):
    import onnx

    from export.graph import GraphIndex
    from export.onnx import export_fp32
    from export.plugins import find_blocks
    from export.precision import to_fp16

    m32 = export_fp32(model, hw, tmp_path / "m.onnx")
    m16 = to_fp16(m32)[0]  # the static FP16 rule (no calibration frames: no value-based float32 nodes)
    n = 0
    for m, fp16 in ((m32, False), (m16, True)):
        m = onnx.shape_inference.infer_shapes(m)
        blocks = find_blocks(m, model)
        assert blocks
        ix = GraphIndex(m)
        for b in blocks:
            inst = make_instance(b, [ix.shape(t) for t in b.inputs])
            assert _block_signature(m, b, fp16) == _roofline_signature(inst, fp16), (b.name, fp16)
            n += 1
    return n


def test_unfused_nodes_are_the_exported_subtraction_units(tmp_path):
    import training

    model = training.create_model("m2snet_effl0").eval()  # small input: same nodes, smaller tensors

    def inst(b, shapes):
        (n, c, h, w), (_, _, H, W) = shapes
        return Instance(b.op, "m2snet_effl0", b.name, {"N": n, "C": c, "h": h, "w": w, "H": H, "W": W,
                                                       "scales": 2})

    assert _check_export(model, (64, 64), tmp_path, inst) == 20


def test_unfused_nodes_are_the_exported_attention_blocks(tmp_path):
    import torch

    from training.models.msga import AttentionLayer

    class Two(torch.nn.Module):  # msga's attention layers, without the 88M-parameter encoder
        in_channels = 32

        def __init__(self):
            super().__init__()
            self.pam_attention = AttentionLayer(16, use_pam=True)
            self.cam_attention = AttentionLayer(16, use_pam=False)

        def forward(self, x):
            return self.pam_attention(x) + self.cam_attention(x)

    def inst(b, shapes):
        b_, c, h, w = shapes[-1]
        shape = {"B": b_, "C": c, "H": h, "W": w}
        if b.op == "PositionAttention":
            shape["D"] = shapes[0][1]
        return Instance(b.op, "t", b.name, shape)

    assert _check_export(Two().eval(), (6, 10), tmp_path, inst) == 4

"""TensorRT's own ONNX parser and builder as the gate: TensorRT-RTX (``tensorrt_rtx``), which parses ONNX and builds
serialized engines ahead of time without a GPU.

* Every registry model's FP16 graph and its TensorRT INT8 graph (``qdq-s8``) is exported, parsed and built into a
  non-empty engine with ``build_engine(..., target="rtx")``, at 32×32 (msa2net: its fixed 224×224), 4 Kvasir
  calibration frames (min-max) and 2 parity frames. On 2 shared CPU cores (another test run beside it): ~100 s for
  msnet, msnet_effl0, m2snet and m2snet_effl0 together, ~530 s for the three big models (msa2net 250 s at 224×224,
  msga 150 s, gmsrf 130 s; their engines are 90–210 MB); on an idle machine gmsrf's FP16 export takes 13 s. Every graph is built whatever its parity: the parity gate is
  off for the export and the parity record is asserted after the build, so a graph that cannot pass with untrained
  weights (the FP16 M2SNets overflow float16) is still parsed and built; NaN/Inf logits must be exactly the known
  cases (:data:`UNTRAINED_NONFINITE`, kept strict: a fixed model must leave the set).
* A broken graph is rejected by the parser with a one-line :class:`ExportError` naming the node: the gate can fail.
* The hand-written Q/DQ lint (:func:`export.precision.lint_qdq_for_tensorrt`) against the real parser on small
  hand-built graphs, rule by rule (:data:`LINT_VS_PARSER`): where the parser rejects, it is the judge; where
  TensorRT-RTX accepts what datacenter/Jetson TensorRT rejects, the lint keeps the rule and says why.

Deploy graphs with plugin nodes are never given to TensorRT-RTX (it has no plugin layers and aborts the process on
one): they stay on the lean-registry path (``tests/export/test_plugins.py``).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13)")

import export.trt as trt_mod  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.precision import lint_qdq_for_tensorrt  # noqa: E402
from runtime.manifest import Manifest, manifest_path, sha256_file  # noqa: E402
from training import get_spec, list_models  # noqa: E402

#: input size of the gate's exports; fixed-size models (msa2net) use their own. Every registry model's
#: ``size_divisor`` (8 or 32) divides it, and the heavy models' export time scales with the pixels.
GATE_HW = (32, 32)

#: graphs whose logits are NaN/Inf with the seeded untrained weights, so that their parity check cannot pass: the
#: untrained M2SNets' activations reach 1e8–1e12, far beyond float16's 65504. They are exported with
#: ``parity_gate=False`` like every graph here, and parsed and built all the same.
UNTRAINED_NONFINITE = {("m2snet", "fp16"), ("m2snet_effl0", "fp16")}


def _quiet(*_a, **_k) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def rtx_cache(tmp_path_factory):
    """Engine and timing caches in a throw-away folder (``export.trt.CACHE_DIR`` is read from ``POLYPSEG_CACHE``
    at import, so the module attribute is patched). The INT8 exports skip their OpenVINO parity run (that is
    ``test_export.py``'s subject; here it would only add compile time for the big models)."""
    import export.onnx

    d = tmp_path_factory.mktemp("polypseg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYPSEG_CACHE", str(d))
        mp.setattr(trt_mod, "CACHE_DIR", d)
        mp.setattr(export.onnx, "_has_openvino", lambda: False)
        yield d
    shutil.rmtree(d, ignore_errors=True)


def _gate_hw(name: str) -> tuple[int, int]:
    spec = get_spec(name)
    if spec.fixed_size:
        return tuple(spec.input_hw)
    assert GATE_HW[0] % spec.size_divisor == 0 and GATE_HW[1] % spec.size_divisor == 0
    return GATE_HW


# --------------------------------------------------------------------------------------------- registry models
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", list_models())
def test_registry_graph_parses_and_builds(name, precision, kvasir, tmp_path):
    hw = _gate_hw(name)
    onnx_path = tmp_path / f"{name}-{precision}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained weights; a parity failure kept by parity_gate=False
        m = export_onnx(name, onnx_path, precision=precision, input_hw=hw, int8_flavour="qdq-s8",
                        calib_data=str(kvasir), calib_split=str(kvasir / "splits" / "train.txt"), calib_count=4,
                        calib_method="minmax", parity_frames=2, parity_gate=False, progress=False, log=_quiet)
    assert m.quant_flavour == ("qdq-s8" if precision == "int8" else "")
    engine = tmp_path / f"{name}-{precision}.engine"
    try:
        trt_mod.build_engine(onnx_path, engine, m, target="rtx", progress=False, log=_quiet)
        assert engine.stat().st_size > 0
        em = Manifest.load(manifest_path(engine))
        assert em.engine["flavour"] == "tensorrt-rtx" and em.engine["engine_bytes"] == engine.stat().st_size
        assert em.engine["onnx_sha256"] == sha256_file(onnx_path) and not em.engine["cache_hit"]
        io = {t["name"]: t for t in em.engine["io"]}
        assert io["input"]["mode"] == "input" and io["input"]["shape"] == [1, m.in_channels, *hw]
        assert io["logits"]["mode"] == "output" and io["logits"]["shape"] == [1, m.num_classes, *hw]
        assert io["input"]["dtype"] == io["logits"]["dtype"] == "float32"  # FP16/INT8 inside, float32 I/O
    finally:  # engines of the big models are 100–200 MB: keep the temporary folders small
        engine.unlink(missing_ok=True)
        onnx_path.unlink(missing_ok=True)
    # built whatever its parity. Untrained weights, 4 calibration frames and 32×32 inputs make no parity benchmark
    # (test_zoo_export.py and test_export.py are), but NaN/Inf logits must be exactly the known overflows.
    nonfinite = m.parity["ort"]["nonfinite"]
    if (name, precision) in UNTRAINED_NONFINITE:
        assert nonfinite > 0, f"{name} {precision} gives finite logits now: remove it from UNTRAINED_NONFINITE"
        assert not m.parity["gate"]["passed"]
    else:
        assert nonfinite == 0, m.parity["gate"]["failures"]


# --------------------------------------------------------------------------------------------- crafted graphs
C, K = 4, 8  # input channels, output channels of the crafted convolution


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def qdq_graph(case: str) -> onnx.ModelProto:
    """x (1×4×8×8) → Q/DQ → Conv or ConvTranspose 3×3 (weights: int8 → DQ per channel) → y, with ``case`` changing
    one thing (see :data:`LINT_VS_PARSER`)."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    act_kw: dict = {}
    a_scale, a_zp = np.float32(0.05), np.int8(0)
    if case == "uint8_zp":
        a_zp = np.uint8(128)
    elif case == "uint8_zp0":
        a_zp = np.uint8(0)
    elif case == "nonzero_zp":
        a_zp = np.int8(3)
    elif case == "per_channel_act":
        a_scale, a_zp, act_kw = np.full(C, 0.05, np.float32), np.zeros(C, np.int8), {"axis": 1}
    elif case == "zero_scale":
        a_scale = np.float32(0.0)
    elif case == "negative_scale":
        a_scale = np.float32(-0.05)
    inits = [_init("a_s", a_scale), _init("a_zp", a_zp)]
    scale = "a_s"
    if case == "scale_runtime":  # scale computed from the input at run time
        nodes += [helper.make_node("ReduceMax", ["x"], ["x_max"], keepdims=0, name="rmax"),
                  helper.make_node("Div", ["x_max", "k127"], ["a_s_rt"], name="div")]
        inits.append(_init("k127", np.float32(127.0)))
        scale = "a_s_rt"
    conv_in = "x"
    if case != "no_act_qdq":
        nodes += [helper.make_node("QuantizeLinear", ["x", scale, "a_zp"], ["xq"], name="q_in", **act_kw),
                  helper.make_node("DequantizeLinear", ["xq", scale, "a_zp"], ["xdq"], name="dq_in", **act_kw)]
        conv_in = "xdq"
    transposed = case.startswith("convT")
    w_shape = (C, K, 3, 3) if transposed else (K, C, 3, 3)
    k_axis = 1 if transposed else 0  # the output-channel axis TensorRT quantises weights along
    w_axis = 1 - k_axis if case in ("w_axis_wrong", "convT_axis0") else k_axis
    n_ch = w_shape[w_axis]
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    w_s, w_zp = np.full(n_ch, 0.01, np.float32), np.zeros(n_ch, np.int8)
    if case == "uint8_weights":
        w, w_zp = rng.integers(0, 256, w_shape).astype(np.uint8), np.full(n_ch, 128, np.uint8)
    elif case == "w_nonzero_zp":
        w_zp = np.full(n_ch, 2, np.int8)
    if case == "no_w_qdq":
        inits.append(_init("w_dq", w.astype(np.float32) * 0.01))
    elif case == "w_fp32_qdq":  # float weights → Q → DQ (TensorRT quantises them at build time)
        inits += [_init("w_f", w.astype(np.float32) * 0.01), _init("w_s", w_s), _init("w_zp", w_zp)]
        nodes += [helper.make_node("QuantizeLinear", ["w_f", "w_s", "w_zp"], ["w_q"], name="q_w", axis=w_axis),
                  helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], name="dq_w", axis=w_axis)]
    else:
        inits += [_init("w", w), _init("w_s", w_s), _init("w_zp", w_zp)]
        nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["w_dq"], name="dq_w", axis=w_axis))
    out_ch = w_shape[1] if transposed else w_shape[0]
    if case == "int32_bias":
        inits += [_init("b", np.arange(out_ch, dtype=np.int32)), _init("b_s", np.full(out_ch, 5e-4, np.float32)),
                  _init("b_zp", np.zeros(out_ch, np.int32))]
        nodes.append(helper.make_node("DequantizeLinear", ["b", "b_s", "b_zp"], ["b_dq"], name="dq_bias", axis=0))
        bias = "b_dq"
    else:
        inits.append(_init("b", np.zeros(out_ch, np.float32)))
        bias = "b"
    nodes.append(helper.make_node("ConvTranspose" if transposed else "Conv", [conv_in, "w_dq", bias], ["y"],
                                  name="conv", pads=[1, 1, 1, 1]))
    out, opsets = "y", [helper.make_opsetid("", 17)]
    if case == "unknown_op":  # neither a standard op nor a plugin TensorRT knows
        nodes.append(helper.make_node("NoSuchOp", ["y"], ["z"], name="mystery", domain="polyp"))
        out, opsets = "z", opsets + [helper.make_opsetid("polyp", 1)]
    graph = helper.make_graph(nodes, case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, out_ch, 8, 8])], inits)
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 8  # onnx 1.23 writes IR 14
    return m


def _save(m: onnx.ModelProto, path: Path) -> Manifest:
    onnx.save(m, str(path))
    return Manifest(model="crafted", input_hw=[8, 8], mean=[0.0] * C, std=[1.0] * C, in_channels=C,
                    precision="int8", quant_flavour="qdq-s8", onnx_sha256=sha256_file(path))


def _rtx_verdict(m: onnx.ModelProto, tmp_path: Path, *, build: bool = True) -> str:
    """``"builds"``, ``"parses"`` (``build=False``) or the gate's :class:`ExportError` message."""
    path = tmp_path / f"{m.graph.name}.onnx"
    manifest = _save(m, path)
    try:
        if build:
            out = trt_mod.build_engine(path, tmp_path / f"{m.graph.name}.engine", manifest, target="rtx",
                                       progress=False, log=_quiet)
            assert out.stat().st_size > 0
            return "builds"
        target = trt_mod.resolve_target("rtx")
        rtx = target.trt
        logger = rtx.Logger(rtx.Logger.ERROR)
        builder = rtx.Builder(logger)
        trt_mod.parse_onnx(rtx, builder.create_network(0), logger, path, "TensorRT-RTX")
        return "parses"
    except ExportError as e:
        return str(e)


#: case → (the lint's verdict: a substring of one of its problems, None = clean;
#:         TensorRT-RTX 1.7.1: "builds", "parses" (not built, see the case), or "rejects <node>: <reason>")
LINT_VS_PARSER = {
    # accepted by both
    "ok": (None, "builds"),
    "w_fp32_qdq": (None, "builds"),  # float weights → Q → DQ per channel: a weight, not an activation
    "convT_ok": (None, "builds"),
    "no_act_qdq": (None, "builds"),  # a weighted op without Q/DQ runs in float: allowed (exclude_nodes)
    "no_w_qdq": (None, "builds"),
    # rejected by both: the parser is the judge, the lint repeats it where there is no TensorRT
    "nonzero_zp": ("non-zero zero point", "rejects q_in: Non-zero zero point is not supported"),
    "w_nonzero_zp": ("non-zero zero point", "rejects dq_w: Non-zero zero point is not supported"),
    "uint8_zp": ("zero point of type uint8", "rejects q_in: Non-zero zero point is not supported"),
    "zero_scale": ("non-positive scale", "rejects q_in: Scale coefficients must all be positive"),
    "negative_scale": ("non-positive scale", "rejects q_in: Scale coefficients must all be positive"),
    "int32_bias": ("quantised bias", "rejects dq_bias: input has type Int32"),
    "uint8_weights": ("uint8 weights", "rejects dq_w: Found unsupported input type of UINT8"),
    # accepted by TensorRT-RTX, not by TensorRT 10/11 (or wrong numbers there): the lint keeps these rules
    "uint8_zp0": ("zero point of type uint8", "builds"),  # read as int8: [0, 255] in ORT, [-128, 127] in TensorRT
    "per_channel_act": ("per-channel scale on an activation", "builds"),  # TensorRT: activations per tensor
    "w_axis_wrong": ("axis 1, Conv needs axis 0", "builds"),  # RTX folds weights to float; TensorRT needs K
    "convT_axis0": ("axis 0, ConvTranspose needs axis 1", "builds"),
    # parsed, and TensorRT-RTX 1.7.1's builder then crashes the process (SIGSEGV): never build it here
    "scale_runtime": ("not a build-time constant", "parses"),
}


@pytest.mark.parametrize("case", list(LINT_VS_PARSER))
def test_lint_against_the_tensorrt_parser(case, tmp_path):
    lint_says, rtx_says = LINT_VS_PARSER[case]
    m = qdq_graph(case)
    onnx.checker.check_model(m, full_check=True)
    problems = lint_qdq_for_tensorrt(m)
    if lint_says is None:
        assert problems == []
    else:
        assert any(lint_says in p for p in problems), problems
    verdict = _rtx_verdict(m, tmp_path, build=rtx_says != "parses")
    if rtx_says.startswith("rejects "):
        node, reason = rtx_says[len("rejects "):].split(": ", 1)
        assert verdict.startswith("TensorRT-RTX's ONNX parser rejected") and f"node {node!r}" in verdict, verdict
        assert reason in verdict, verdict
    else:
        assert verdict == rtx_says


def test_the_gate_can_fail(tmp_path):
    """A graph the parser rejects: a one-line ExportError naming the node and the reason, and no engine."""
    for case, node in (("nonzero_zp", "'q_in' (QuantizeLinear)"), ("unknown_op", "'mystery' (NoSuchOp)")):
        path = tmp_path / f"{case}.onnx"
        manifest = _save(qdq_graph(case), path)
        with pytest.raises(ExportError) as e:
            trt_mod.build_engine(path, tmp_path / f"{case}.engine", manifest, target="rtx", progress=False,
                                 log=_quiet)
        msg = str(e.value)
        assert "\n" not in msg and f"node {node}" in msg and path.name in msg, msg
        assert not (tmp_path / f"{case}.engine").exists()
        assert not manifest_path(tmp_path / f"{case}.engine").exists()
    assert "Plugin not found" in msg  # an unknown op goes to the plugin fallback, which finds nothing


def test_every_parser_rejection_is_one_line(tmp_path):
    for case, (_lint, rtx_says) in LINT_VS_PARSER.items():
        if rtx_says.startswith("rejects "):
            msg = _rtx_verdict(qdq_graph(case), tmp_path)
            assert "\n" not in msg, f"{case}: {msg!r}"


def test_deploy_graph_never_reaches_tensorrt_rtx(tmp_path):
    """A plugin node would abort the process inside TensorRT-RTX: build_engine refuses the graph before parsing (deploy
    graphs are checked on the lean plugin registry instead, tests/export/test_plugins.py)."""
    m = qdq_graph("ok")
    m.graph.node.append(helper.make_node("ChannelAttention", ["y"], ["z"], name="ca", domain="polyp", gamma=0.5,
                                         plugin_namespace="polypseg", plugin_version="1"))
    m.graph.output[0].name = "z"
    m.opset_import.append(helper.make_opsetid("polyp", 1))
    path = tmp_path / "deploy.onnx"
    manifest = _save(m, path)
    with pytest.raises(ExportError, match="TensorRT-RTX cannot host custom plugins"):
        trt_mod.build_engine(path, tmp_path / "deploy.engine", manifest, target="rtx", progress=False, log=_quiet)
    assert not (tmp_path / "deploy.engine").exists()

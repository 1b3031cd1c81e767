"""ONNX export: FP32/FP16/INT8 graphs on real frames, manifests, Q/DQ lint, calibration cache, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.onnx import export_onnx
from export.precision import lint_qdq_for_tensorrt
from runtime.manifest import Manifest, manifest_path

ROOT = Path(__file__).resolve().parents[2]
HW = (96, 96)


@pytest.fixture(scope="module")
def calib(kvasir):
    return {"calib_data": str(kvasir), "calib_split": str(kvasir / "splits" / "train.txt")}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A fixed msnet_effl0 checkpoint: the shipped trained one when present, else a seeded random init."""
    from training.checkpoint import WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "msnet_effl0-kvasir.pt"
    if shipped.is_file():
        return str(shipped)
    import torch

    from training import create_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "effl0.pt"
    return str(save_checkpoint(path, create_model("msnet_effl0", pretrained=True), "msnet_effl0"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calib, ckpt):
    """msnet_effl0 exported once per precision at a small size."""
    out = tmp_path_factory.mktemp("export")
    res = {}
    for prec, flav in (("fp32", "qdq-s8"), ("fp16", "qdq-s8"), ("int8", "qdq-s8"), ("int8", "qdq-u8")):
        path = out / f"effl0-{prec}-{flav}.onnx"
        m = export_onnx("msnet_effl0", path, checkpoint=ckpt, precision=prec, input_hw=HW, int8_flavour=flav,
                        calib_count=24,
                        calib_method="minmax", progress=False, log=lambda *a: None, **calib)
        res[(prec, flav)] = (path, m)
    return res


def test_fp32_graph_and_manifest(exported):
    path, m = exported[("fp32", "qdq-s8")]
    g = onnx.load(str(path))
    assert g.ir_version <= 10 and g.opset_import[0].version == 17
    ops = {n.op_type for n in g.graph.node}
    assert not ops & {"Shape", "Gather", "Identity"}, "shape chains are constant-folded"
    assert [i.name for i in g.graph.input] == ["input"] and [o.name for o in g.graph.output] == ["logits"]
    loaded = Manifest.load(path)
    assert loaded.model == "msnet_effl0" and loaded.input_hw == list(HW) and loaded.precision == "fp32"
    assert loaded.mean == [0.485, 0.456, 0.406] and loaded.output_activation == "sigmoid"
    assert loaded.onnx_sha256 and len(loaded.onnx_sha256) == 64
    p = loaded.parity["ort"]
    assert p["max_abs_diff"] < 1e-3 and p["dice_vs_torch"] > 0.999 and p["frames"] == 8
    assert "kvasir" in loaded.parity["frames_source"]


def test_fp16_graph_keeps_float32_io(exported):
    path, m = exported[("fp16", "qdq-s8")]
    g = onnx.load(str(path))
    assert g.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert g.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    n16 = sum(i.data_type == TensorProto.FLOAT16 for i in g.graph.initializer)
    assert n16 > 50, "weights are float16"
    assert m.parity["ort"]["dice_vs_torch"] > 0.98 and m.parity["ort"]["nonfinite"] == 0


def test_int8_flavours_and_tensorrt_lint(exported):
    s8, ms8 = exported[("int8", "qdq-s8")]
    u8, mu8 = exported[("int8", "qdq-u8")]
    assert ms8.quant_flavour == "qdq-s8" and mu8.quant_flavour == "qdq-u8"
    gs8, gu8 = onnx.load(str(s8)), onnx.load(str(u8))
    assert lint_qdq_for_tensorrt(gs8) == []
    assert any("uint8" in p or "zero point" in p for p in lint_qdq_for_tensorrt(gu8))
    # per-channel int8 weights on axis 0 feed every Conv; biases stay float
    inits = {i.name: numpy_helper.to_array(i) for i in gs8.graph.initializer}
    producers = {o: n for n in gs8.graph.node for o in n.output}
    convs = [n for n in gs8.graph.node if n.op_type == "Conv"]
    for c in convs:
        dq = producers[c.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
        assert inits[dq.input[1]].size == inits[dq.input[0]].shape[0]
        if len(c.input) > 2:
            assert c.input[2] in inits and inits[c.input[2]].dtype == np.float32
    assert ms8.parity["ort"]["dice_vs_torch"] > 0.9 and ms8.parity["openvino"]["dice_vs_torch"] > 0.9
    assert ms8.export_config["calibration"]["frames"] == 24


def test_u8_graph_runs_int8_kernels_on_onnx_runtime(exported, tmp_path):
    """qdq-u8 quantises the ops around the convolutions too, so ONNX Runtime fuses (nearly) every Conv into a
    QLinearConv instead of dequantising in front of a float Conv (which is slower than FP32)."""
    import onnxruntime as ort

    u8, mu8 = exported[("int8", "qdq-u8")]
    s8, _ = exported[("int8", "qdq-s8")]
    counts = {}
    for name, path in (("u8", u8), ("s8", s8)):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / f"{name}-opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
        counts[name] = ops
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(u8)).graph.node)
    assert counts["u8"]["QLinearConv"] >= 0.9 * n_conv, counts["u8"]
    assert counts["u8"]["QLinearConv"] > 2 * counts["s8"]["QLinearConv"], (counts["u8"], counts["s8"])
    assert mu8.parity["ort"]["dice_vs_torch"] > 0.9
    try:
        import openvino  # noqa: F401
    except ImportError:
        return
    # the CPU default graph runs on OpenVINO too: with OpenVINO installed its parity must be recorded
    assert mu8.parity["openvino"]["dice_vs_torch"] > 0.9


def test_calibration_cache_makes_reexport_skip_calibration(exported, calib, ckpt):
    path, _ = exported[("int8", "qdq-s8")]
    again = path.with_name("again.onnx")
    m = export_onnx("msnet_effl0", again, checkpoint=ckpt, precision="int8", input_hw=HW, calib_count=24, calib_method="minmax",
                    progress=False, log=lambda *a: None, **calib)
    assert m.export_config["calibration"]["cache_hit"] is True
    assert onnx.load(str(again)).graph == onnx.load(str(path)).graph


def _qdq_graph(zero_point, scale, bias_dq=False, act_scale_per_channel=False):
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.int8), "w")
    ws = numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(2, np.int8), "wz")
    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    z = numpy_helper.from_array(np.array(zero_point), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0),
    ]
    inits = [w, ws, wz, s, z]
    conv_in = ["xd", "wd"]
    if bias_dq:
        inits += [numpy_helper.from_array(np.zeros(2, np.int32), "b"), numpy_helper.from_array(np.zeros(2, np.int32),
                                                                                               "bz")]
        nodes.append(helper.make_node("DequantizeLinear", ["b", "ws", "bz"], ["bd"], name="bdq"))
        conv_in.append("bd")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_untrained_weights_are_the_same_in_every_process():
    """A cached "untrained" export must hold the weights this process's PyTorch reference holds; the global RNG is
    left alone."""
    import warnings

    import torch

    from export.onnx import load_for_export

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, info = load_for_export("gmsrf", None)
        b, _ = load_for_export("gmsrf", None)
    assert info["checkpoint"] == ""
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(torch.rand(3), before), "load_for_export must not move the caller's RNG"


def test_logit_head_of_a_multi_map_sum_stays_float(tmp_path):
    """msga sums four upsampled logit maps: all four prediction convolutions belong to the float head, not one."""
    import warnings

    import onnx

    from export.onnx import export_onnx
    from export.precision import head_nodes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx("msga", tmp_path / "g.onnx", input_hw=(64, 64), precision="fp32", progress=False,
                    log=lambda *a: None)
    m = onnx.load(str(tmp_path / "g.onnx"))
    head = set(head_nodes(m))
    ops = {n.name: n.op_type for n in m.graph.node}
    convs = sorted(n for n in head if ops[n] == "Conv")
    assert len(convs) == 4 and all("predict" in n for n in convs), convs
    assert not any(ops[n] in ("Shape", "Constant") for n in head)


def test_lint_rejects_what_tensorrt_rejects():
    assert lint_qdq_for_tensorrt(_qdq_graph(np.int8(0), 0.1)) == []
    assert any("non-zero zero point" in p for p in lint_qdq_for_tensorrt(_qdq_graph(np.int8(3), 0.1)))
    assert any("uint8" in p for p in lint_qdq_for_tensorrt(_qdq_graph(np.uint8(128), 0.1)))
    assert any("non-positive" in p for p in lint_qdq_for_tensorrt(_qdq_graph(np.int8(0), -0.1)))
    assert any("per-channel scale on an activation" in p
               for p in lint_qdq_for_tensorrt(_qdq_graph(np.zeros(2, np.int8), [0.1, 0.2])))
    assert any("quantised bias" in p for p in lint_qdq_for_tensorrt(_qdq_graph(np.int8(0), 0.1, bias_dq=True)))


def test_m2snet_exports_box_sum_form(tmp_path):
    with pytest.warns(UserWarning, match="untrained"):
        m = export_onnx("m2snet_effl0", tmp_path / "m2.onnx", input_hw=(64, 64), progress=False, log=lambda *a: None)
    g = onnx.load(str(tmp_path / "m2.onnx"))
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("Conv") == 73 + 0, "no dense all-ones convolutions: the fixed filters are box sums"
    assert "ReduceSum" in ops and "AveragePool" in ops
    # untrained weights give huge logits (~1e7): compare relative to their scale
    assert m.parity["ort"]["max_abs_diff"] < 1e-5 * m.parity["ort"]["ref_max_abs"]


def _run(mod: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", mod, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_bad_inputs_one_line_and_nothing_written(tmp_path, kvasir, reference_keys_dir):
    out = tmp_path / "x.onnx"
    r = _run("export.onnx", "--model", "unet", "--out", str(out))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "valid models" in r.stderr
    # a checkpoint of another model
    import torch

    from training import create_model, save_checkpoint

    ck = save_checkpoint(tmp_path / "m2.pt", create_model("m2snet_effl0"), "m2snet_effl0")
    r = _run("export.onnx", "--model", "msnet_effl0", "--checkpoint", str(ck), "--out", str(out))
    assert r.returncode == 1 and "is for model 'm2snet_effl0'" in r.stderr and r.stderr.strip().count("\n") == 0
    # missing calibration folder; folder with no images
    r = _run("export.onnx", "--model", "msnet_effl0", "--precision", "int8", "--calib-data", str(tmp_path / "no"),
             "--out", str(out))
    assert r.returncode == 1 and "does not exist" in r.stderr
    (tmp_path / "empty").mkdir()
    r = _run("export.onnx", "--model", "msnet_effl0", "--precision", "int8", "--calib-data", str(tmp_path / "empty"),
             "--out", str(out), "--input-size", "64", "64")
    assert r.returncode == 1 and "holds no images" in r.stderr
    # unwritable output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run("export.onnx", "--model", "msnet_effl0", "--out", str(blocker / "sub" / "x.onnx"))
    assert r.returncode == 1 and "cannot write" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not out.exists() and not manifest_path(out).exists()
    assert not list(tmp_path.glob(".x-*")), "no temporary export folder left behind"
    del torch


def test_trt_without_gpu_stops_after_onnx_with_exit_3(tmp_path):
    from runtime.cuda import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("this machine has a GPU: the engine path is exercised by the gpu tests")
    out = tmp_path / "m.engine"
    r = _run("export.trt", "--model", "msnet_effl0", "--fp16", "--no-progress", "--input-size", "64", "64", "--out", str(out))
    assert r.returncode == 3, r.stderr[-2000:]
    assert "No engine built: no CUDA device" in r.stderr and "on the target" in r.stderr.lower()
    assert out.with_suffix(".onnx").is_file() and manifest_path(out.with_suffix(".onnx")).is_file()
    assert not out.exists()
    assert Manifest.load(out.with_suffix(".onnx")).precision == "fp16"


def test_compare_table_on_real_frames(tmp_path, kvasir, ckpt):
    js = tmp_path / "cmp.json"
    r = _run("export.compare", "--model", "msnet_effl0", "--checkpoint", ckpt, "--data", str(kvasir), "--split",
             str(kvasir / "splits" / "val.txt"), "--limit", "6", "--input-size", "96", "96", "--precisions",
             "fp32,int8", "--calib-count", "16", "--calib-method", "minmax", "--work-dir", str(tmp_path / "w"),
             "--json", str(js))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(js.read_text())
    keys = {"precision", "max_abs_diff", "dice_vs_torch", "dice_vs_gt"}
    assert all(keys <= set(row) for row in rows)
    by = {(row["precision"], row["backend"], row["flavour"]): row for row in rows}
    assert by[("fp32", "ort", "")]["max_abs_diff"] < 1e-3 and by[("fp32", "ort", "")]["dice_vs_torch"] > 0.999
    assert by[("int8", "openvino", "qdq-s8")]["dice_vs_torch"] > 0.85
    assert by[("int8", "ort", "qdq-u8")]["dice_vs_torch"] > 0.85
    assert all(row["nonfinite"] == 0 for row in rows)
    assert "mDice/gt" in r.stdout

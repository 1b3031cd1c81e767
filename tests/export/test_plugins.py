"""Deploy graphs (`--plugins`): each fusable block is one plugin node the TensorRT ONNX parser maps to our plugin, and
the graph still computes what the reference graph computes — with the plugin nodes executed by the CUDA kernel
source on the CPU (kernels emulator) inside ONNX Runtime, on real Kvasir-SEG frames."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import training
from export.errors import ExportError
from export.onnx import collect_frames, export_fp32, export_onnx
from export.plugin_cpu import cpu_session
from export.plugins import PLUGIN_DOMAIN, make_deploy_graph, plugin_nodes
from kernels import ops
from kernels.plugin_library import PLUGIN_NAMESPACE, PLUGIN_VERSION, PLUGINS

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="kernels extension not built")


def _frames(kvasir, hw, n=2, model=None):
    spec = model.spec if model is not None else training.get_spec("msnet")
    frames, _ = collect_frames(str(kvasir), str(kvasir / "splits" / "val.txt"), n, hw, spec.mean, spec.std)
    return frames


def _perturb(model, seed=0):
    """Untrained nets have identity BatchNorms and zero attention gammas, which would hide wrong parameters: give
    every BN real statistics and every gamma a non-zero value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            if hasattr(m, "gamma") and isinstance(m.gamma, torch.nn.Parameter):
                m.gamma.fill_(0.6)
    return model


def _check_nodes(deploy, op, count):
    nodes = plugin_nodes(deploy)
    assert len(nodes) == count and {n.op_type for n in nodes} == {op}
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert n.domain == PLUGIN_DOMAIN
        assert attrs["plugin_version"] == PLUGIN_VERSION.encode() and attrs["plugin_namespace"] == PLUGIN_NAMESPACE.encode()
        assert set(attrs) - {"plugin_version", "plugin_namespace"} <= set(PLUGINS[op]), "attributes = creator fields"
    return nodes


def _parity(ref_model, deploy, frames, impl="kernel"):
    ref = ort.InferenceSession(ref_model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = cpu_session(deploy, impl)
    worst = 0.0
    for x in frames:
        r = ref.run(None, {"input": x})[0]
        d = sess.run(None, {"input": x})[0]
        assert np.isfinite(d).all()
        worst = max(worst, float(np.abs(d - r).max() / max(1.0, np.abs(r).max())))
        assert ((d > 0) == (r > 0)).mean() > 0.999
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("name,multiscale", [("msnet", False), ("m2snet", True)])
def test_official_models_deploy_graph_matches_reference(name, multiscale, kvasir, tmp_path):
    model = _perturb(training.create_model(name).eval())
    hw = model.spec.input_hw
    m = export_fp32(model, hw, tmp_path / "ref.onnx")
    deploy, blocks = make_deploy_graph(m, model)
    nodes = _check_nodes(deploy, "MultiScaleSubtraction", 10)
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert list(attrs["scales"]) == ([3, 5] if multiscale else [])
        assert len(attrs.get("bn", [])) == (4 * 64 if multiscale else 0)
    # the fused ops are gone from the model's own scope
    left = [n.op_type for n in deploy.graph.node if n.name.count("/") == 1 and n.op_type in ("Sub", "Abs")]
    assert not left, left
    assert not [n for n in deploy.graph.node if n.name.startswith("/conv_")], "M2SNet box sums fused"
    assert _parity(m, deploy, _frames(kvasir, hw, 1, model)) < 1e-5


@pytest.mark.slow
def test_guided_attention_deploy_graph_matches_reference(kvasir, tmp_path):
    model = _perturb(training.create_model("msga").eval())
    hw = (128, 128)  # flexible-size model: small input keeps the emulated PositionAttention quick
    m = export_fp32(model, hw, tmp_path / "ref.onnx")
    deploy, blocks = make_deploy_graph(m, model)
    n_pam = sum(type(x).__name__ == "PositionAttention" for x in model.modules())
    n_cam = sum(type(x).__name__ == "ChannelAttention" for x in model.modules())
    ops_ = [n.op_type for n in plugin_nodes(deploy)]
    assert ops_.count("PositionAttention") == n_pam > 0 and ops_.count("ChannelAttention") == n_cam > 0
    assert not [n for n in deploy.graph.node if n.op_type == "Softmax"], "every softmax was inside a fused block"
    for n in plugin_nodes(deploy):
        gamma = [a for a in n.attribute if a.name == "gamma"][0].f
        assert gamma == pytest.approx(0.6)
    assert _parity(m, deploy, _frames(kvasir, hw, 1, model)) < 1e-5


@pytest.fixture(scope="module")
def edge_exports(kvasir, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy")
    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for prec in ("fp32", "fp16"):
            man = export_onnx("msnet_effl0", out / f"e-{prec}.onnx", precision=prec, plugins=True, progress=False,
                              log=lambda *a: None, parity_frames=4)
            res[prec] = (man, onnx.load(str(out / f"e-{prec}.onnx")))
    return res


def test_trained_edge_model_deploy_graphs(edge_exports):
    """`export.onnx --plugins` on the shipped checkpoint: FP32 and FP16 deploy graphs, parity in the manifest."""
    for prec, (man, g) in edge_exports.items():
        _check_nodes(g, "MultiScaleSubtraction", 10)
        assert man.plugins == [{"name": "MultiScaleSubtraction", "version": PLUGIN_VERSION,
                                "namespace": PLUGIN_NAMESPACE, "count": 10, "blocks": man.plugins[0]["blocks"]}]
        p, r = man.parity["ort+plugins-cpu"], man.parity["ort"]
        assert p["nonfinite"] == 0
        if prec == "fp32":
            assert p["max_abs_diff"] < 1e-3 and p["dice_vs_torch"] > 0.999
        else:  # float16 kernel I/O: as close to PyTorch as the FP16 reference graph is
            assert p["dice_vs_torch"] > 0.99 and p["max_abs_diff"] < 2 * r["max_abs_diff"] + 1e-2
        ins = {i for n in plugin_nodes(g) for i in n.input}
        elem = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(g).graph.value_info}
        want = onnx.TensorProto.FLOAT16 if prec == "fp16" else onnx.TensorProto.FLOAT
        assert {elem.get(i) for i in ins} == {want}, "plugin I/O in the graph's compute precision"


def test_deploy_graph_is_refused_by_plain_onnxruntime(edge_exports, tmp_path):
    g = edge_exports["fp32"][1]
    with pytest.raises(Exception):
        ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])


def test_kernel_mutation_is_caught(kvasir, tmp_path, monkeypatch):
    """A wrong plugin (here: A and B swapped, so the coarser map is not upsampled) fails the parity check."""
    import export.plugin_cpu as P

    model = training.load_model("msnet_effl0", "msnet_effl0-kvasir").eval()
    hw = model.spec.input_hw
    m = export_fp32(model, hw, tmp_path / "ref.onnx")
    deploy, _ = make_deploy_graph(m, model)
    real = P._run_op

    def swapped(op, inputs, params, impl):
        a, b = inputs
        small = a[..., : a.shape[2], : a.shape[3]]
        return real(op, [b[..., : small.shape[2], : small.shape[3]], b], params, impl)

    monkeypatch.setattr(P, "_run_op", swapped)
    with pytest.raises(AssertionError):
        assert _parity(m, deploy, _frames(kvasir, hw, 1, model)) < 1e-3


def test_each_cpu_session_keeps_its_own_implementation(tmp_path, monkeypatch):
    """A "kernel" and a "reference" session of one deploy graph, created in that order, each run their own plugin
    implementation afterwards, in any order (the choice must not be process-global state that the last session
    created overrides)."""
    from kernels import reference as R

    model = training.create_model("msnet_effl0").eval()
    deploy, _ = make_deploy_graph(export_fp32(model, (64, 64), tmp_path / "ref.onnx"), model)
    ops._need_ext()
    ran: list[str] = []

    def spy(impl, fn):
        def wrapped(*args, **kwargs):
            ran.append(impl)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(ops._ext, "emu_mss", spy("kernel", ops._ext.emu_mss))  # the CUDA source on the emulator
    monkeypatch.setattr(R, "multi_scale_subtraction", spy("reference", R.multi_scale_subtraction))  # float64 NumPy
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)

    def implementations(sess):
        ran.clear()
        sess.run(None, {"input": x})
        return sorted(set(ran)), len(ran)

    kernel = cpu_session(deploy, "kernel")
    reference = cpu_session(deploy, "reference")
    assert implementations(kernel) == (["kernel"], 10)
    assert implementations(reference) == (["reference"], 10)
    cpu_session(deploy, "kernel")  # a later session of the other implementation changes neither
    assert implementations(reference) == (["reference"], 10)
    assert implementations(kernel) == (["kernel"], 10)


def test_models_without_blocks_are_refused(tmp_path):
    model = training.create_model("gmsrf").eval()
    m = onnx.ModelProto()
    with pytest.raises(ExportError, match="no plugin-eligible block"):
        make_deploy_graph(m, model)


def test_deploy_nodes_create_our_plugins_in_the_tensorrt_registry(tmp_path):
    """What TensorRT's ONNX parser does with a deploy node — creator by (op_type, plugin_version, plugin_namespace),
    attributes as PluginFields (INTS → INT32, FLOATS/FLOAT → FLOAT32) — done here through the lean runtime's
    registry with our built library, for every node of an MSNet, an M2SNet and a guided-attention deploy graph."""
    from kernels.plugin_library import find_plugin_library

    lib = find_plugin_library()
    if lib is None:
        pytest.skip("libpolypseg_trt_plugins.so not built (needs TensorRT headers: TENSORRT_INCLUDE_DIR)")
    trt = pytest.importorskip("tensorrt_lean")
    import gc

    reg = trt.get_plugin_registry()
    handle = reg.load_library(str(lib))
    created = []
    try:
        graphs = []
        for name, hw in (("msnet_effl0", (64, 64)), ("m2snet_effl0", (64, 64)), ("msga", (64, 64))):
            model = _perturb(training.create_model(name).eval())
            graphs.append(make_deploy_graph(export_fp32(model, hw, tmp_path / f"{name}.onnx"), model)[0])
        seen = set()
        for g in graphs:
            for n in plugin_nodes(g):
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                c = reg.get_creator(n.op_type, attrs["plugin_version"].decode(), attrs["plugin_namespace"].decode())
                assert c is not None, n.op_type
                declared = {f.name for f in c.field_names}
                fields = []
                for k, v in attrs.items():
                    if k not in declared:
                        continue  # the parser reads only declared fields
                    arr = np.asarray(v if isinstance(v, (list, tuple)) else [v])
                    is_int = arr.dtype.kind in "iu" or (arr.size == 0 and k == "scales")
                    arr = arr.astype(np.int32 if is_int else np.float32)
                    fields.append(trt.PluginField(k, arr, trt.PluginFieldType.INT32 if is_int
                                                  else trt.PluginFieldType.FLOAT32))
                created.append(c.create_plugin(n.name, trt.PluginFieldCollection(fields), trt.TensorRTPhase.BUILD))
                assert created[-1] is not None, f"{n.name}: our creator refused the node's attributes"
                seen.add(n.op_type)
        assert seen == {"MultiScaleSubtraction", "PositionAttention", "ChannelAttention"}
    finally:
        created.clear()  # plugin objects must die before their library is unloaded
        gc.collect()
        reg.deregister_library(handle)


def test_fp16_m2snet_deploy_graph_reads_the_float16_tensors(tmp_path):
    """FP16 graphs keep ReduceSum in float32 behind Cast nodes; the plugin takes the float16 block inputs and the
    casts die with the block (no dangling Cast, no third input)."""
    from export.precision import to_fp16

    model = training.create_model("m2snet_effl0").eval()
    m16, _ = to_fp16(export_fp32(model, (64, 64), tmp_path / "ref.onnx"))
    deploy, blocks = make_deploy_graph(m16, model)
    assert len(blocks) == 10 and all(len(b.inputs) == 2 for b in blocks)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(m16).graph.value_info}
    assert {elem[i] for b in blocks for i in b.inputs} == {onnx.TensorProto.FLOAT16}
    assert not [n for n in deploy.graph.node if n.op_type in ("ReduceSum", "AveragePool")]

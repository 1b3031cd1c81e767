"""TensorRT deploy graphs: each fusable block of an exported graph becomes one plugin node.

A *deploy graph* is the exported graph (any precision: FP32, FP16 mixed, INT8 Q/DQ) in which every eligible block is
replaced by one node whose ``op_type`` is the plugin name, with the string attributes ``plugin_version`` and
``plugin_namespace``, so TensorRT's ONNX parser hands it to our ``IPluginCreatorV3One`` (the ONNX domain is ignored
by the parser; ours is ``polypseg``):

* ``MultiScaleSubtraction(A, B)`` — every subtraction unit of MSNet/M2SNet and the edge variants (``Resize → Sub →
  Abs``, plus M2SNet's box sums, BN, ReLU, Sub, Abs, Add); attributes ``scales`` (INTS, [] or [3, 5]) and ``bn``
  (FLOATS, 4·C: g3, h3, g5, h5 of the folded BatchNorms).
* ``PositionAttention(Q, K, V, X)`` and ``ChannelAttention(X)`` — the DANet blocks of the guided-attention net;
  attribute ``gamma`` (FLOAT).

The rewrite works on the exported graph, not on the PyTorch model, so precision work (FP16 conversion, INT8
calibration with its cache) stays on the reference graph, which ONNX Runtime can run: the blocks are found from the
exporter's module scopes (``/x5_x4/x5_x4.0/Conv``, ``/pam_attention_1_1/attn/attn.3/…``), each block's inputs are
the float tensors that enter it from outside, its output keeps its tensor name (so nothing downstream is rewired),
and the nodes no longer needed are removed. Every rewrite is checked numerically by
:func:`export.plugin_cpu.cpu_session`, which runs the plugin nodes with the very CUDA kernel source, executed on the
CPU (``kernels`` emulator), inside ONNX Runtime. The graph machinery itself (index, slices, dead code) is
:mod:`export.graph`.

Example::

    from export.plugins import make_deploy_graph
    from export.plugin_cpu import cpu_session
    deploy, blocks = make_deploy_graph(onnx.load("msnet.onnx"), torch_model)
    sess = cpu_session(deploy)                      # plugin nodes = the kernel source on the CPU
    logits = sess.run(None, {"input": x})[0]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from kernels.kernel_constants import kernel_constants
from kernels.plugin_library import PLUGIN_NAMESPACE, PLUGIN_VERSION

from .errors import ExportError
from .graph import QDQ, GraphIndex, backward_slice, check_ops, dead_code_elimination, make_attribute

__all__ = ["PLUGIN_DOMAIN", "Block", "find_blocks", "make_deploy_graph", "plugin_nodes", "plugin_summary"]

# the plugins' input limits, from their one definition in the kernels' .cuh
PAM_MAX_D = kernel_constants("pam")["kMaxD"]
CAM_MAX_C = kernel_constants("cam")["kMaxC"]
PLUGIN_DOMAIN = "polypseg"
# ops a fused block may contain (anything else means the scope matched more than the block: refuse)
_MSS_OPS = {"Resize", "Sub", "Abs", "Add", "ReduceSum", "AveragePool", "Mul", "Expand", "BatchNormalization", "Relu",
            "Cast", "Shape", "Gather", "Concat", "Unsqueeze", "Slice", "Where", "Equal", "ConstantOfShape",
            "Constant", "Identity", "Reshape", "Div", "Floor"} | QDQ
_ATTN_OPS = {"Reshape", "Transpose", "MatMul", "Softmax", "ReduceMax", "Sub", "Mul", "Add", "Cast", "Shape", "Gather",
             "Concat", "Unsqueeze", "Slice", "Constant", "Identity", "Flatten", "Squeeze", "Exp", "ReduceSum", "Div",
             "Neg"} | QDQ
_ROOT_SCOPE = re.compile(r"^/[^/]+$")  # nodes of the model's own forward (e.g. "/Sub_3")
_FIXED_CONV_SCOPE = re.compile(r"^/conv_[35](_\d+)?/")  # M2SNet's shared box-sum modules (conv_3, conv_5)


@dataclass
class Block:
    """One fused block of a deploy graph."""

    op: str  # plugin name
    name: str  # block name in the model (subtraction unit, or module path)
    inputs: list[str]  # boundary tensors, in plugin input order
    output: str  # output tensor (name kept from the reference graph)
    attrs: dict[str, Any] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # reference nodes the plugin stands for


# --------------------------------------------------------------------------------------------- block finders
def _fold_bn(bn) -> tuple[np.ndarray, np.ndarray]:
    g = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()
    h = (bn.bias.detach().double() - bn.running_mean.double() * g)
    return g.numpy().astype(np.float32), h.numpy().astype(np.float32)


def _mss_blocks(ix: GraphIndex, model) -> list[Block]:
    from training.models.msnet import SUBTRACTION_UNITS

    attrs: dict[str, Any] = {"scales": []}
    if model.multiscale:
        g3, h3 = _fold_bn(model.conv_3.norm)
        g5, h5 = _fold_bn(model.conv_5.norm)
        attrs = {"scales": [3, 5], "bn": np.concatenate([g3, h3, g5, h5]).tolist()}

    def internal(n: onnx.NodeProto) -> bool:
        return bool(_ROOT_SCOPE.match(n.name) or _FIXED_CONV_SCOPE.match(n.name))

    blocks = []
    for unit in SUBTRACTION_UNITS:
        conv = next((n for n in ix.graph.node if n.op_type == "Conv" and n.name.startswith(f"/{unit}/")), None)
        if conv is None:
            raise ExportError(f"subtraction unit {unit}: its convolution /{unit}/…/Conv is not in the graph")
        d = conv.input[0]
        while ix.producer.get(d) is not None and ix.producer[d].op_type in QDQ:  # INT8: the float tensor before Q/DQ
            d = ix.producer[d].input[0]
        nodes, boundary = backward_slice(ix, d, internal)
        check_ops(unit, nodes, _MSS_OPS)
        if len(boundary) != 2:
            raise ExportError(f"subtraction unit {unit}: expected 2 inputs, found {len(boundary)} ({boundary})")
        resized = {i for n in nodes if n.op_type == "Resize" for i in n.input[:1]}
        a, b = (boundary if boundary[0] in resized or boundary[1] not in resized else boundary[::-1])
        sa, sb, sd = ix.shape(a), ix.shape(b), ix.shape(d)
        if sa and sb and sd and (sb != sd or sa[1] != sb[1] or sa[2] > sb[2] or sa[3] > sb[3]):
            raise ExportError(f"subtraction unit {unit}: shapes A {sa}, B {sb}, out {sd} do not fit the plugin")
        if attrs.get("bn") and sb and len(attrs["bn"]) != 4 * sb[1]:
            raise ExportError(f"subtraction unit {unit}: {sb[1]} channels but BN parameters for {len(attrs['bn']) // 4}")
        blocks.append(Block("MultiScaleSubtraction", unit, [a, b], d, dict(attrs), [n.name for n in nodes]))
    return blocks


def _scope(qualname: str) -> str:
    """TorchScript-exporter scope of a module: ``a.attn.3`` → ``/a/attn/attn.3/``."""
    parts, comps = qualname.split("."), []
    for i, p in enumerate(parts):
        comps.append(f"{parts[i - 1]}.{p}" if p.isdigit() and i > 0 else p)
    return "/" + "/".join(comps) + "/"


def _attention_blocks(ix: GraphIndex, model) -> list[Block]:
    from training.models.blocks import ChannelAttention, PositionAttention

    blocks = []
    for qual, mod in model.named_modules():
        if not isinstance(mod, (PositionAttention, ChannelAttention)):
            continue
        pam = isinstance(mod, PositionAttention)
        scope = _scope(qual)
        subs = tuple(f"{scope}{s}/" for s in ("query_conv", "key_conv", "value_conv")) if pam else ()

        def internal(n: onnx.NodeProto, scope=scope, subs=subs) -> bool:
            return n.name.startswith(scope) and not n.name.startswith(subs)

        inside = [n for n in ix.graph.node if internal(n)]
        if not inside:
            raise ExportError(f"attention block {qual}: no node with scope {scope} in the graph")
        names = {id(n) for n in inside}
        outs = [o for n in inside for o in n.output if o and (
            o in ix.graph_outputs or any(id(c) not in names for c in ix.consumers.get(o, [])))]
        if len(outs) != 1:
            raise ExportError(f"attention block {qual}: expected one output, found {outs}")
        nodes, boundary = backward_slice(ix, outs[0], internal)
        check_ops(qual, nodes, _ATTN_OPS)
        gamma = float(mod.gamma.detach().reshape(-1)[0])
        if pam:
            role = {}
            for t in boundary:
                o = ix.origin(t)
                key = next((s for s in ("query_conv", "key_conv", "value_conv") if o is not None
                            and o.name.startswith(f"{scope}{s}/")), "x")
                role[key] = t
            if sorted(role) != ["key_conv", "query_conv", "value_conv", "x"] or len(boundary) != 4:
                raise ExportError(f"attention block {qual}: could not identify Q, K, V, X among {boundary}")
            inputs = [role["query_conv"], role["key_conv"], role["value_conv"], role["x"]]
            sq = ix.shape(inputs[0])
            if sq and sq[1] > PAM_MAX_D:
                raise ExportError(f"attention block {qual}: query width {sq[1]} above the plugin's limit of {PAM_MAX_D}")
        else:
            if len(boundary) != 1:
                raise ExportError(f"attention block {qual}: expected one input, found {boundary}")
            inputs = boundary
            sx = ix.shape(inputs[0])
            if sx and sx[1] > CAM_MAX_C:
                raise ExportError(f"attention block {qual}: {sx[1]} channels, above the plugin's limit of {CAM_MAX_C}")
        blocks.append(Block("PositionAttention" if pam else "ChannelAttention", qual, inputs, outs[0],
                            {"gamma": gamma}, [n.name for n in nodes]))
    return blocks


def find_blocks(m: onnx.ModelProto, model) -> list[Block]:
    """The plugin-eligible blocks of an exported graph of ``model`` (a registry model instance)."""
    from training.models.blocks import ChannelAttention, PositionAttention
    from training.models.msnet import MSNet

    if isinstance(model, MSNet):
        return _mss_blocks(GraphIndex(m), model)
    if any(isinstance(x, (PositionAttention, ChannelAttention)) for x in model.modules()):
        return _attention_blocks(GraphIndex(m), model)
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    raise ExportError(f"{name} has no plugin-eligible block (MultiScaleSubtraction: msnet, m2snet and their edge "
                      "variants; PositionAttention/ChannelAttention: msga); export it without --plugins")


# --------------------------------------------------------------------------------------------- rewrite
def make_deploy_graph(m: onnx.ModelProto, model) -> tuple[onnx.ModelProto, list[Block]]:
    """Copy of ``m`` with every eligible block of ``model`` as one plugin node; returns (graph, blocks)."""
    from .precision import toposort

    blocks = find_blocks(m, model)
    out = onnx.ModelProto()
    out.CopyFrom(m)
    g = out.graph
    replaced = {b.output for b in blocks}
    kept = [n for n in g.node if not any(o in replaced for o in n.output)]
    del g.node[:]
    g.node.extend(kept)
    for i, b in enumerate(blocks):
        node = helper.make_node(b.op, b.inputs, [b.output], name=f"{b.op}_{i}_{b.name}", domain=PLUGIN_DOMAIN,
                                plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
        node.attribute.extend(make_attribute(k, v) for k, v in b.attrs.items())
        g.node.append(node)
    toposort(g)  # before the reverse sweep of the dead-code elimination
    dead_code_elimination(g)
    if not any(o.domain == PLUGIN_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    # every tensor a remaining node reads must still be produced
    produced = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | {i.name for i in g.input}
    missing = sorted({i for n in g.node for i in n.input if i and i not in produced})
    if missing:
        raise ExportError(f"deploy graph is disconnected: {missing[:5]} no longer produced (a fused region was shared "
                          "with the rest of the graph)")
    onnx.checker.check_model(out)
    return out, blocks


def plugin_nodes(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in m.graph.node if n.domain == PLUGIN_DOMAIN]


def plugin_summary(blocks: Sequence[Block]) -> list[dict[str, Any]]:
    """Manifest entries: one per plugin op, with its count and the blocks it replaces."""
    ops: dict[str, dict[str, Any]] = {}
    for b in blocks:
        e = ops.setdefault(b.op, {"name": b.op, "version": PLUGIN_VERSION, "namespace": PLUGIN_NAMESPACE,
                                  "count": 0, "blocks": []})
        e["count"] += 1
        e["blocks"].append(b.name)
    return list(ops.values())

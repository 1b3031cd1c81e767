"""TensorRT deploy graphs: each fusable block becomes one plugin node, and those nodes run on the CPU for checking.

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
and the nodes no longer needed are removed. Every rewrite is checked numerically by :func:`cpu_session`, which runs
the plugin nodes with the very CUDA kernel source, executed on the CPU (``kernels`` emulator), inside ONNX Runtime.

Example::

    from export.plugins import make_deploy_graph, cpu_session
    deploy, blocks = make_deploy_graph(onnx.load("msnet.onnx"), torch_model)
    sess = cpu_session(deploy)                      # plugin nodes = the kernel source on the CPU
    logits = sess.run(None, {"input": x})[0]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from kernels.plugin_library import PLUGIN_NAMESPACE, PLUGIN_VERSION

from .errors import ExportError

__all__ = ["Block", "PLUGIN_DOMAIN", "cpu_session", "find_blocks", "make_deploy_graph", "plugin_nodes",
           "plugin_summary"]

PLUGIN_DOMAIN = "polypseg"
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
# ops a fused block may contain (anything else means the scope matched more than the block: refuse)
_MSS_OPS = {"Resize", "Sub", "Abs", "Add", "ReduceSum", "AveragePool", "Mul", "Expand", "BatchNormalization", "Relu",
            "Cast", "Shape", "Gather", "Concat", "Unsqueeze", "Slice", "Where", "Equal", "ConstantOfShape",
            "Constant", "Identity", "Reshape", "Div", "Floor"} | _QDQ
_ATTN_OPS = {"Reshape", "Transpose", "MatMul", "Softmax", "ReduceMax", "Sub", "Mul", "Add", "Cast", "Shape", "Gather",
             "Concat", "Unsqueeze", "Slice", "Constant", "Identity", "Flatten", "Squeeze", "Exp", "ReduceSum", "Div",
             "Neg"} | _QDQ
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


# --------------------------------------------------------------------------------------------- graph index
class _Index:
    def __init__(self, m: onnx.ModelProto) -> None:
        self.graph = m.graph
        self.producer = {o: n for n in m.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in m.graph.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name for t in m.graph.initializer}
        self.graph_inputs = {i.name for i in m.graph.input}
        self.graph_outputs = {o.name for o in m.graph.output}
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            self.types[vi.name] = vi.type
        self.init_types = {t.name: t.data_type for t in m.graph.initializer}

    def elem_type(self, name: str) -> int:
        if name in self.init_types:
            return self.init_types[name]
        t = self.types.get(name)
        return t.tensor_type.elem_type if t is not None else TensorProto.UNDEFINED

    def shape(self, name: str) -> list[int] | None:
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.tensor_type.shape.dim]
        return dims

    def is_float(self, name: str) -> bool:
        return self.elem_type(name) in _FLOAT_TYPES

    def origin(self, name: str) -> onnx.NodeProto | None:
        """The node that computes ``name``, looking through Q/DQ and Cast."""
        n = self.producer.get(name)
        while n is not None and (n.op_type in _QDQ or n.op_type == "Cast"):
            n = self.producer.get(n.input[0])
        return n


def _slice(ix: _Index, output: str, internal: Callable[[onnx.NodeProto], bool]) -> tuple[list[onnx.NodeProto], list[str]]:
    """Nodes computing ``output`` back to the first non-internal producers; returns (nodes, float boundary tensors in
    first-seen order). Initializers, Constant nodes and integer (shape) tensors from outside are not boundaries."""
    nodes: list[onnx.NodeProto] = []
    seen_nodes: set[int] = set()
    boundary: list[str] = []
    stack, seen = [output], set()
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in ix.initializers:
            continue
        p = ix.producer.get(t)
        if p is not None and p.op_type == "Constant":
            continue
        if p is not None and internal(p):
            if id(p) not in seen_nodes:
                seen_nodes.add(id(p))
                nodes.append(p)
                stack.extend(reversed([i for i in p.input if i]))
            continue
        if p is not None and (p.op_type == "Cast" or p.op_type in _QDQ) and ix.is_float(p.input[0]):
            # a precision cast or Q/DQ pair the converters put between the block and its input (e.g. FP16 graphs
            # keep ReduceSum in float32): the plugin reads the source tensor; the cast dies with the block
            stack.append(p.input[0])
            continue
        if ix.is_float(t) and t not in boundary:
            boundary.append(t)
    return nodes, boundary


def _check_ops(block: str, nodes: Iterable[onnx.NodeProto], allowed: set[str]) -> None:
    bad = sorted({n.op_type for n in nodes if n.op_type not in allowed})
    if bad:
        raise ExportError(f"block {block}: unexpected ops {bad} inside the fused region; the exporter's graph changed "
                          "shape — report it with the model name and the ONNX file")


# --------------------------------------------------------------------------------------------- block finders
def _fold_bn(bn) -> tuple[np.ndarray, np.ndarray]:
    g = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()
    h = (bn.bias.detach().double() - bn.running_mean.double() * g)
    return g.numpy().astype(np.float32), h.numpy().astype(np.float32)


def _mss_blocks(ix: _Index, model) -> list[Block]:
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
        while ix.producer.get(d) is not None and ix.producer[d].op_type in _QDQ:  # INT8: the float tensor before Q/DQ
            d = ix.producer[d].input[0]
        nodes, boundary = _slice(ix, d, internal)
        _check_ops(unit, nodes, _MSS_OPS)
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


def _attention_blocks(ix: _Index, model) -> list[Block]:
    from training.models.msga import ChannelAttention, PositionAttention

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
        nodes, boundary = _slice(ix, outs[0], internal)
        _check_ops(qual, nodes, _ATTN_OPS)
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
            if sq and sq[1] > 64:
                raise ExportError(f"attention block {qual}: query width {sq[1]} above the plugin's limit of 64")
        else:
            if len(boundary) != 1:
                raise ExportError(f"attention block {qual}: expected one input, found {boundary}")
            inputs = boundary
            sx = ix.shape(inputs[0])
            if sx and sx[1] > 2048:
                raise ExportError(f"attention block {qual}: {sx[1]} channels, above the plugin's limit of 2048")
        blocks.append(Block("PositionAttention" if pam else "ChannelAttention", qual, inputs, outs[0],
                            {"gamma": gamma}, [n.name for n in nodes]))
    return blocks


def find_blocks(m: onnx.ModelProto, model) -> list[Block]:
    """The plugin-eligible blocks of an exported graph of ``model`` (a registry model instance)."""
    from training.models.msga import ChannelAttention, PositionAttention
    from training.models.msnet import MSNet

    if isinstance(model, MSNet):
        return _mss_blocks(_Index(m), model)
    if any(isinstance(x, (PositionAttention, ChannelAttention)) for x in model.modules()):
        return _attention_blocks(_Index(m), model)
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    raise ExportError(f"{name} has no plugin-eligible block (MultiScaleSubtraction: msnet, m2snet and their edge "
                      "variants; PositionAttention/ChannelAttention: msga); export it without --plugins")


# --------------------------------------------------------------------------------------------- rewrite
def _attribute(name: str, value: Any) -> AttributeProto:
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return helper.make_attribute(name, value, attr_type=AttributeProto.INTS)
        return helper.make_attribute(name, [float(v) for v in value], attr_type=AttributeProto.FLOATS)
    return helper.make_attribute(name, value)


def _dead_code_elimination(g: onnx.GraphProto) -> None:
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vis)


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
        node.attribute.extend(_attribute(k, v) for k, v in b.attrs.items())
        g.node.append(node)
    toposort(g)  # before the reverse sweep of the dead-code elimination
    _dead_code_elimination(g)
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


# --------------------------------------------------------------------------------------------- CPU execution
_CONTRIB = "ai.onnx.contrib"  # the only domain onnxruntime-extensions' Python ops live in
_IMPLS = ("kernel", "reference")
_impl = {"name": "kernel"}
_registered: set[str] = set()


def _run_op(op: str, inputs: Sequence[np.ndarray], params: dict[str, Any]) -> np.ndarray:
    from kernels import ops as kops
    from kernels import reference as R

    dtype = inputs[0].dtype
    if _impl["name"] == "reference":
        xs = [np.asarray(x, np.float64) for x in inputs]
        if op == "MultiScaleSubtraction":
            bn = np.asarray(params.get("bn", []), np.float64).reshape(4, -1) if params.get("scales") else None
            r = R.multi_scale_subtraction(xs[0], xs[1], *(((bn[0], bn[1]), (bn[2], bn[3])) if bn is not None
                                                           else (None, None)))
        elif op == "PositionAttention":
            b, c, h, w = xs[2].shape
            r = R.position_attention(*(x.reshape(x.shape[0], x.shape[1], -1) for x in xs), params["gamma"])
            r = r.reshape(b, c, h, w)
        else:
            b, c, h, w = xs[0].shape
            r = R.channel_attention(xs[0].reshape(b, c, -1), params["gamma"]).reshape(b, c, h, w)
        return r.astype(dtype)
    kops._need_ext()
    xs = [np.ascontiguousarray(x) for x in inputs]
    if op == "MultiScaleSubtraction":
        out = np.empty(xs[1].shape, dtype)
        bn = (np.asarray(params["bn"], np.float32).reshape(4, -1) if params.get("scales") else None)
        kops._ext.emu_mss(xs[0], xs[1], out, bn)
        return out
    if op == "PositionAttention":
        q, k, v, x = xs
        out = np.empty(x.shape, dtype)
        flat = [t.reshape(t.shape[0], t.shape[1], -1) for t in (q, k, v, x, out)]
        kops._ext.emu_pam(*flat, float(params["gamma"]))
        return out
    out = np.empty(xs[0].shape, dtype)
    kops._ext.emu_cam(xs[0].reshape(*xs[0].shape[:2], -1), out.reshape(*out.shape[:2], -1), float(params["gamma"]))
    return out


_ARITY = {"MultiScaleSubtraction": 2, "PositionAttention": 4, "ChannelAttention": 1}


def _register(op: str, half: bool) -> str:
    """Register (once) a Python custom op running ``op``; returns its op_type.

    onnxruntime-extensions' Python ops take float32 only, so a float16 plugin node is run as Cast → op → Cast with
    the op converting back to float16 inside (exact: the values came from float16) and running the float16 kernel.
    """
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    op_type = f"Polypseg{op}_{'f16' if half else 'f32'}"
    if op_type not in _registered:
        t = PyCustomOpDef.dt_float

        @onnx_op(op_type=op_type, inputs=[t] * _ARITY[op], outputs=[t], attrs={"params": PyCustomOpDef.dt_string})
        def _fn(*args, params, _op=op, _half=half):  # noqa: ANN001
            xs = [np.asarray(a, np.float16) for a in args] if _half else list(args)
            return np.asarray(_run_op(_op, xs, json.loads(params)), np.float32)

        _registered.add(op_type)
    return op_type


def _node_params(n: onnx.NodeProto) -> dict[str, Any]:
    p: dict[str, Any] = {}
    for a in n.attribute:
        if a.name in ("plugin_version", "plugin_namespace"):
            continue
        v = helper.get_attribute_value(a)
        p[a.name] = list(v) if isinstance(v, (list, tuple)) or a.type in (AttributeProto.INTS, AttributeProto.FLOATS) \
            else v
    return p


def cpu_session(m: onnx.ModelProto, impl: str = "kernel", threads: int | None = None):
    """ONNX Runtime session of a deploy graph whose plugin nodes run on the CPU.

    ``impl="kernel"`` executes the plugins' CUDA kernel source through the CPU emulator (the code TensorRT runs);
    ``"reference"`` uses the float64 NumPy references of ``kernels.reference``. The graph is rewritten in memory only
    (domain ``ai.onnx.contrib``, parameters as one JSON string): onnxruntime-extensions Python ops accept scalar
    attributes only.
    """
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    _impl["name"] = impl
    ix = _Index(m)
    run = onnx.ModelProto()
    run.CopyFrom(m)
    nodes: list[onnx.NodeProto] = []
    for n in run.graph.node:
        if n.domain != PLUGIN_DOMAIN:
            nodes.append(n)
            continue
        elem = ix.elem_type(n.input[0])
        if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            raise ExportError(f"{n.name}: plugin nodes take float32 or float16 tensors, got ONNX type {elem}")
        half = elem == TensorProto.FLOAT16
        params = _node_params(n)
        ins, out = list(n.input), n.output[0]
        if half:
            nodes += [helper.make_node("Cast", [t], [f"{t}__f32_{n.name}"], to=TensorProto.FLOAT) for t in ins]
            ins, out = [f"{t}__f32_{n.name}" for t in ins], f"{out}__f32"
        nodes.append(helper.make_node(_register(n.op_type, half), ins, [out], name=n.name, domain=_CONTRIB,
                                      params=json.dumps(params)))
        if half:
            nodes.append(helper.make_node("Cast", [out], [n.output[0]], to=TensorProto.FLOAT16))
    del run.graph.node[:]
    run.graph.node.extend(nodes)
    if not any(o.domain == _CONTRIB for o in run.opset_import):
        run.opset_import.append(helper.make_opsetid(_CONTRIB, 1))
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(run.SerializeToString(), so, providers=["CPUExecutionProvider"])

"""ONNX graph utilities for the export code: an index of producers, consumers and inferred types, backward slices,
op checks, dead-code elimination and attribute construction.

Nothing here knows about plugins or models; :mod:`export.plugins` builds the deploy-graph rewrite on top of it.

Example::

    ix = GraphIndex(onnx.load("msnet.onnx"))
    nodes, inputs = backward_slice(ix, "logits", lambda n: n.name.startswith("/head/"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto, helper

from .errors import ExportError

__all__ = ["FLOAT_TYPES", "QDQ", "GraphIndex", "backward_slice", "check_ops", "dead_code_elimination",
           "make_attribute"]

QDQ = {"QuantizeLinear", "DequantizeLinear"}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


class GraphIndex:
    """Producers, consumers, initializers, graph I/O and (shape-inferred) types of one graph's tensors."""

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
        """Dimensions of ``name`` (-1 where symbolic), or None if its shape is unknown."""
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else -1 for d in t.tensor_type.shape.dim]

    def is_float(self, name: str) -> bool:
        return self.elem_type(name) in FLOAT_TYPES

    def origin(self, name: str) -> onnx.NodeProto | None:
        """The node that computes ``name``, looking through Q/DQ and Cast."""
        n = self.producer.get(name)
        while n is not None and (n.op_type in QDQ or n.op_type == "Cast"):
            n = self.producer.get(n.input[0])
        return n


def backward_slice(ix: GraphIndex, output: str,
                   internal: Callable[[onnx.NodeProto], bool]) -> tuple[list[onnx.NodeProto], list[str]]:
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
        if p is not None and (p.op_type == "Cast" or p.op_type in QDQ) and ix.is_float(p.input[0]):
            # a precision cast or Q/DQ pair the converters put between the region and its input (e.g. FP16 graphs
            # keep ReduceSum in float32): the region reads the source tensor; the cast belongs to the region
            stack.append(p.input[0])
            continue
        if ix.is_float(t) and t not in boundary:
            boundary.append(t)
    return nodes, boundary


def check_ops(region: str, nodes: Iterable[onnx.NodeProto], allowed: set[str]) -> None:
    """Refuse a region holding an op outside ``allowed`` (its scope matched more than intended)."""
    bad = sorted({n.op_type for n in nodes if n.op_type not in allowed})
    if bad:
        raise ExportError(f"block {region}: unexpected ops {bad} inside the fused region; the exporter's graph changed "
                          "shape — report it with the model name and the ONNX file")


def make_attribute(name: str, value: Any) -> AttributeProto:
    """An attribute whose lists are typed INTS when every item is an int, FLOATS otherwise (also for ``[]``: INTS)."""
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return helper.make_attribute(name, value, attr_type=AttributeProto.INTS)
        return helper.make_attribute(name, [float(v) for v in value], attr_type=AttributeProto.FLOATS)
    return helper.make_attribute(name, value)


def dead_code_elimination(g: onnx.GraphProto) -> None:
    """Drop, in place, the nodes, initializers and value_infos no graph output depends on (``g`` topologically
    sorted)."""
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

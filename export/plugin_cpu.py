"""CPU execution of deploy graphs: ONNX Runtime sessions whose plugin nodes run as onnxruntime-extensions Python ops.

Two implementations of every plugin (:data:`IMPLS`):

* ``"kernel"`` — the plugins' CUDA kernel source, executed on the CPU by the ``kernels`` emulator (the code TensorRT
  runs), in the graph's precision (float16 kernels for float16 nodes);
* ``"reference"`` — the float64 NumPy references of :mod:`kernels.reference`.

Each session carries its own implementation. onnxruntime-extensions keeps one process-wide table of Python ops, keyed
by op type in the domain ``ai.onnx.contrib``, so the implementation is part of the op type: a plugin node
``MultiScaleSubtraction`` becomes ``PolypsegMultiScaleSubtraction_kernel_f32`` (or ``…_reference_f16``, …) in the
session's private copy of the graph, and each such op, registered once per process (all of them before the first
session), always runs the implementation its name says. Sessions of either implementation coexist in one process.

Example::

    from export.plugin_cpu import cpu_session
    k = cpu_session(deploy, "kernel")       # the kernel source on the CPU
    r = cpu_session(deploy, "reference")    # float64 NumPy; k still runs the kernel source
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from .errors import ExportError
from .graph import GraphIndex
from .plugins import PLUGIN_DOMAIN

__all__ = ["IMPLS", "cpu_session"]

IMPLS = ("kernel", "reference")
_CONTRIB = "ai.onnx.contrib"  # the only domain onnxruntime-extensions' Python ops live in
_ARITY = {"MultiScaleSubtraction": 2, "PositionAttention": 4, "ChannelAttention": 1}


def _reference(op: str, inputs: Sequence[np.ndarray], params: dict[str, Any]) -> np.ndarray:
    from kernels import reference as R

    dtype = inputs[0].dtype
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


def _kernel(op: str, inputs: Sequence[np.ndarray], params: dict[str, Any]) -> np.ndarray:
    from kernels import ops as kops

    kops._need_ext()
    dtype = inputs[0].dtype
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


def _run_op(op: str, inputs: Sequence[np.ndarray], params: dict[str, Any], impl: str) -> np.ndarray:
    """Plugin ``op`` on ``inputs`` (in the node's precision) with implementation ``impl``."""
    return (_reference if impl == "reference" else _kernel)(op, inputs, params)


def _op_type(op: str, half: bool, impl: str) -> str:
    """The Python op running plugin ``op`` for ``half``-precision nodes with implementation ``impl``."""
    return f"Polypseg{op}_{impl}_{'f16' if half else 'f32'}"


@functools.cache
def _register_all() -> None:
    """Register, once per process, the Python op of every plugin × precision × implementation.

    All of them at once, before the first session: registering a Python op after a session exists invalidates that
    session's ops in onnxruntime-extensions (its next run crashes the process). onnxruntime-extensions' Python ops
    take float32 only, so a float16 plugin node is run as Cast → op → Cast with the op converting back to float16
    inside (exact: the values came from float16) and running the float16 kernel.
    """
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    t = PyCustomOpDef.dt_float
    for op, arity in _ARITY.items():
        for half in (False, True):
            for impl in IMPLS:
                @onnx_op(op_type=_op_type(op, half, impl), inputs=[t] * arity, outputs=[t],
                         attrs={"params": PyCustomOpDef.dt_string})
                def _fn(*args, params, _op=op, _half=half, _impl=impl):
                    xs = [np.asarray(a, np.float16) for a in args] if _half else list(args)
                    return np.asarray(_run_op(_op, xs, json.loads(params), _impl), np.float32)


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
    """ONNX Runtime session of a deploy graph whose plugin nodes run on the CPU with implementation ``impl``.

    ``impl="kernel"`` executes the plugins' CUDA kernel source through the CPU emulator (the code TensorRT runs);
    ``"reference"`` uses the float64 NumPy references of ``kernels.reference``. The choice belongs to this session
    only. The graph is rewritten in memory only (domain ``ai.onnx.contrib``, op type naming the implementation,
    parameters as one JSON string): onnxruntime-extensions Python ops accept scalar attributes only.
    """
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _register_all()
    ix = GraphIndex(m)
    run = onnx.ModelProto()
    run.CopyFrom(m)
    nodes: list[onnx.NodeProto] = []
    for n in run.graph.node:
        if n.domain != PLUGIN_DOMAIN:
            nodes.append(n)
            continue
        if n.op_type not in _ARITY:
            raise ExportError(f"{n.name}: no CPU implementation of plugin {n.op_type} (known: {sorted(_ARITY)})")
        elem = ix.elem_type(n.input[0])
        if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            raise ExportError(f"{n.name}: plugin nodes take float32 or float16 tensors, got ONNX type {elem}")
        half = elem == TensorProto.FLOAT16
        params = _node_params(n)
        ins, out = list(n.input), n.output[0]
        if half:
            nodes += [helper.make_node("Cast", [t], [f"{t}__f32_{n.name}"], to=TensorProto.FLOAT) for t in ins]
            ins, out = [f"{t}__f32_{n.name}" for t in ins], f"{out}__f32"
        nodes.append(helper.make_node(_op_type(n.op_type, half, impl), ins, [out], name=n.name, domain=_CONTRIB,
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

"""Precision lives in the ONNX graph: float16 mixed precision, and INT8 with explicit Q/DQ.

* FP16: ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``), float32 I/O, with a block list of numerically fragile ops
  (softmax, reductions, normalisations, exp/log/pow) plus every node whose float32 activations on real frames exceed
  a safe float16 range (the AutoCast rule, measured here on calibration frames).
* INT8: ONNX Runtime's ``quantize_static`` in QDQ format with a calibration cache. Two flavours:

  ``qdq-s8`` (default)
      what TensorRT accepts: symmetric int8 activations and weights, per-channel weights on axis 0, per-tensor
      activations, bias not quantised, Q/DQ only on the inputs of weighted ops, a dedicated Q/DQ pair per consumer.
      OpenVINO runs it with int8 convolutions too, but the layers between them in bf16/float.
  ``qdq-u8``
      the graph for ONNX Runtime's CPU provider: asymmetric uint8 activations, per-channel int8 weights, and Q/DQ on
      every op ONNX Runtime has an int8 kernel for (convolution outputs, Add, Concat, pooling, clipping, …) but
      Resize and the logit head, so that its Q/DQ fusion turns them into QLinearConv/QLinearAdd/… (Q/DQ on the
      inputs of weighted ops alone leaves ONNX Runtime dequantising before a float convolution — slower than FP32.)
      OpenVINO also runs it faster than ``qdq-s8`` (residual adds, splits and concats in int8; uint8 activations are
      what AVX-512 VNNI multiplies natively): the CPU backends' INT8 graph. TensorRT rejects it.

:func:`lint_qdq_for_tensorrt` refuses a Q/DQ placement TensorRT would reject.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ExportError

__all__ = [
    "FP32_OP_TYPES",
    "INT8_FLAVOURS",
    "INT8_REVISION",
    "flavour_tag",
    "settings_tag",
    "activation_ranges",
    "lint_qdq_for_tensorrt",
    "quantize_int8",
    "to_fp16",
]

# Ops kept in float32 in the FP16 graph, whatever their values.
FP32_OP_TYPES = (
    "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceSumSquare",
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization",
    "Exp", "Log", "Pow", "Sqrt", "Erf", "Range",
)
FP16_DATA_MAX = 2048.0  # a node whose float32 output exceeds this on real frames stays float32
INT8_FLAVOURS = ("qdq-s8", "qdq-u8")
#: bumped when a flavour's graph changes, so that caches keyed on it (demos.live) re-export
# bumped whenever our Q/DQ placement changes (r3: every logit map of a multi-head sum stays float)
INT8_REVISION = {"qdq-s8": 1, "qdq-u8": 3}


def flavour_tag(flavour: str) -> str:
    """``qdq-u8`` → ``qdq-u8r3``: the flavour and its graph revision, for cache file names."""
    return f"{flavour}r{INT8_REVISION[flavour]}" if flavour else ""


def settings_tag(**settings) -> str:
    """Short stable hash of export settings (calibration data, count, method …) for cache file names: exports made
    with other settings never share a cache entry."""
    blob = json.dumps({k: (str(v) if v is not None else None) for k, v in sorted(settings.items())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# --------------------------------------------------------------------------------------------- fp16
def activation_ranges(model: onnx.ModelProto, feeds: Iterable[np.ndarray], input_name: str) -> dict[str, float]:
    """max |value| of every float node output over ``feeds`` (float32 run in ONNX Runtime)."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    outs = [o for n in m.graph.node for o in n.output if o and o not in existing]
    for name in outs:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peak: dict[str, float] = {}
    for x in feeds:
        for name, v in zip(names, sess.run(names, {input_name: x})):
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size:
                peak[name] = max(peak.get(name, 0.0), float(np.abs(v).max()))
    return peak


def to_fp16(
    model: onnx.ModelProto, peaks: dict[str, float] | None = None, data_max: float = FP16_DATA_MAX
) -> tuple[onnx.ModelProto, list[str]]:
    """Mixed-precision float16 graph with float32 inputs/outputs.

    Returns the graph and the sorted list ``"OpType: node name (reason)"`` of nodes kept in float32.
    """
    from onnxruntime.transformers import float16

    keep_nodes, kept = [], []
    for n in model.graph.node:
        if n.op_type in FP32_OP_TYPES:
            kept.append(f"{n.op_type}: {n.name} (fragile op type)")
            continue
        big = max((peaks or {}).get(o, 0.0) for o in n.output) if n.output else 0.0
        if big > data_max:
            keep_nodes.append(n.name)
            kept.append(f"{n.op_type}: {n.name} (|x| up to {big:.0f} > {data_max:.0f})")
    m16 = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(FP32_OP_TYPES), node_block_list=keep_nodes
    )
    _drop_duplicate_casts(m16.graph)
    toposort(m16.graph)  # the converter appends its I/O casts at the end of the node list
    return m16, sorted(kept)


def _drop_duplicate_casts(graph: onnx.GraphProto) -> None:
    """The float16 converter inserts one Cast per (initializer, kept node) and names it after the initializer, so an
    initializer shared by two kept nodes gets two identical Casts with one output name (not SSA). Keep one."""
    seen: dict[str, onnx.NodeProto] = {}
    nodes = []
    for n in graph.node:
        dup = [o for o in n.output if o in seen]
        if dup:
            first = seen[dup[0]]
            if (n.op_type, list(n.input), n.attribute) != (first.op_type, list(first.input), first.attribute):
                raise ExportError(f"float16 conversion produced two different nodes writing {dup[0]!r}")
            continue
        seen.update((o, n) for o in n.output)
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically in place (stable: keeps the original order where it can)."""
    avail = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                ordered.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


# --------------------------------------------------------------------------------------------- int8
class _Reader:
    """ONNX Runtime calibration data reader over pre-processed frames, in chunks (``set_range``), with a tqdm bar.

    ORT's histogram calibrators keep every intermediate tensor of every frame they are given until they build
    histograms; feeding them chunks of frames (ORT's strided calibration) bounds the memory to one chunk.
    """

    def __init__(self, input_name: str, frames: Sequence[np.ndarray], progress: bool) -> None:
        from tqdm import tqdm

        self.input_name, self.frames = input_name, frames
        self._bar = tqdm(total=len(frames), desc="calibrate", unit="frame", disable=not progress, dynamic_ncols=True)
        self._it = iter(frames)

    def get_next(self):
        x = next(self._it, None)
        if x is None:
            return None
        self._bar.update(1)
        return {self.input_name: x}

    def __len__(self) -> int:
        return len(self.frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.frames[start_index:end_index])

    def chunk(self, most: int = 16) -> int:
        """The largest chunk size ≤ ``most`` that divides the frame count (ORT requires a divisor)."""
        n = len(self.frames)
        return next(d for d in range(min(most, n), 0, -1) if n % d == 0)


def calibration_key(model_bytes: bytes, frame_ids: Sequence[str], method: str) -> str:
    h = hashlib.sha256(model_bytes)
    h.update(json.dumps([list(frame_ids), method]).encode())
    return h.hexdigest()[:16]


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    *,
    frames: Sequence[np.ndarray] | None,
    frame_ids: Sequence[str],
    input_name: str,
    flavour: str = "qdq-s8",
    method: str = "percentile",
    exclude_nodes: Sequence[str] = (),
    cache_dir: Path,
    progress: bool = True,
) -> dict:
    """Quantise ``fp32_path`` into ``out_path`` (QDQ). Returns a summary (cache hit, node counts, settings).

    The calibration ranges are cached in ``cache_dir`` under a key of the float graph's bytes, the frame ids and
    the method: a re-export with the same inputs skips calibration (and ``frames`` may then be ``None``).
    """
    from onnxruntime.quantization import CalibrationMethod

    if flavour not in INT8_FLAVOURS:
        raise ExportError(f"unknown INT8 flavour {flavour!r}; valid: {', '.join(INT8_FLAVOURS)}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; valid: {', '.join(methods)}")
    full_graph = flavour == "qdq-u8"  # every op ONNX Runtime can run in int8, not just the weighted ones
    import onnxruntime

    # the quantised tensors follow ONNX Runtime's op registry (full graph): its version is part of the key
    key = calibration_key(fp32_path.read_bytes(), frame_ids,
                          method + (f"|all-ops|ort{onnxruntime.__version__}" if full_graph else ""))
    created = not cache_dir.exists()
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _quantize(fp32_path, out_path, frames, frame_ids, input_name, flavour, method, exclude_nodes,
                         cache_dir / f"calib-{key}.json", progress, full_graph, methods)
    except BaseException:
        if created and not any(cache_dir.iterdir()):  # an interrupted first export leaves no empty cache folder
            cache_dir.rmdir()
        raise


def _quantize(fp32_path, out_path, frames, frame_ids, input_name, flavour, method, exclude_nodes, cache: Path,
              progress: bool, full_graph: bool, methods: dict) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    hit = calibration_cache_intact(cache)
    if not hit and frames is None:
        raise ExportError(f"no calibration frames and no usable calibration cache ({cache}): pass --calib-data DIR")
    symmetric = flavour == "qdq-s8"
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "DedicatedQDQPair": True,
        "CalibPercentile": 99.999,
        "CalibTensorRangeSymmetric": False,
    }
    if not full_graph:
        extra["OpTypesToExcludeOutputQuantization"] = list(WEIGHTED_OPS)
    reader = None if hit else _Reader(input_name, frames, progress)
    if reader is not None:
        extra["CalibStridedMinMax"] = reader.chunk()  # despite the name: chunked collection for every method
    with _quiet_onnxruntime_quantizer():
        quantize_static(
            str(fp32_path),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=_ort_int8_ops() if full_graph else list(WEIGHTED_OPS),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude_nodes) + (head_nodes(onnx.load(str(fp32_path))) if full_graph else []),
            calibrate_method=methods[method],
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
    if not hit:
        _seal_calibration_cache(cache)
    qm = onnx.load(str(out_path))
    counts = Counter(n.op_type for n in qm.graph.node)
    return {
        "flavour": flavour,
        "quantized_ops": "all ONNX Runtime int8 ops but the logit head" if full_graph else "weighted ops' inputs",
        "calibration": {"method": method, "frames": len(frame_ids), "cache": cache.name, "cache_hit": hit},
        "excluded_nodes": list(exclude_nodes),
        "quantize_linear": counts.get("QuantizeLinear", 0),
        "dequantize_linear": counts.get("DequantizeLinear", 0),
        "quantized_convs": _quantized_weighted_ops(qm),
    }


def _seal(cache: Path) -> Path:
    return cache.with_name(cache.name + ".sha256")


def _seal_calibration_cache(cache: Path) -> None:
    """Record the sha256 of a calibration cache ONNX Runtime has just written (checked at every later use)."""
    from common.io import sha256_file, write_bytes_atomic

    if cache.is_file():
        write_bytes_atomic(_seal(cache), (sha256_file(cache) + "\n").encode())


def calibration_cache_intact(cache: Path) -> bool:
    """A calibration cache that can be reused: present, sealed with its sha256, and valid JSON mapping tensor names to
    ranges. A damaged one (truncated, edited, half-written by an interrupted export) is removed with a one-line
    warning naming the file, and calibration runs again."""
    import warnings

    from common.io import sha256_file

    if not cache.exists():
        _seal(cache).unlink(missing_ok=True)
        return False
    why = ""
    try:
        seal = _seal(cache).read_text().strip() if _seal(cache).is_file() else ""
        if seal != sha256_file(cache):
            why = "its sha256 does not match the one recorded when it was written"
        else:
            d = json.loads(cache.read_text())
            if not isinstance(d, dict) or not d:
                why = "it holds no tensor ranges"
    except (OSError, ValueError) as e:
        why = f"it is unreadable ({' '.join(str(e).split())[:80]})"
    if not why:
        return True
    warnings.warn(f"calibration cache {cache} is damaged ({why}); calibrating again", stacklevel=3)
    cache.unlink(missing_ok=True)
    _seal(cache).unlink(missing_ok=True)
    return False


@contextlib.contextmanager
def _quiet_onnxruntime_quantizer():
    """ONNX Runtime's quantiser prints its calibration steps to stdout and logs a pre-processing hint on the root
    logger at every call; our own progress and summary lines say what happened."""
    class _Hint(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing" not in record.getMessage()

    hint, root = _Hint(), logging.getLogger()
    root.addFilter(hint)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(hint)


def _ort_int8_ops() -> list[str]:
    """Every op type ONNX Runtime's QDQ quantiser handles, but Resize: in MSNet-style decoders a Resize output is one
    side of a subtraction |up(A) − B|, where calibration clipping of the upsampled map costs accuracy (msnet_effl0,
    Kvasir val, entropy calibration: mDice −0.58 points with Resize in int8, −0.16 without; ORT latency 0.33× vs
    0.49× of FP32)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - {"Resize"})


# ops whose every input is data (a head that sums or concatenates several logit maps); other ops: input 0 only
_ALL_DATA_INPUTS = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Concat"}


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from each graph output back to (and including) the weighted ops that produce the logits:
    the logit head. Every data input is followed (msga sums four upsampled logit maps), shape computations and
    constants are not.

    The full-graph flavour keeps them in float, so the logits the threshold is taken on are not rounded to 256
    levels (a few 64→1 convolutions and the final upsampling: negligible time)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out: list[str] = []
    seen: set[str] = set()
    todo = [producers.get(o.name) for o in model.graph.output]
    while todo:
        n = todo.pop()
        if n is None or n.name in seen or n.op_type in ("Shape", "Constant"):
            continue
        seen.add(n.name)
        out.append(n.name)
        if n.op_type in WEIGHTED_OPS:
            continue
        inputs = n.input if n.op_type in _ALL_DATA_INPUTS else n.input[:1]
        todo.extend(producers.get(i) for i in inputs if i)
    return out


def _quantized_weighted_ops(model: onnx.ModelProto) -> int:
    producers = {o: n for n in model.graph.node for o in n.output}
    return sum(
        1
        for n in model.graph.node
        if n.op_type in WEIGHTED_OPS and all(producers.get(i, None) is not None and
                                             producers[i].op_type == "DequantizeLinear" for i in n.input[:2])
    )


def lint_qdq_for_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Problems TensorRT 10/11 would reject in a Q/DQ graph, or run with other numbers than ONNX Runtime (empty list
    = acceptable).

    TensorRT's own ONNX parser is the judge where it can be run (TensorRT-RTX on any machine, see
    ``tests/export/test_rtx_gate.py``, which pins every rule below against it); this lint runs everywhere, without
    TensorRT, and keeps the rules TensorRT-RTX 1.7 lets through although datacenter/Jetson TensorRT does not:

    ===========================================  =====================  ============================================
    rule                                         TensorRT-RTX 1.7.1     why kept
    ===========================================  =====================  ============================================
    zero point not all-zero (int8 or uint8)      parser rejects         also the parser's rule (no TensorRT here)
    uint8 zero point equal to 0                  accepted (warning,     ONNX Runtime reads [0, 255], TensorRT
                                                 read as int8)          [-128, 127]: silent clipping above 127·scale
    scale ≤ 0                                    parser rejects         also the parser's rule
    scale not a build-time constant              parsed; the builder    TensorRT: INT8 scales are build-time
                                                 crashes (SIGSEGV)      constants; RTX must never see such a graph
    per-channel scale on an activation           accepted               TensorRT: activations per tensor only
    weight scale on the wrong axis (Conv: 0,     accepted (weights      TensorRT quantises along the output
    ConvTranspose: 1)                            folded to float)       channels, K
    quantised (int32) bias                       parser rejects         also the parser's rule
    uint8 weights                                parser rejects         also the parser's rule
    ===========================================  =====================  ============================================

    Weights are int8 constants → DQ, or float constants → Q → DQ (TensorRT accepts both); anything else with a Q/DQ
    is an activation. A weighted op without Q/DQ is not a problem (it runs in float, e.g. ``exclude_nodes``).
    """
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    values = {**inits, **consts}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    # weight Q/DQ: DQ of a constant, Q of a constant, and the DQ of such a Q (float weights → Q → DQ)
    weight_q = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in values}
    problems = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = values.get(n.input[1]) if len(n.input) > 1 else None
        zp = values.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None:
            # TensorRT-RTX parses a run-time scale, and its builder then crashes the process (DQ feeding a Conv)
            problems.append(f"{n.name}: scale is not a build-time constant")
            continue
        if np.any(scale <= 0):
            problems.append(f"{n.name}: non-positive scale")
        if zp is not None:
            if zp.dtype != np.int8:
                # a uint8 zero point of 0 is accepted (TensorRT reads it as int8, with a warning), but then means
                # [-128, 127] in TensorRT and [0, 255] in ONNX Runtime
                problems.append(f"{n.name}: zero point of type {zp.dtype} (TensorRT needs int8, symmetric)")
            elif np.any(zp != 0):
                problems.append(f"{n.name}: non-zero zero point (TensorRT supports symmetric quantisation only)")
        weight = n.input[0] in values or (n.op_type == "DequantizeLinear" and n.input[0] in weight_q)
        if scale.size > 1:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if not weight:
                # TensorRT-RTX accepts it; TensorRT quantises activations per tensor only
                problems.append(f"{n.name}: per-channel scale on an activation (TensorRT needs per-tensor)")
            elif n.op_type == "DequantizeLinear":
                # TensorRT-RTX accepts any axis (it folds the weights to float); TensorRT quantises along K
                for u in consumers.get(n.output[0], []):
                    want = 1 if u.op_type == "ConvTranspose" else 0
                    if u.op_type in ("Conv", "ConvTranspose") and u.input[1] == n.output[0] and axis != want:
                        problems.append(f"{n.name}: per-channel weight scale on axis {axis}, {u.op_type} needs axis "
                                        f"{want}")
        if n.op_type == "DequantizeLinear":
            for u in consumers.get(n.output[0], []):
                if u.op_type in ("Conv", "ConvTranspose", "Gemm") and len(u.input) > 2 and u.input[2] == n.output[0]:
                    problems.append(f"{n.name}: quantised bias of {u.name} (TensorRT: bias must stay float)")
            src = values.get(n.input[0])
            if src is not None and src.dtype == np.uint8:
                problems.append(f"{n.name}: uint8 weights (TensorRT needs int8)")
    return problems

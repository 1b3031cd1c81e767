"""PyTorch → ONNX (FP32, FP16 mixed precision, INT8 Q/DQ) with a manifest and a parity check.

Usage::

    python -m export.onnx --model msnet_effl0 --precision int8 --out artifacts/msnet_effl0-int8.onnx
    python -m export.onnx --model m2snet --checkpoint M2SNet.pth --precision fp16 --out m2snet-fp16.onnx

Steps: load the model (default checkpoint: the shipped ``<model>-kvasir`` when there is one), switch M2SNet's
all-ones convolutions to the box-sum form, export with the TorchScript exporter (opset 17, static input, optional
dynamic batch), fold constants and simplify (onnxslim), check the graph, convert precision in the graph, check
parity against PyTorch on real frames, and write ``PATH.onnx`` + ``PATH.manifest.json`` atomically.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from common.cli import entry
from common.io import check_destination
from runtime.manifest import Manifest, manifest_path, sha256_file

from .errors import ExportError

__all__ = ["build_parser", "cache_name", "check_input_size", "collect_frames", "export_onnx", "load_for_export",
           "main"]

PRECISIONS = ("fp32", "fp16", "int8")
OPSET = 17
MAX_IR = 10  # ONNX Runtime 1.31 reads IR ≤ 13; TensorRT 10's parser is happiest at ≤ 10
DEFAULT_CALIB_COUNT = 256
TOOLKIT_VERSION = "0.1.0"


# --------------------------------------------------------------------------------------------- inputs
def check_input_size(name: str, spec: Any, input_hw: Sequence[int] | None) -> tuple[int, int]:
    """``input_hw`` (default: the model's) as ``(h, w)``, or a one-line error when the network cannot take it."""
    h, w = (int(v) for v in (input_hw or spec.input_hw))
    if h < 1 or w < 1:
        raise ExportError(f"--input-size must be positive, got {h}x{w}")
    if h % spec.size_divisor or w % spec.size_divisor:
        raise ExportError(f"--input-size must be multiples of {spec.size_divisor} for {name}, got {h}x{w}")
    return h, w


def cache_name(model: str, hw: Sequence[int], precision: str, flavour: str, weights: str, **calibration: Any) -> str:
    """File name of a cached export: model, input size, precision, for INT8 the flavour revision and a hash of the
    calibration settings, and the weights (checkpoint hash or ``untrained``), so that no stale graph is reused."""
    from .precision import flavour_tag, settings_tag

    int8 = f"-{flavour_tag(flavour)}-c{settings_tag(**calibration)}" if precision == "int8" else ""
    return f"{model}-{hw[0]}x{hw[1]}-{precision}{int8}-{weights}.onnx"


def load_for_export(name: str, checkpoint: str | None) -> tuple[Any, dict[str, Any]]:
    """Model in eval mode (M2SNet in box-sum form) and a description of its source checkpoint."""
    import torch

    from training import CheckpointError, UnknownModelError, get_spec, load_model
    from training.checkpoint import WEIGHTS_DIR, read_checkpoint, resolve_checkpoint

    try:
        get_spec(name)
    except UnknownModelError as e:
        raise ExportError(str(e)) from None
    info: dict[str, Any] = {"checkpoint": "", "checkpoint_sha256": "", "train_config": {}}
    if checkpoint is None and (WEIGHTS_DIR / f"{name}-kvasir.pt").is_file():
        checkpoint = f"{name}-kvasir"
    try:
        if checkpoint is None:
            warnings.warn(f"no checkpoint for {name!r}: exporting untrained weights (fine for speed, not accuracy)",
                          stacklevel=2)
            # seeded: "untrained" names one set of weights in every process, so a cached untrained export and
            # this process's PyTorch reference agree (parity and "Dice vs PyTorch" columns stay meaningful)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = load_model(name)
        else:
            path = resolve_checkpoint(checkpoint)
            ck = read_checkpoint(path)
            model = load_model(name, ck)
            info.update(checkpoint=str(checkpoint), checkpoint_sha256=sha256_file(path),
                        train_config=dict(ck.get("config") or {}))
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    if hasattr(model, "set_fixed_conv"):
        model.set_fixed_conv("boxsum")
    return model.eval(), info


def collect_frames(
    data: str | os.PathLike[str], split: str | None, count: int, input_hw: Sequence[int], mean, std
) -> tuple[list[np.ndarray], list[str]]:
    """``count`` pre-processed frames (evenly spread over the sorted ids, so the choice is reproducible)."""
    import cv2

    from kernels.frame_reference import preprocess_reference

    root = Path(data)
    if not root.is_dir():
        raise ExportError(f"calibration folder {str(root)!r} does not exist: pass --calib-data DIR with images")
    img_dir = next((root / d for d in ("images", "image") if (root / d).is_dir()), root)
    exts = {".jpg", ".jpeg", ".png", ".bmp"}
    files = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in exts}
    if split:
        wanted = [Path(s.strip()).stem for s in Path(split).read_text().splitlines() if s.strip()]
        files = {k: files[k] for k in wanted if k in files}
    if not files:
        raise ExportError(f"calibration folder {str(img_dir)!r} holds no images (.jpg/.png/.bmp)")
    ids = sorted(files)
    if count and count < len(ids):
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, count).round().astype(int)]
    frames = []
    for i in ids:
        bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ExportError(f"cannot read calibration image {str(files[i])!r}")
        frames.append(preprocess_reference(bgr, input_hw, mean, std))
    return frames, ids


def _check_writable(out: Path) -> None:
    why = check_destination(out, (".onnx",))
    if why:
        raise ExportError(f"output {why}")


# --------------------------------------------------------------------------------------------- graph
def export_fp32(model, input_hw: Sequence[int], path: Path, dynamic_batch: bool = False) -> onnx.ModelProto:
    """TorchScript-exporter ONNX (opset 17), constant-folded and simplified, checked; saved to ``path``."""
    import onnxslim
    import torch

    c = getattr(model, "in_channels", 3)
    x = torch.randn(1, c, int(input_hw[0]), int(input_hw[1]))
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(raw), opset_version=OPSET, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes, do_constant_folding=True)
    m = onnxslim.slim(onnx.load(str(raw)))
    raw.unlink()
    m.ir_version = min(m.ir_version, MAX_IR)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return m


def _ort_logits(path: Path, frames: Sequence[np.ndarray], backend: str = "ort") -> list[np.ndarray]:
    from runtime.backends import create_backend

    with create_backend(backend, path, threads=os.cpu_count()) as b:
        return [b.infer(x) for x in frames]


def _torch_logits(model, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        return [model(torch.from_numpy(x)).numpy() for x in frames]


# --------------------------------------------------------------------------------------------- pipeline
@dataclass
class _Job:
    """One export: what every step reads, and what the steps hand to each other."""

    name: str
    out: Path
    model: Any
    spec: Any
    src: dict[str, Any]
    hw: list[int]
    precision: str
    flavour: str
    tmp: Path
    log: Callable[..., None]
    frames: list[np.ndarray] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    data_dir: str = ""
    data_split: str = ""
    fp32_ops: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    blocks: list = field(default_factory=list)


def _calibration_frames(job: _Job, calib_data, calib_split, calib_count: int, parity_frames: int) -> None:
    """Real frames for INT8 calibration and the parity check: --calib-data, else the checkpoint's training data."""
    from common.paths import resolve_data_path

    tc = job.src["train_config"]
    # the checkpoint records its training data relative to where it was trained: found from any working directory
    recorded_data = resolve_data_path(tc.get("data"))
    recorded_split = resolve_data_path(tc.get("train_split"))
    job.data_dir = calib_data or (str(recorded_data) if recorded_data else "")
    job.data_split = (calib_split if calib_data else (calib_split or (str(recorded_split) if recorded_split
                                                                      else ""))) or ""
    if job.precision == "int8" and calib_data is not None and not Path(calib_data).is_dir():
        raise ExportError(f"calibration folder {calib_data!r} does not exist")
    if job.data_dir and Path(job.data_dir).is_dir():
        n = calib_count if job.precision == "int8" else max(parity_frames, 8 if job.precision == "fp16" else 0)
        job.frames, job.ids = collect_frames(job.data_dir, job.data_split or None, n, job.hw, job.spec.mean,
                                             job.spec.std)
    elif job.precision == "int8":
        where = f" (the checkpoint's training data {tc.get('data')!r} is not found here)" if tc.get("data") else ""
        raise ExportError(f"INT8 needs calibration frames{where}: pass --calib-data DIR (a folder of real frames) or "
                          "set POLYPSEG_DATA to the shared data folder")


def _convert_precision(job: _Job, fp32_path: Path, m: onnx.ModelProto, *, calib_method: str,
                       exclude_nodes: Sequence[str], progress: bool) -> Path:
    """The graph at the requested precision: FP32 as exported, FP16 mixed precision, or calibrated INT8 Q/DQ."""
    from .precision import activation_ranges, lint_qdq_for_tensorrt, quantize_int8, to_fp16

    if job.precision == "fp32":
        job.log("[2/4] precision fp32: graph unchanged")
        return fp32_path
    final = job.tmp / "final.onnx"
    if job.precision == "fp16":
        peaks = activation_ranges(m, job.frames[:8], "input") if job.frames else {}
        m16, job.fp32_ops = to_fp16(m, peaks)
        m16.ir_version = min(m16.ir_version, MAX_IR)
        onnx.checker.check_model(m16)
        onnx.save(m16, str(final))
        job.log(f"[2/4] fp16 mixed precision, float32 I/O; kept in float32 ({len(job.fp32_ops)}):")
        for k in job.fp32_ops:
            job.log(f"        {k}")
        return final
    job.log(f"[2/4] int8 {job.flavour}: calibrating on {len(job.ids)} frames ({calib_method}) …")
    job.extra = quantize_int8(fp32_path, final, frames=job.frames, frame_ids=job.ids, input_name="input",
                              flavour=job.flavour, method=calib_method, exclude_nodes=exclude_nodes,
                              cache_dir=job.out.parent / ".calib-cache", progress=progress)
    qm = onnx.load(str(final))
    if qm.ir_version > MAX_IR:
        qm.ir_version = MAX_IR
        onnx.save(qm, str(final))
    if job.extra["calibration"]["cache_hit"]:
        job.log(f"        calibration cache hit ({job.extra['calibration']['cache']})")
    job.log(f"        {job.extra['quantized_convs']} weighted ops quantised, {job.extra['quantize_linear']} Q / "
            f"{job.extra['dequantize_linear']} DQ nodes")
    problems = lint_qdq_for_tensorrt(qm)
    job.extra["tensorrt_lint"] = problems[:20]
    if job.flavour == "qdq-s8" and problems:
        raise ExportError(f"Q/DQ placement TensorRT would reject ({len(problems)} problems), first: {problems[0]}")
    if job.flavour == "qdq-u8":
        job.log(f"        flavour qdq-u8 is for the CPU backends (ONNX Runtime, OpenVINO); TensorRT would reject it "
                f"({len(problems)} lint problems, e.g. uint8 zero points)")
    return final


def _deploy_graph(job: _Job, reference: Path) -> Path:
    """The TensorRT deploy graph: every fusable block of ``reference`` one plugin node."""
    from .plugins import make_deploy_graph, plugin_summary

    deploy, job.blocks = make_deploy_graph(onnx.load(str(reference)), job.model)
    final = job.tmp / "deploy.onnx"
    onnx.save(deploy, str(final))
    counts = ", ".join(f"{e['count']} × {e['name']}" for e in plugin_summary(job.blocks))
    job.log(f"        deploy graph: {counts} (namespace polypseg, version 1)")
    return final


def _parity(job: _Job, final: Path, reference: Path | None, parity_frames: int, gate: bool,
            tolerance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The graph against PyTorch on real frames, through the one comparator; outside the precision's tolerance the
    export stops (``gate``), or goes on with the failures recorded in the manifest."""
    from runtime.comparator import compare, tolerance_for

    pframes = job.frames[:parity_frames]
    if not pframes:
        import numpy.random as npr

        pframes = [npr.default_rng(0).standard_normal((1, job.spec.in_channels, *job.hw)).astype(np.float32)]
    ref = _torch_logits(job.model, pframes)
    got: dict[str, list[np.ndarray]] = {}
    if reference is not None:  # deploy graph: the reference graph on ONNX Runtime, the plugin nodes on the CPU
        from .plugin_cpu import cpu_session

        got["ort"] = _ort_logits(reference, pframes)
        sess = cpu_session(onnx.load(str(final)), impl="kernel", threads=os.cpu_count())
        got["ort+plugins-cpu"] = [sess.run(None, {"input": x})[0] for x in pframes]
    else:
        for b in ["ort"] + (["openvino"] if job.precision == "int8" and _has_openvino() else []):
            got[b] = _ort_logits(final, pframes, b)
    tol = tolerance_for(job.precision, tolerance)
    results = {b: compare(ref, g, threshold=job.spec.threshold) for b, g in got.items()}
    par: dict[str, Any] = {b: c.to_dict() for b, c in results.items()}
    par["frames_source"] = str(job.data_dir) if job.frames else "random normal input (no real frames available)"
    par["tolerance"] = {"precision": job.precision, "max_rel_diff": tol.max_rel_diff, "min_dice": tol.min_dice}
    job.log(f"[3/4] parity vs PyTorch on {len(pframes)} frames: " + "; ".join(
        f"{b}: max|Δ| {c.max_abs_diff:.2e} ({c.rel_diff:.1e} of scale), mask Dice "
        + (f"{c.dice_vs_torch:.4f}" if c.dice_vs_torch is not None else "n/a (empty masks)")
        for b, c in results.items()))
    failures = [f"{b}: {f}" for b, c in results.items() for f in c.failures(tol)]
    par["gate"] = {"enforced": gate, "passed": not failures, "failures": failures}
    if failures and gate:
        raise ExportError(f"the {job.precision} graph misses its parity tolerance against PyTorch ({failures[0]}); "
                          "nothing was written. Check the graph, or pass --no-parity-gate to keep it anyway (the "
                          "failure is recorded in its manifest)")
    if failures:
        warnings.warn(f"{job.precision} graph outside its parity tolerance, kept because of --no-parity-gate: "
                      f"{failures[0]}", stacklevel=3)
    return par


def _manifest(job: _Job, final: Path, par: dict[str, Any], *, dynamic_batch: bool, calib_method: str,
              exclude_nodes: Sequence[str]) -> Manifest:
    from .plugins import plugin_summary

    spec = job.spec
    return Manifest(
        model=job.name, input_hw=job.hw, mean=list(spec.mean), std=list(spec.std), in_channels=spec.in_channels,
        num_classes=spec.num_classes, output_activation=spec.output_activation, threshold=spec.threshold,
        dynamic_batch=dynamic_batch, precision=job.precision, quant_flavour=job.flavour, opset=OPSET,
        ir_version=onnx.load(str(final), load_external_data=False).ir_version,
        onnx_sha256=sha256_file(final), checkpoint=job.src["checkpoint"],
        checkpoint_sha256=job.src["checkpoint_sha256"],
        plugins=plugin_summary(job.blocks) if job.blocks else [], fp32_ops=job.fp32_ops, parity=par,
        export_config={"calib_data": job.data_dir, "calib_split": job.data_split,
                       "calib_count": len(job.ids) if job.precision == "int8" else 0, "calib_method": calib_method,
                       "exclude_nodes": list(exclude_nodes), **job.extra},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), toolkit_version=TOOLKIT_VERSION,
    )


def export_onnx(
    name: str,
    out: str | os.PathLike[str],
    *,
    checkpoint: str | None = None,
    precision: str = "fp32",
    input_hw: Sequence[int] | None = None,
    dynamic_batch: bool = False,
    calib_data: str | None = None,
    calib_split: str | None = None,
    calib_count: int = DEFAULT_CALIB_COUNT,
    calib_method: str | None = None,
    int8_flavour: str = "qdq-s8",
    exclude_nodes: Sequence[str] = (),
    parity_frames: int = 8,
    parity_gate: bool = True,
    parity_tolerance: Mapping[str, Any] | None = None,
    plugins: bool = False,
    progress: bool = True,
    log=print,
) -> Manifest:
    """Export ``name`` to ``out`` at ``precision`` and write its manifest; returns the manifest.

    Steps: model → FP32 ONNX → precision (FP16 / INT8 Q/DQ) → optional deploy graph (``plugins=True``: each fusable
    block one plugin node, :mod:`export.plugins`, checked with the plugin nodes run by the kernels' CPU path) →
    parity against PyTorch through :mod:`runtime.comparator` (``parity_gate``: outside the precision's tolerance,
    or ``parity_tolerance``, nothing is written) → ``out`` + manifest, atomically.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if isinstance(calib_count, bool) or not isinstance(calib_count, int) or calib_count < 1:
        raise ExportError(f"--calib-count must be a positive number of frames, got {calib_count!r}")
    out = Path(out)
    _check_writable(out)
    t0 = time.perf_counter()
    model, src = load_for_export(name, checkpoint)
    spec = model.spec
    calib_method = calib_method or spec.int8_calibration
    hw = list(check_input_size(name, spec, input_hw))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-") as tmp_s:
        job = _Job(name, out, model, spec, src, hw, precision, int8_flavour if precision == "int8" else "",
                   Path(tmp_s), log)
        _calibration_frames(job, calib_data, calib_split, calib_count, parity_frames)
        fp32_path = job.tmp / "fp32.onnx"
        log(f"[1/4] exporting {name} ({hw[0]}x{hw[1]}, opset {OPSET}) from {src['checkpoint'] or 'untrained weights'}")
        m = export_fp32(model, hw, fp32_path, dynamic_batch)
        final = _convert_precision(job, fp32_path, m, calib_method=calib_method, exclude_nodes=exclude_nodes,
                                   progress=progress)
        reference = None
        if plugins:
            reference, final = final, _deploy_graph(job, final)
        par = _parity(job, final, reference, parity_frames, parity_gate, parity_tolerance)
        manifest = _manifest(job, final, par, dynamic_batch=dynamic_batch, calib_method=calib_method,
                             exclude_nodes=exclude_nodes)
        os.replace(final, out)
    manifest.save(manifest_path(out))
    log(f"[4/4] export success ✅ {time.perf_counter() - t0:.1f}s, saved as {out} ({out.stat().st_size / 2**20:.1f} "
        f"MB) + {manifest_path(out).name}")
    return manifest


def _has_openvino() -> bool:
    from runtime.backends.openvino import openvino_available

    return openvino_available()


# --------------------------------------------------------------------------------------------- CLI
def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry name (python -c 'import training; print(training.list_models())')")
    p.add_argument("--checkpoint", help="checkpoint path or shipped alias (default: <model>-kvasir when shipped)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the model's)")
    p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch dimension")
    p.add_argument("--calib-data", help="folder of real frames for INT8 calibration (default: the training data)")
    p.add_argument("--calib-split", help="split file selecting calibration ids")
    p.add_argument("--calib-count", type=int, default=DEFAULT_CALIB_COUNT, help="calibration frames")
    p.add_argument("--calib-method", choices=("percentile", "minmax", "entropy"), default=None,
                   help="INT8 activation calibration (default: the model's, see training.get_spec(NAME))")
    p.add_argument("--int8-flavour", choices=("qdq-s8", "qdq-u8"), default="qdq-s8",
                   help="qdq-s8: symmetric, Q/DQ on weighted ops' inputs (TensorRT); qdq-u8: uint8 activations, Q/DQ "
                        "around every int8-capable op (fastest on the CPU backends, ONNX Runtime and OpenVINO)")
    p.add_argument("--exclude-nodes", nargs="*", default=[], help="node names kept in float (sensitive layers)")
    p.add_argument("--no-parity-gate", dest="parity_gate", action="store_false",
                   help="keep a graph that misses its parity tolerance against PyTorch (recorded in the manifest)")
    p.add_argument("--plugins", action="store_true",
                   help="TensorRT deploy graph: each fusable block one plugin node (see kernels/plugins)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.split("\n")[0])
    add_args(p)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--out", required=True, help="output PATH.onnx (the manifest goes beside it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    export_onnx(args.model, args.out, checkpoint=args.checkpoint, precision=args.precision,
                input_hw=args.input_size, dynamic_batch=args.dynamic_batch, calib_data=args.calib_data,
                calib_split=args.calib_split, calib_count=args.calib_count, calib_method=args.calib_method,
                int8_flavour=args.int8_flavour, exclude_nodes=args.exclude_nodes, plugins=args.plugins,
                parity_gate=args.parity_gate, progress=args.progress)
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

"""Clinical-grade video evaluation: every backend/precision over labelled video sequences, judged as an endoscopist
would — is the polyp caught, how soon, does the outline flicker or jump, does it light up healthy mucosa — beside
Dice, and each deploy precision accepted or rejected against PyTorch on those terms.

Usage::

    python -m export.clinical --model msnet_effl0 --sequences ../shared/data/cvc-clinicdb-clips/seq* \\
        --backends torch,openvino-int8,ort-fp16 --json clinical.json --plot clinical.png

Sequences: folders holding ``images/`` and ``masks/`` (frames paired by name, in name order), or ``VIDEO=MASK_DIR``
(the masks' names in order pair with the video's frames). Backends: ``torch`` (PyTorch FP32, the reference) and the
rows of :data:`runtime.bench.ROWS` (``openvino-int8``, ``ort-fp16``, …), exported through the cache; ``--onnx PATH``
adds a model file. ``--stabilizer both`` (default) scores every row raw and through :mod:`runtime.stabilize`.

The definitions of every figure are in :mod:`runtime.clinical_metrics`; the acceptance rules in :data:`ACCEPT`.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from common.cli import entry
from common.io import check_destination, write_bytes_atomic, write_json_atomic
from common.paths import cache_root
from kernels.frame_reference import preprocess_reference
from runtime import bench as rb
from runtime.backends import open_backend
from runtime.clinical_metrics import agreement, pool, score_sequence
from runtime.errors import RuntimeInputError
from runtime.manifest import Manifest
from runtime.stabilize import Stabilizer, StabilizerConfig
from runtime.video import IMAGE_EXTS, open_source

__all__ = ["ACCEPT", "Sequence_", "evaluate", "load_sequences", "main"]

#: a deploy precision is accepted when, against PyTorch FP32 with the same post-processing, it …
ACCEPT = {
    "detection_rate": -0.02,        # … detects the polyp in at least (reference − 2 points) of its frames,
    "missed_polyps": 0,             # … misses no polyp the reference catches,
    "first_detection_delay": 1,     # … catches each polyp at most 1 frame later,
    "fp_per_100_frames": 2.0,       # … adds at most 2 false-positive components per 100 frames,
    "flicker_excess": 0.02,         # … flickers at most 2 points more (1 − IoU of consecutive masks, beyond motion),
    "dice": -0.02,                  # … and loses at most 2 points of frame Dice.
}


@dataclass
class Sequence_:
    """One labelled sequence: its frames (BGR) and boolean ground-truth masks, in display order."""

    name: str
    frames: list[np.ndarray]
    masks: list[np.ndarray]


def _mask_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def _read_mask(p: Path) -> np.ndarray:
    import cv2

    m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise RuntimeInputError(f"cannot read mask {str(p)!r}")
    return m >= 128


def load_sequences(specs: Sequence[str]) -> list[Sequence_]:
    """``DIR`` (``images/`` + ``masks/``) or ``VIDEO=MASK_DIR`` → sequences; one-line errors for what is missing."""
    out = []
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            video, _, mdir = spec.partition("=")
            src, mdir_p, name = video, Path(mdir), Path(video).stem
        else:
            d = Path(spec)
            if not (d / "images").is_dir() or not (d / "masks").is_dir():
                raise RuntimeInputError(f"sequence {spec!r} needs images/ and masks/ folders (or pass VIDEO=MASK_DIR)")
            src, mdir_p, name = str(d / "images"), d / "masks", d.name
        if not mdir_p.is_dir():
            raise RuntimeInputError(f"mask folder {str(mdir_p)!r} does not exist")
        s = open_source(src)
        frames = []
        try:
            while (f := s.read()) is not None:
                frames.append(f)
        finally:
            s.close()
        mfiles = _mask_files(mdir_p)
        if Path(src).is_dir():
            by_stem = {p.stem: p for p in mfiles}
            imgs = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in IMAGE_EXTS)
            missing = [p.name for p in imgs if p.stem not in by_stem]
            if missing:
                raise RuntimeInputError(f"sequence {name}: no mask for {missing[0]} in {str(mdir_p)!r}")
            mfiles = [by_stem[p.stem] for p in imgs]
        if len(mfiles) != len(frames):
            raise RuntimeInputError(f"sequence {name}: {len(frames)} frames but {len(mfiles)} masks")
        masks = [_read_mask(p) for p in mfiles]
        for i, (f, m) in enumerate(zip(frames, masks)):
            if f.shape[:2] != m.shape:
                raise RuntimeInputError(f"sequence {name}: frame {i} is {f.shape[1]}x{f.shape[0]} but its mask "
                                        f"{mfiles[i].name} is {m.shape[1]}x{m.shape[0]}")
        out.append(Sequence_(name, frames, masks))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise RuntimeInputError(f"two sequences share a name ({names}): give them distinct folder names")
    return out


# -- inference ---------------------------------------------------------------------------------------------------------


def _logits_for(run: Callable[[np.ndarray], np.ndarray], seq: Sequence_, manifest: Manifest, dtype: str
                ) -> list[np.ndarray]:
    out = []
    for f in seq.frames:
        x = preprocess_reference(f, manifest.input_hw, manifest.mean, manifest.std).astype(dtype)
        out.append(np.asarray(run(x), np.float32).reshape(manifest.input_hw))
    return out


def masks_from_logits(logits: Sequence[np.ndarray], shape: tuple[int, int], threshold: float) -> tuple[list, list]:
    """(boolean masks, uint8 probability maps) at the ground truth's size (bilinear on the logits, as the overlay)."""
    import cv2

    t = math.log(threshold / (1 - threshold))
    masks, probs = [], []
    for z in logits:
        up = cv2.resize(z, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        masks.append(up > t)
        probs.append((255.0 / (1.0 + np.exp(-np.clip(up, -30, 30)))).astype(np.uint8))
    return masks, probs


def _ten_metrics(probs: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    from training.metrics import SegMetrics

    m = SegMetrics()
    for p, g in zip(probs, gts):
        m.step(p, g.astype(np.uint8))
    return m.results()


def _backend_rows(names: Sequence[str], onnx: Sequence[str]) -> list[tuple[str, str]]:
    """[(label, row or path)]: ``torch`` first (the reference), then the rows, then model files."""
    rows = [n.strip() for n in names if n.strip()]
    for r in rows:
        if r != "torch" and r not in rb.ROWS:
            raise RuntimeInputError(f"unknown backend {r!r}; valid: torch, {', '.join(rb.ROWS)}")
        if r.startswith("trt"):
            from runtime.cuda import cuda_device_count

            if cuda_device_count() == 0:
                raise RuntimeInputError(f"{r} needs a CUDA GPU (none here); evaluate the same graph with ort-fp16 or "
                                        "openvino-int8-s8")
    if "torch" in rows:
        rows.remove("torch")
    return [("torch", "torch")] + [(r, r) for r in rows] + [(Path(p).name, p) for p in onnx]


def evaluate(model_name: str, sequences: Sequence[Sequence_], backends: Sequence[str] = ("torch", "openvino-int8"),
             *, onnx: Sequence[str] = (), checkpoint: str | None = None, input_hw: Sequence[int] | None = None,
             stabilizer: str = "both", stab_config: StabilizerConfig | None = None, threads: int | None = None,
             calib_count: int = 256, work_dir: str | Path | None = None, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """Score every backend (raw and/or stabilised) on every sequence; returns the report (see :func:`main`)."""
    from .compare import TorchBackend
    from .onnx import check_input_size, load_for_export

    if stabilizer not in ("off", "on", "both"):
        raise RuntimeInputError(f"--stabilizer must be off, on or both, got {stabilizer!r}")
    if not sequences:
        raise RuntimeInputError("no sequence to evaluate")
    stab_modes = {"off": [False], "on": [True], "both": [False, True]}[stabilizer]
    cfg = (stab_config or StabilizerConfig()).check()
    model, _ = load_for_export(model_name, checkpoint)
    spec = model.spec
    hw = check_input_size(model_name, spec, input_hw)
    ref_manifest = Manifest(model=model_name, input_hw=list(hw), mean=list(spec.mean), std=list(spec.std),
                            threshold=spec.threshold)
    work = Path(work_dir) if work_dir else cache_root() / "onnx"
    logits: dict[str, dict[str, list[np.ndarray]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for label, what in _backend_rows(backends, onnx):
        t0 = time.perf_counter()
        if what == "torch":
            with TorchBackend(model, hw, threads) as be:
                logits[label] = {s.name: _logits_for(be.infer, s, ref_manifest, "float32") for s in sequences}
            info[label] = {"runtime": "torch", "precision": "fp32", "flavour": "", "file": ""}
        else:
            if what in rb.ROWS:
                kind, prec, flav, opts = rb.ROWS[what]
                from .cache import cached_export

                path = cached_export(work, model_name, checkpoint=checkpoint, precision=prec, parity_gate=False,
                                     int8_flavour=flav or "qdq-s8", input_hw=hw, calib_count=calib_count,
                                     log=lambda *a: log(" ".join(map(str, a))))
            else:
                kind, opts, path = "auto", {}, Path(what)
                if not path.is_file():
                    raise RuntimeInputError(f"--onnx {what!r} does not exist")
            m = Manifest.load(path)
            if list(m.input_hw) != list(hw):
                raise RuntimeInputError(f"{path.name} takes {m.input_hw[0]}x{m.input_hw[1]} inputs, the evaluation "
                                        f"{hw[0]}x{hw[1]}: pass --input-size {m.input_hw[0]} {m.input_hw[1]}")
            be = open_backend(kind, path, threads=threads, log=lambda *_: None, **opts)
            try:
                dtype = be.input_spec().dtype
                logits[label] = {s.name: _logits_for(lambda x: be.infer(x, check=False), s, m, dtype)
                                 for s in sequences}
            finally:
                be.close()
            info[label] = {"runtime": be.name, "precision": m.precision, "flavour": m.quant_flavour,
                           "file": path.name}
        log(f"{label}: {sum(len(s.frames) for s in sequences)} frames in {time.perf_counter() - t0:.1f} s")
    rows = []
    row_masks: dict[tuple[str, bool], dict[str, list[np.ndarray]]] = {}
    stab_ms: list[float] = []
    for label in logits:
        for stab in stab_modes:
            per_seq, scores, masks_all = [], [], {}
            probs_all, gts_all = [], []
            for s in sequences:
                zs = logits[label][s.name]
                if stab:
                    st = Stabilizer(cfg)
                    out = []
                    for z, f in zip(zs, s.frames):
                        t0 = time.perf_counter()
                        out.append(st(z, f))
                        stab_ms.append((time.perf_counter() - t0) * 1e3)
                    zs = out
                masks, probs = masks_from_logits(zs, s.masks[0].shape, spec.threshold)
                masks_all[s.name] = masks
                sc = score_sequence(masks, s.masks)
                scores.append(sc)
                ten = _ten_metrics(probs, s.masks)
                probs_all += probs
                gts_all += s.masks
                per_seq.append({"sequence": s.name, **sc.to_dict(), "metrics": ten})
            overall = pool(scores)
            row = {**info[label], "backend": label, "stabilizer": stab, **overall,
                   "metrics": _ten_metrics(probs_all, gts_all), "sequences": per_seq}
            row_masks[(label, stab)] = masks_all
            rows.append(row)
    ref_rows = {r["stabilizer"]: r for r in rows if r["backend"] == "torch"}
    for r in rows:
        ref = ref_rows[r["stabilizer"]]
        mine, theirs = row_masks[(r["backend"], r["stabilizer"])], row_masks[("torch", r["stabilizer"])]
        agree = [agreement(mine[s.name], theirs[s.name], s.masks) for s in sequences]
        n = [len(s.frames) for s in sequences]
        r["vs_torch"] = {"dice_vs_reference": float(np.average([a["dice_vs_reference"] for a in agree], weights=n)),
                         "detection_agreement": float(np.average([a["detection_agreement"] for a in agree],
                                                                 weights=n))}
        r["verdict"] = verdict(r, ref)
    if len(stab_modes) == 2:  # the stabiliser against the same backend without it
        for r in rows:
            if r["stabilizer"]:
                raw = next(x for x in rows if x["backend"] == r["backend"] and not x["stabilizer"])
                r["vs_raw"] = stabilizer_effect(raw, r)
    return {"model": model_name, "input_hw": list(hw), "threshold": spec.threshold,
            "sequences": [{"name": s.name, "frames": len(s.frames)} for s in sequences],
            "stabilizer_config": cfg.to_dict(), "stabilizer_ms_per_frame": float(np.median(stab_ms)) if stab_ms
            else None, "accept_rules": ACCEPT, "rows": rows}


def verdict(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Accept/reject ``row`` against the reference row on :data:`ACCEPT`; every rule with its figures."""
    checks = {}
    for k, tol in ACCEPT.items():
        a, b = row.get(k), ref.get(k)
        if k == "first_detection_delay":
            ok = (a is not None) if b is not None else True
            ok = ok and (b is None or a is None or a <= b + tol)
        elif a is None or b is None:
            ok = a is None and b is None or (k == "detection_rate" and b is None)
        elif k in ("detection_rate", "dice"):
            ok = a >= b + tol
        else:
            ok = a <= b + tol
        checks[k] = {"value": a, "reference": b, "ok": bool(ok)}
    return {"accepted": all(c["ok"] for c in checks.values()), "checks": checks}


def stabilizer_effect(raw: dict[str, Any], stab: dict[str, Any]) -> dict[str, Any]:
    """The issue's target: flicker beyond motion ≥ 30 % lower, detection rate not lower, Dice within 0.5 points."""
    fr, fs = raw["flicker_excess"], stab["flicker_excess"]
    reduction = (fr - fs) / fr if fr > 0 else 0.0
    return {"flicker_excess_reduction": reduction, "detection_rate_change": (stab["detection_rate"] or 0) -
            (raw["detection_rate"] or 0), "dice_change": stab["dice"] - raw["dice"],
            "meets_target": bool(reduction >= 0.30 and (stab["detection_rate"] or 0) >= (raw["detection_rate"] or 0)
                                 and abs(stab["dice"] - raw["dice"]) <= 0.005)}


# -- report --------------------------------------------------------------------------------------------------------


def _f(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def print_table(report: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out(f"{'backend':<16} {'stab':<4} {'Dice':>6} {'IoU':>6} {'detect':>7} {'delay':>5} {'miss':>4} {'FP/100':>7} "
        f"{'flicker':>7} {'(gt)':>6} {'jitter':>6} {'HD95':>6} {'vsTorch':>7} {'verdict':<8}")
    for r in report["rows"]:
        v = "ref" if r["backend"] == "torch" else ("accept" if r["verdict"]["accepted"] else "REJECT")
        out(f"{r['backend']:<16} {'on' if r['stabilizer'] else 'off':<4} {r['dice']:>6.3f} {r['iou']:>6.3f} "
            f"{_f(r['detection_rate'], '.3f'):>7} {_f(r['first_detection_delay'], 'd'):>5} {r['longest_miss']:>4} "
            f"{r['fp_per_100_frames']:>7.1f} {r['flicker']:>7.3f} {r['flicker_gt']:>6.3f} "
            f"{_f(r['jitter_px'], '.1f'):>6} {_f(r['hd95'], '.1f'):>6} "
            f"{r['vs_torch']['dice_vs_reference']:>7.3f} {v:<8}")
    for r in report["rows"]:
        if "vs_raw" in r:
            e = r["vs_raw"]
            out(f"stabiliser on {r['backend']}: flicker beyond motion {e['flicker_excess_reduction']:+.0%} lower, "
                f"detection {e['detection_rate_change']:+.3f}, Dice {e['dice_change'] * 100:+.2f} points -> "
                f"{'meets' if e['meets_target'] else 'misses'} the target")
    for r in report["rows"]:
        if r["backend"] != "torch" and not r["verdict"]["accepted"]:
            bad = [k for k, c in r["verdict"]["checks"].items() if not c["ok"]]
            out(f"{r['backend']} ({'stabilised' if r['stabilizer'] else 'raw'}) rejected on: {', '.join(bad)}")


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Per sequence: per-frame Dice timelines of every backend (raw solid, stabilised dashed) above detection strips
    (green detected, red missed, grey no polyp in the ground truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    seqs = [s["name"] for s in report["sequences"]]
    rows = report["rows"]
    fig = plt.figure(figsize=(4.2 * len(seqs), 3.2 + 0.22 * len(rows)), constrained_layout=True)
    gs = fig.add_gridspec(2, len(seqs), height_ratios=[3, 0.3 * len(rows) + 0.4])
    colours = {}
    cmap = ListedColormap(["#bdbdbd", "#d62728", "#2ca02c"])
    for j, name in enumerate(seqs):
        ax = fig.add_subplot(gs[0, j])
        strip = []
        labels = []
        for r in rows:
            sq = next(x for x in r["sequences"] if x["sequence"] == name)
            c = colours.setdefault(r["backend"], f"C{len(colours)}")
            ax.plot(sq["per_frame"]["dice"], color=c, ls="--" if r["stabilizer"] else "-", lw=1.2,
                    label=f"{r['backend']}{' +stab' if r['stabilizer'] else ''}")
            strip.append([2 if d else (1 if g else 0) for d, g in zip(sq["per_frame"]["detected"],
                                                                      sq["per_frame"]["gt_polyp"])])
            labels.append(f"{r['backend']}{' +s' if r['stabilizer'] else ''}")
        ax.set_ylim(0, 1.02)
        ax.set_title(name)
        ax.set_xlabel("frame")
        if j == 0:
            ax.set_ylabel("Dice")
        if j == len(seqs) - 1:
            ax.legend(fontsize=7, loc="lower right")
        ax2 = fig.add_subplot(gs[1, j])
        ax2.imshow(np.array(strip), aspect="auto", cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax2.set_yticks(range(len(labels)))
        ax2.set_yticklabels(labels if j == 0 else [], fontsize=7)
        ax2.set_xticks([])
        if j == 0:
            ax2.set_title("detected (green) / missed (red) / no polyp (grey)", fontsize=8, loc="left")
    fig.suptitle(f"{report['model']} {report['input_hw'][0]}x{report['input_hw'][1]}: per-frame Dice and detection")
    b = io.BytesIO()
    fig.savefig(b, format="png", dpi=90)
    plt.close(fig)
    return write_bytes_atomic(path, b.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.clinical", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="msnet_effl0", help="registry name (default msnet_effl0)")
    p.add_argument("--checkpoint", help="default: the shipped <model>-kvasir")
    p.add_argument("--sequences", nargs="+", required=True, help="SEQ_DIR (images/ + masks/) or VIDEO=MASK_DIR")
    p.add_argument("--backends", default="torch,openvino-fp32,ort-fp16,openvino-int8",
                   help="torch and runtime.bench rows (default torch,openvino-fp32,ort-fp16,openvino-int8)")
    p.add_argument("--onnx", nargs="*", default=[], help="more model files (their manifests beside them)")
    p.add_argument("--stabilizer", choices=("off", "on", "both"), default="both")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="write the report here (.json)")
    p.add_argument("--plot", help="write the timelines here (.png)")
    a = p.parse_args(argv)
    for flag, path, suf in (("--json", a.json, (".json",)), ("--plot", a.plot, (".png",))):
        if path and (why := check_destination(path, suf)):
            raise RuntimeInputError(f"{flag}: {why}")
    if a.calib_count < 1:
        raise RuntimeInputError(f"--calib-count must be >= 1, got {a.calib_count}")
    seqs = load_sequences(a.sequences)

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    report = evaluate(a.model, seqs, a.backends.split(","), onnx=a.onnx, checkpoint=a.checkpoint,
                      input_hw=a.input_size, stabilizer=a.stabilizer, threads=a.threads, calib_count=a.calib_count,
                      log=log)
    print_table(report)
    if a.json:
        write_json_atomic(a.json, report)
        print(f"json: {a.json}")
    if a.plot:
        plot(report, a.plot)
        print(f"plot: {a.plot}")
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

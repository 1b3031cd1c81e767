"""Recorded procedures at scale: every video of an archive through the model, on this machine or a Ray cluster.

Usage::

    python -m runtime.batch /archive/videos --out results/                   # N local worker processes
    python -m runtime.batch '/archive/**/*.mp4' list.txt --out results/ --video --masks png
    python -m runtime.batch /shared/archive --out /shared/results --ray auto  # the same job on a Ray cluster

Sources: video files, frame folders (a folder of images, or a folder holding ``images/``), folders of those, globs,
and list files (``.txt``/``.lst``: one path per line, relative to the list, ``#`` comments).

Per video ``OUT/<name>.json`` (see :mod:`runtime.batch_job`): the per-frame polyp probability and area timeline,
the polyp-present ``segments``, model/precision/backend, the input's sha256, and the outputs (annotated
``<name>.mp4`` with ``--video``; masks as ``<name>.masks.zip`` of PNGs or ``<name>.masks.json`` run lengths with
``--masks``). Across the archive: ``summary.csv`` (``--parquet``: also ``summary.parquet``), ``summary.png`` and
``job.json`` (throughput, workers, executor).

Resumable: a video whose result exists with the same key (input content hash + model + backend + settings) and
whose outputs are intact is skipped; ``--force`` redoes it. Failed videos are recorded (``status: failed`` and the
reason) and retried on the next run. Exit status: 0 every video done, 2 some failed, 1 bad input, 130/143
interrupted by SIGINT/SIGTERM (finished results kept, nothing half-written left).

Model: ``--onnx``/``--engine``, else the default export of ``--model`` (INT8, as the live demo), produced and cached
by ``python -m export.cache`` in a subprocess, so that this process and its workers never import PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import glob
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from common.cli import entry
from common.io import check_destination, write_bytes_atomic, write_json_atomic

from .batch_job import (
    FORMAT,
    MASK_FORMATS,
    PARTIAL,
    BatchSettings,
    VideoTask,
    input_sha256,
    job_key,
    read_result,
    result_complete,
)
from .errors import RuntimeInputError
from .manifest import Manifest, manifest_path
from .video import IMAGE_EXTS

__all__ = ["BatchJob", "Interrupted", "discover_sources", "main", "run_batch"]

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".ts")
LIST_EXTS = (".txt", ".lst")
SUMMARY_FIELDS = ("name", "status", "error", "frames", "fps", "duration_s", "polyp_seconds", "polyp_fraction",
                  "segments", "peak_prob", "resized_frames", "seconds", "worker", "model", "precision", "backend",
                  "input_sha256", "source")
DEFAULT_MODEL = "msnet_effl0"


class Interrupted(Exception):
    """SIGINT/SIGTERM during the job: finished results are kept, the rest is left for the next run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# -- sources ---------------------------------------------------------------------------------------------------------


def _has_images(d: Path) -> bool:
    try:
        return any(p.suffix.lower() in IMAGE_EXTS for p in d.iterdir())
    except OSError:
        return False


def _frame_folder(d: Path) -> Path | None:
    """``d`` as a frame folder: itself when it holds images, ``d/images`` (the CVC/Kvasir layout) when that does."""
    if _has_images(d):
        return d
    if (d / "images").is_dir() and _has_images(d / "images"):
        return d / "images"
    return None


def _expand(spec: str, base: Path | None, recursive: bool, seen_lists: set[Path]) -> Iterator[Path]:
    p = Path(spec).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    if any(c in spec for c in "*?["):
        hits = sorted(glob.glob(str(p), recursive=True))
        if not hits:
            raise RuntimeInputError(f"the pattern {spec!r} matches nothing")
        for h in hits:
            hp = Path(h)
            if hp.is_file() and hp.suffix.lower() in VIDEO_EXTS:
                yield hp
            elif hp.is_dir() and _frame_folder(hp):
                yield _frame_folder(hp)
        return
    if not p.exists():
        raise RuntimeInputError(f"source {str(p)!r} does not exist: pass videos, frame folders, folders of those, "
                                "globs or list files")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in LIST_EXTS:
            rp = p.resolve()
            if rp in seen_lists:
                raise RuntimeInputError(f"list file {str(p)!r} includes itself")
            seen_lists.add(rp)
            try:
                lines = p.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise RuntimeInputError(f"cannot read list file {str(p)!r}: {e}") from None
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield from _expand(line, p.parent, recursive, seen_lists)
            return
        if suffix in IMAGE_EXTS:
            raise RuntimeInputError(f"{str(p)!r} is a single image: pass its folder (a frame sequence)")
        yield p  # any other file is taken as a video (an unreadable one is recorded as failed)
        return
    ff = _frame_folder(p)
    if ff is not None:
        yield ff
        return
    found = False
    for child in sorted(p.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix.lower() in VIDEO_EXTS:
            found = True
            yield child
        elif child.is_dir():
            sub = _frame_folder(child)
            if sub is not None:
                found = True
                yield sub
            elif recursive:
                for x in _expand(str(child), None, recursive, seen_lists):
                    found = True
                    yield x
    if not found:
        raise RuntimeInputError(f"folder {str(p)!r} holds no video ({', '.join(VIDEO_EXTS[:4])}, …) and no frame "
                                f"folder{'' if recursive else ' (--recursive searches its subfolders)'}")


def discover_sources(specs: Sequence[str], recursive: bool = False) -> list[Path]:
    """Every source the specs name, absolute, each once, in the order given."""
    out: list[Path] = []
    seen: set[Path] = set()
    lists: set[Path] = set()
    for spec in specs:
        for p in _expand(str(spec), None, recursive, lists):
            rp = p.resolve()
            if rp not in seen:
                seen.add(rp)
                out.append(rp)
    if not out:
        raise RuntimeInputError("no source to process")
    return out


def output_names(sources: Sequence[Path]) -> list[str]:
    """Output stems: the file stem (a frame folder named ``images``/``frames``: its parent's name); names shared by
    several sources get a short hash of the path."""
    def stem(p: Path) -> str:
        if p.is_dir() and p.name.lower() in ("images", "frames", "imgs"):
            return p.parent.name or p.name
        return p.stem if p.is_file() else p.name

    stems = [stem(p) for p in sources]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    return [s if counts[s.lower()] == 1 else f"{s}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
            for s, p in zip(stems, sources)]


def _frames_hint(p: Path) -> int:
    if p.is_dir():
        return sum(1 for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
    import cv2

    cap = cv2.VideoCapture(str(p))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()


# -- the model -------------------------------------------------------------------------------------------------------


def default_model_path(model: str, backend: str, log: Callable[[str], None]) -> Path:
    """The cached INT8 export of ``model`` (as the live demo uses), made by ``python -m export.cache`` in a
    subprocess (this process stays torch-free)."""
    flavour = "qdq-s8" if backend == "trt" else "qdq-u8"
    cmd = [sys.executable, "-m", "export.cache", "--model", model, "--precision", "int8", "--int8-flavour", flavour]
    log(f"model: the cached {model} INT8 export (python -m export.cache --model {model} --int8-flavour {flavour})")
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=3600)
    except OSError as e:
        raise RuntimeInputError(f"cannot run the export ({e}); pass --onnx PATH") from None
    if r.returncode != 0:
        if "No module named export" in (r.stdout or ""):
            raise RuntimeInputError("the export tools are not installed: pip install 'polypseg[export]', or pass "
                                    "--onnx PATH")
        raise RuntimeInputError(f"exporting {model} failed (exit {r.returncode}, message above); pass --onnx PATH "
                                "to use an exported model")
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    if not lines or not Path(lines[-1]).is_file():
        raise RuntimeInputError(f"the export of {model} printed no model path; pass --onnx PATH")
    return Path(lines[-1])


def _model_identity(path: Path) -> tuple[Manifest, str]:
    if not path.is_file():
        raise RuntimeInputError(f"model file {str(path)!r} does not exist")
    m = Manifest.load(manifest_path(path))
    m.check_matches(path)
    sha = m.engine.get("engine_sha256") if path.suffix in (".engine", ".plan") else m.onnx_sha256
    if m.plugins and path.suffix == ".onnx":
        raise RuntimeInputError(f"{path.name} is a TensorRT deploy graph with plugin nodes: export it without "
                                "--plugins for the CPU backends, or build an engine")
    return m, sha or ""


# -- the job ---------------------------------------------------------------------------------------------------------


class _OutLock:
    """One job per output folder (two jobs writing the same results would race)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".batch.lock"

    def __enter__(self):
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.close()
            raise RuntimeInputError(f"another runtime.batch job is writing to {str(self.path.parent)!r}; wait for it "
                                    "or choose another --out") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def clean_partial(out: Path) -> int:
    """Remove what interrupted or killed attempts left (``OUT/.partial``, temporary JSONs); returns the count."""
    n = 0
    part = out / PARTIAL
    if part.is_dir():
        for p in part.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    for p in out.glob(".*.json.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def summary_row(r: dict[str, Any]) -> dict[str, Any]:
    segs = r.get("segments") or []
    dur = r.get("duration_s") or 0
    model = r.get("model") or {}
    timing = r.get("timing") or {}
    return {"name": r.get("name"), "status": r.get("status"), "error": r.get("error", ""),
            "frames": r.get("frames", 0), "fps": r.get("fps"), "duration_s": dur,
            "polyp_seconds": r.get("polyp_seconds", 0),
            "polyp_fraction": round(r.get("polyp_seconds", 0) / dur, 4) if dur else 0,
            "segments": len(segs), "peak_prob": max((s["peak_prob"] for s in segs), default=0),
            "resized_frames": r.get("resized_frames", 0), "seconds": timing.get("seconds"),
            "worker": timing.get("worker", ""), "model": model.get("name", ""), "precision": model.get("precision", ""),
            "backend": model.get("backend", ""), "input_sha256": r.get("input_sha256", ""), "source": r.get("source")}


def write_summary(out: Path, results: list[dict[str, Any]], parquet: bool) -> list[Path]:
    rows = [summary_row(r) for r in results]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
    w.writeheader()
    w.writerows(rows)
    paths = [write_bytes_atomic(out / "summary.csv", buf.getvalue().encode())]
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        paths.append(write_bytes_atomic(out / "summary.parquet", sink.getvalue().to_pybytes()))
    return paths


def plot_summary(out: Path, results: list[dict[str, Any]], top: int = 6) -> Path | None:
    """``summary.png``: polyp time per video (bars over each video's duration) and the probability timelines of
    the ``top`` videos with the most polyp time (segments shaded). None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in results if r.get("status") == "ok"]
    if not ok:
        return None
    ok.sort(key=lambda r: (-r.get("polyp_seconds", 0), r["name"]))
    bars = ok[:40]
    strips = [r for r in ok if r.get("polyp_seconds", 0) > 0][:top] or ok[:1]
    fig = plt.figure(figsize=(11, 3 + 0.22 * len(bars) + 1.0 * len(strips)), constrained_layout=True)
    gs = fig.add_gridspec(1 + len(strips), 1, height_ratios=[max(2.0, 0.22 * len(bars))] + [1.0] * len(strips))
    ax = fig.add_subplot(gs[0])
    names = [r["name"] for r in bars][::-1]
    ax.barh(names, [r["duration_s"] for r in bars][::-1], color="#d9d9d9", label="video length")
    ax.barh(names, [r["polyp_seconds"] for r in bars][::-1], color="#d62728", label="polyp in view")
    ax.set_xlabel("seconds")
    shown = f"top {len(bars)} of {len(ok)}" if len(ok) > len(bars) else f"{len(ok)} videos"
    ax.set_title(f"Polyp time per video ({shown})")
    ax.legend(loc="lower right", fontsize=8)
    for i, r in enumerate(strips):
        a = fig.add_subplot(gs[1 + i])
        prob = r["timeline"]["prob"]
        t = [k / r["fps"] for k in range(len(prob))]
        a.plot(t, prob, lw=0.8, color="#1f77b4")
        for s in r.get("segments", []):
            a.axvspan(s["start_s"], s["end_s"], color="#d62728", alpha=0.2, lw=0)
        a.axhline(r["settings"]["enter"], color="grey", lw=0.5, ls="--")
        a.set_ylim(0, 1.02)
        a.set_xlim(0, max(t[-1], 1e-3) if t else 1)
        a.set_ylabel("p", rotation=0, labelpad=8)
        a.set_title(f"{r['name']}: {len(r.get('segments', []))} segment(s), {r['polyp_seconds']:.1f} s of "
                    f"{r['duration_s']:.1f} s", fontsize=9, loc="left")
        if i == len(strips) - 1:
            a.set_xlabel("time (s)")
    b = io.BytesIO()
    fig.savefig(b, format="png", dpi=90)
    plt.close(fig)
    return write_bytes_atomic(out / "summary.png", b.getvalue())


class BatchJob:
    """The job: sources → tasks (hash, key, skip), an executor (local processes or Ray actors), the summary."""

    def __init__(self, sources: Sequence[Path], out: str | os.PathLike[str], model_path: Path, backend: str = "auto",
                 workers: int = 1, threads: int | None = None, settings: BatchSettings = BatchSettings(),
                 ray_address: str | None = None, force: bool = False, fast: bool = True,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                 parquet: bool = False, top: int = 6) -> None:
        settings.check()
        if workers < 1:
            raise RuntimeInputError(f"--workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise RuntimeInputError(f"--threads must be >= 1, got {threads}")
        self.sources, self.out = list(sources), Path(out).resolve()
        self.model_path = Path(model_path).resolve()
        self.manifest, self.model_sha = _model_identity(self.model_path)
        if backend == "auto":
            from .backends import default_backend

            backend = default_backend(for_engine=self.model_path.suffix in (".engine", ".plan"))
        self.backend, self.workers, self.settings = backend, workers, settings
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.ray_address, self.force, self.fast, self.log = ray_address, force, fast, log
        self.parquet, self.top = parquet, top  # summary.parquet; probability strips in summary.png

    # tasks -----------------------------------------------------------------------------------------------------------

    def tasks(self, progress: bool = False) -> tuple[list[VideoTask], list[dict[str, Any]]]:
        """(videos to process, finished results skipped)."""
        todo, done = [], []
        names = output_names(self.sources)
        from tqdm import tqdm

        for src, name in tqdm(list(zip(self.sources, names)), desc="hash", unit="video", disable=not progress,
                              leave=False, dynamic_ncols=True):
            prev = read_result(self.out / f"{name}.json")
            sha = None
            st = prev.get("source_stat") if prev and prev.get("source") == str(src) else None
            if st and src.is_file():  # unchanged file (size, mtime): its hash is known
                s = src.stat()
                if st.get("size") == s.st_size and st.get("mtime_ns") == s.st_mtime_ns:
                    sha = prev.get("input_sha256")
            try:
                sha = sha or input_sha256(src)
            except OSError as e:
                raise RuntimeInputError(f"cannot read source {str(src)!r}: {e.strerror or e}") from None
            key = job_key(sha, self.model_sha, self.backend, self.settings)
            if not self.force and result_complete(prev, key, self.out):
                done.append(prev)
                continue
            todo.append(VideoTask(str(src), name, sha, key, _frames_hint(src)))
        return todo, done

    # run -----------------------------------------------------------------------------------------------------------

    def run(self, progress: bool = False) -> dict[str, Any]:
        why = check_destination(self.out / "summary.csv")
        if why:
            raise RuntimeInputError(f"--out: {why}")
        with _OutLock(self.out):
            return self._run_locked(progress)

    def _executor(self):
        if self.ray_address is not None:
            from .batch_ray import RayExecutor

            return RayExecutor(self.ray_address, self.model_path, self.backend, self.workers, self.threads, self.fast,
                               self.log)
        from .batch_local import LocalExecutor

        return LocalExecutor(self.model_path, self.backend, self.workers, self.threads, self.fast)

    def _run_locked(self, progress: bool) -> dict[str, Any]:
        clean_partial(self.out)
        todo, skipped = self.tasks(progress)
        results: dict[str, dict[str, Any]] = {r["name"]: r for r in skipped}
        frames_total = sum(t.frames_hint for t in todo)
        self.log(f"{len(self.sources)} source(s): {len(skipped)} already done, {len(todo)} to process "
                 f"({frames_total} frames) with {self.workers} worker(s) × {self.threads} thread(s) on "
                 f"{self.backend}{' via Ray' if self.ray_address is not None else ''}")
        from tqdm import tqdm

        bar = tqdm(total=frames_total or len(todo), unit="frame" if frames_total else "video", desc="batch",
                   disable=not progress, dynamic_ncols=True, smoothing=0.1)
        counts = {"ok": 0, "failed": 0}
        stopped = ""
        t0 = time.perf_counter()

        def on_result(task: VideoTask, r: dict[str, Any]) -> None:
            results[task.name] = r
            counts["ok" if r.get("status") == "ok" else "failed"] += 1
            bar.update(task.frames_hint if frames_total else 1)
            bar.set_postfix(ok=counts["ok"], failed=counts["failed"], skipped=len(skipped))
            if not progress:
                what = (f"{r.get('frames', 0)} frames, {len(r.get('segments', []))} segment(s)"
                        if r.get("status") == "ok" else f"FAILED: {r.get('error')}")
                self.log(f"[{counts['ok'] + counts['failed']}/{len(todo)}] {task.name}: {what}")

        handlers = {}

        def on_signal(signum, frame):
            raise Interrupted(signum)

        if todo:
            for s in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError):  # not the main thread: the caller handles signals
                    handlers[s] = signal.signal(s, on_signal)
            try:
                self._executor().run(todo, str(self.out), self.settings, on_result)
            except (Interrupted, KeyboardInterrupt) as e:
                stopped = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
            finally:
                for s, h in handlers.items():
                    signal.signal(s, h)
                bar.close()
                clean_partial(self.out)
        wall = time.perf_counter() - t0
        processed = [results[t.name] for t in todo if t.name in results]
        frames_done = sum(r.get("frames", 0) for r in processed if r.get("status") == "ok")
        ordered = [results.get(n) or {"name": n, "status": "pending", "source": str(s)}
                   for s, n in zip(self.sources, output_names(self.sources))]
        written = write_summary(self.out, ordered, self.parquet)
        plot = plot_summary(self.out, ordered, self.top)
        job = {"format": FORMAT + "-job", "out": str(self.out), "model": str(self.model_path),
               "model_sha256": self.model_sha, "backend": self.backend, "workers": self.workers,
               "threads_per_worker": self.threads, "executor": "ray" if self.ray_address is not None else "local",
               "ray_address": self.ray_address, "settings": asdict(self.settings), "sources": len(self.sources),
               "processed": len(processed), "skipped": len(skipped),
               "failed": sum(1 for r in ordered if r.get("status") == "failed"),
               "pending": sum(1 for r in ordered if r.get("status") == "pending"),
               "frames": frames_done, "seconds": round(wall, 3),
               "frames_per_second": round(frames_done / wall, 2) if wall > 0 and frames_done else 0.0,
               "stopped_by": stopped, "outputs": [p.name for p in written] + ([plot.name] if plot else [])}
        write_json_atomic(self.out / "job.json", job)
        return job


def run_batch(sources: Sequence[str], out: str | os.PathLike[str], model_path: str | os.PathLike[str], *,
              recursive: bool = False, parquet: bool = False, top: int = 6, progress: bool = False,
              **kw: Any) -> dict[str, Any]:
    """Library entry: discover ``sources``, run the job into ``out``; returns the job record (``job.json``)."""
    job = BatchJob(discover_sources(sources, recursive), out, Path(model_path), parquet=parquet, top=top, **kw)
    return job.run(progress)


def _workers(text: str) -> int:
    if text == "auto":
        return max(1, min(os.cpu_count() or 1, 2))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.batch", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("sources", nargs="+", help="videos, frame folders, folders of those, globs, list files")
    p.add_argument("--out", required=True, help="results folder (created)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name, exported on first use (default {DEFAULT_MODEL})")
    g.add_argument("--onnx", help="an exported ONNX (manifest beside it)")
    g.add_argument("--engine", help="a TensorRT engine (GPU workers)")
    p.add_argument("--backend", choices=("auto", "ort", "openvino", "trt"), default="auto")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="worker processes / Ray actors, each with its own backend (default auto: 2 on 2+ cores)")
    p.add_argument("--threads", type=int, help="inference threads per worker (default: cores / workers)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (ADDRESS, 'auto' for the running one; none: a local one)")
    p.add_argument("--video", action="store_true", help="also write the annotated video <name>.mp4")
    p.add_argument("--masks", choices=MASK_FORMATS, help="also write the masks: png (zip of 1-bit PNGs) or rle (JSON)")
    p.add_argument("--enter", type=float, default=0.5, help="segment opens at frame probability >= this (0.5)")
    p.add_argument("--exit", type=float, default=0.3, help="... and closes below this (0.3)")
    p.add_argument("--merge-gap", type=float, default=1.0, help="merge segments closer than this many seconds (1.0)")
    p.add_argument("--min-segment", type=float, default=0.2, help="drop segments shorter than this (s, 0.2)")
    p.add_argument("--folder-fps", type=float, default=25.0, help="frame rate of frame-folder sources (25)")
    p.add_argument("--recursive", action="store_true", help="search folders' subfolders for videos")
    p.add_argument("--force", action="store_true", help="redo videos already done")
    p.add_argument("--parquet", action="store_true", help="also write summary.parquet (needs pyarrow)")
    p.add_argument("--top", type=int, default=6, help="probability strips in summary.png (6)")
    p.add_argument("--no-fast", dest="fast", action="store_false", help="reference pre/post-processing")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    settings = BatchSettings(a.enter, a.exit, a.merge_gap, a.min_segment, a.folder_fps, a.video, a.masks or "")
    settings.check()
    if a.top < 0:
        raise RuntimeInputError(f"--top must be >= 0, got {a.top}")
    if a.parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RuntimeInputError("--parquet needs pyarrow: pip install 'polypseg[ray]' (or pyarrow)") from None
    sources = discover_sources(a.sources, a.recursive)
    why = check_destination(Path(a.out) / "summary.csv")
    if why:
        raise RuntimeInputError(f"--out: {why}")
    if a.onnx or a.engine:
        model_path = Path(a.onnx or a.engine)
    else:
        model_path = default_model_path(a.model, a.backend, log)
    job = BatchJob(sources, a.out, model_path, a.backend, a.workers, a.threads, settings,
                   None if a.ray is None else a.ray, a.force, a.fast, log, parquet=a.parquet, top=a.top)
    rec = job.run(a.progress and sys.stderr.isatty())
    log(f"{rec['processed']} processed ({rec['failed']} failed), {rec['skipped']} skipped, {rec['pending']} not run; "
        f"{rec['frames']} frames in {rec['seconds']:.1f} s = {rec['frames_per_second']:.1f} frames/s; results in "
        f"{rec['out']}")
    if rec["stopped_by"]:
        log(f"stopped by {rec['stopped_by']}: finished results are kept; run the same command again to go on")
        return 128 + int(getattr(signal.Signals, rec["stopped_by"]))
    return 2 if rec["failed"] else 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

"""One recorded video through the model: the per-frame polyp probability and area timeline, the polyp-present
segments, and optionally the annotated video and the masks — the unit of work of :mod:`runtime.batch`.

Definitions (documented in the README, used by every executor alike):

* **frame probability** — the largest pixel probability of the frame (``sigmoid`` of the largest logit);
* **frame area** — the fraction of the frame where the probability exceeds the model's threshold (network
  resolution);
* **segments** — hysteresis on the frame probability: a segment opens at ``p ≥ enter`` and closes at the first
  frame with ``p < exit``; segments separated by at most ``merge_gap_s`` are merged, segments shorter than
  ``min_len_s`` dropped. Each carries its start/end time and frame, its peak probability and frame, and its mean
  area.

A worker (:class:`BatchWorker`) opens its backend once and processes videos one after another. It writes every
output to a temporary file under ``OUT/.partial`` and renames it into ``OUT``; the JSON is written last, so a JSON
with ``status: ok`` means every output it names is complete. A video that cannot be read is recorded as failed
(``status: failed`` and the reason); the worker goes on with the next.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import socket
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common.errors import UserError
from common.io import sha256_file, write_bytes_atomic, write_json_atomic

from .errors import RuntimeInputError
from .video import IMAGE_EXTS, SourceError, count_frames, open_source

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402

__all__ = ["FORMAT", "VERSION", "BatchSettings", "BatchWorker", "VideoTask", "input_sha256", "job_key",
           "find_segments", "mask_rle", "read_result", "result_complete", "result_identity"]

FORMAT = "polypseg-batch"
#: bump when the per-video results change for the same input, model and settings
VERSION = 1
PARTIAL = ".partial"
MASK_FORMATS = ("png", "rle")


@dataclass(frozen=True)
class BatchSettings:
    """What a per-video result depends on besides the input and the model (all part of the skip key)."""

    enter: float = 0.5         # segment opens at frame probability >= enter
    exit: float = 0.3          # ... and closes at the first frame below exit
    merge_gap_s: float = 1.0   # segments closer than this are one
    min_len_s: float = 0.2     # shorter segments are dropped
    folder_fps: float = 25.0   # frame rate of frame-folder sources (videos carry their own)
    video: bool = False        # write the annotated video
    masks: str = ""            # "", "png" (zip of 1-bit PNGs) or "rle" (COCO-style run lengths in JSON)

    def check(self) -> None:
        if not (0.0 < self.exit <= self.enter < 1.0):
            raise RuntimeInputError(f"segment hysteresis needs 0 < exit <= enter < 1, got enter {self.enter} and "
                                    f"exit {self.exit}")
        if self.merge_gap_s < 0 or self.min_len_s < 0 or not self.folder_fps > 0:
            raise RuntimeInputError("--merge-gap and --min-segment must be >= 0 and --folder-fps > 0")
        if self.masks not in ("", *MASK_FORMATS):
            raise RuntimeInputError(f"--masks must be one of {', '.join(MASK_FORMATS)}, got {self.masks!r}")


@dataclass(frozen=True)
class VideoTask:
    """One source of the job: where it is, what its outputs are called, and its identity."""

    source: str          # absolute path of the video file or frame folder
    name: str            # output stem: OUT/<name>.json (.mp4, .masks.zip, .masks.json)
    input_sha256: str
    key: str             # input + model + backend + settings: a finished result with this key is skipped
    frames_hint: int = 0  # frame count from the container (progress/ETA only)


def input_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a video file, or of a frame folder (its image names and contents, in order)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256(b"frame-folder\n")
    for f in sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS):
        h.update(f"{f.name}\n{sha256_file(f)}\n".encode())
    return h.hexdigest()


def job_key(input_sha: str, model_sha: str, backend: str, settings: BatchSettings) -> str:
    blob = json.dumps({"input": input_sha, "model": model_sha, "backend": backend, "settings": asdict(settings),
                       "format": VERSION}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def find_segments(prob: np.ndarray, area: np.ndarray, fps: float, s: BatchSettings) -> list[dict[str, Any]]:
    """Polyp-present segments of a probability timeline (hysteresis, merge, minimum length): see the module doc."""
    runs: list[list[int]] = []
    start = None
    for i, p in enumerate(prob):
        if start is None:
            if p >= s.enter:
                start = i
        elif p < s.exit:
            runs.append([start, i - 1])
            start = None
    if start is not None:
        runs.append([start, len(prob) - 1])
    gap = int(round(s.merge_gap_s * fps))
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] - 1 <= gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    min_len = max(1, int(round(s.min_len_s * fps)))
    out = []
    for a, b in merged:
        if b - a + 1 < min_len:
            continue
        peak = a + int(np.argmax(prob[a:b + 1]))
        out.append({"start_s": round(a / fps, 4), "end_s": round((b + 1) / fps, 4), "start_frame": a,
                    "end_frame": b, "frames": b - a + 1, "peak_prob": round(float(prob[peak]), 4),
                    "peak_frame": peak, "mean_area": round(float(area[a:b + 1].mean()), 5)})
    return out


def mask_rle(mask: np.ndarray) -> list[int]:
    """COCO-style uncompressed run lengths of a boolean mask: column-major, starting with a run of zeros."""
    flat = np.asarray(mask, bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def result_identity(result: dict[str, Any]) -> dict[str, Any]:
    """The part of a per-video result that must not depend on how or where it ran (timing and worker dropped)."""
    return {k: v for k, v in result.items() if k not in ("timing", "source_stat")}


class _Prefetch:
    """Decodes frames on a thread, a few ahead of inference (decode and inference overlap)."""

    def __init__(self, source, depth: int = 4) -> None:
        self.q: queue.Queue = queue.Queue(depth)
        self.source, self.stop = source, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True, name="batch-decode")
        self.t.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                frame = self.source.read()
                self._put(frame)
                if frame is None:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(e)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.t.join(timeout=5)


class BatchWorker:
    """Opens ``model_path`` on ``backend`` once; :meth:`process` runs one video after another.

    Args:
        model_path: an exported ONNX or a TensorRT engine (its manifest beside it).
        backend: ``auto``, ``ort``, ``openvino`` or ``trt`` (as :func:`runtime.backends.create_backend`).
        threads: inference threads of this worker (the job splits the cores between its workers).
    """

    def __init__(self, model_path: str, backend: str = "auto", threads: int | None = None, fast: bool = True) -> None:
        from .backends import default_backend, open_backend
        from .manifest import Manifest, manifest_path
        from .pipeline import create_processor

        self.model_path = Path(model_path)
        self.manifest = Manifest.load(manifest_path(self.model_path))
        self.manifest.check_matches(self.model_path)
        if backend == "auto":
            backend = default_backend(for_engine=self.model_path.suffix in (".engine", ".plan"))
        self.backend = open_backend(backend, self.model_path, threads=threads, streams=1)
        self.processor = create_processor(self.backend, self.manifest, fast=fast, threads=1)
        self.processor.warmup(1)
        t = float(self.manifest.threshold)
        self.logit_threshold = math.log(t / (1.0 - t))
        self.threads = threads
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": m.model, "precision": m.precision, "flavour": m.quant_flavour, "input_hw": list(m.input_hw),
                "file": self.model_path.name, "sha256": m.engine.get("engine_sha256") or m.onnx_sha256,
                "backend": self.backend.name, "threshold": m.threshold}

    def close(self) -> None:
        self.backend.close()

    # -- one video ---------------------------------------------------------------------------------------------

    def process(self, task: VideoTask, out_dir: str, settings: BatchSettings,
                on_frame: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Run ``task`` and write its outputs into ``out_dir``; returns the result (also written as
        ``<name>.json``). Never raises for a bad video: the result says ``failed`` and why."""
        out = Path(out_dir)
        t0 = time.perf_counter()
        base = {"format": FORMAT, "version": VERSION, "name": task.name, "source": task.source,
                "input_sha256": task.input_sha256, "key": task.key, "model": self.describe(),
                "settings": asdict(settings)}
        try:
            st = os.stat(task.source)
            base["source_stat"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            pass
        temps: list[Path] = []
        try:
            result = {**base, **self._run(task, out, settings, temps, on_frame)}
        except (UserError, SourceError, OSError, cv2.error, ValueError) as e:
            for p in temps:
                p.unlink(missing_ok=True)
            msg = " ".join(str(e).split()) or type(e).__name__
            result = {**base, "status": "failed", "error": msg}
        dt = time.perf_counter() - t0
        frames = result.get("frames", 0)
        result["timing"] = {"seconds": round(dt, 3), "fps": round(frames / dt, 2) if dt > 0 else 0.0,
                            "worker": self.worker, "threads": self.threads}
        write_json_atomic(out / f"{task.name}.json", result)
        return result

    def _run(self, task: VideoTask, out: Path, s: BatchSettings, temps: list[Path],
             on_frame: Callable[[int], None] | None) -> dict[str, Any]:
        src = open_source(task.source)
        fps = float(src.fps) if getattr(src, "fps", 0) and not Path(task.source).is_dir() else s.folder_fps
        if not (0 < fps < 1000):
            fps = s.folder_fps
        partial = out / PARTIAL
        partial.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}.{os.urandom(3).hex()}"
        writer = zf = None
        video_tmp = masks_tmp = None
        rle: list[list[int]] = []
        probs: list[float] = []
        areas: list[float] = []
        size = None
        resized = 0
        pre = _Prefetch(src)
        try:
            for frame in pre:
                if size is None:
                    size = frame.shape[:2]
                    if s.video:
                        video_tmp = partial / f"{task.name}.{tag}.mp4"
                        temps.append(video_tmp)
                        writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                 (size[1], size[0]))
                        if not writer.isOpened():
                            raise OSError(f"cannot write the annotated video in {partial}")
                    if s.masks == "png":
                        masks_tmp = partial / f"{task.name}.{tag}.masks.zip"
                        temps.append(masks_tmp)
                        zf = zipfile.ZipFile(masks_tmp, "w", zipfile.ZIP_STORED)
                elif frame.shape[:2] != size:  # a frame of another size: resized to the stream's, and counted
                    frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                    resized += 1
                x = self.processor.preprocess(frame)
                logits = np.asarray(self.processor.infer(x), np.float32).reshape(self.manifest.input_hw)
                top = float(logits.max())
                probs.append(1.0 / (1.0 + math.exp(-top)) if top > -80 else 0.0)
                areas.append(float((logits > self.logit_threshold).mean()))
                if s.masks:
                    full = cv2.resize(logits, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                    mask = full > self.logit_threshold
                    if zf is not None:
                        ok, png = cv2.imencode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
                        if not ok:
                            raise OSError("cannot encode a mask as PNG")
                        # a fixed entry time: the archive's bytes depend on the masks only (same result anywhere)
                        zf.writestr(zipfile.ZipInfo(f"frame_{len(probs) - 1:06d}.png", (1980, 1, 1, 0, 0, 0)),
                                    png.tobytes())
                    else:
                        rle.append(mask_rle(mask))
                if writer is not None:
                    self.processor.render(frame, logits.reshape(1, 1, *self.manifest.input_hw))
                    writer.write(frame)
                if on_frame is not None:
                    on_frame(len(probs))
        finally:
            pre.close()
            src.close()
            if writer is not None:
                writer.release()
            if zf is not None:
                zf.close()
        n = len(probs)
        if n == 0:
            raise SourceError(f"{task.source}: no frame")
        prob, area = np.asarray(probs), np.asarray(areas)
        outputs: dict[str, Any] = {}
        if video_tmp is not None:
            held = count_frames(video_tmp)
            if held != n:
                raise OSError(f"the annotated video holds {held} of {n} frames (writer failed: disk full?)")
            outputs["video"] = self._publish(video_tmp, out / f"{task.name}.mp4", held)
        if masks_tmp is not None:
            with zipfile.ZipFile(masks_tmp) as z:
                held = len(z.namelist())
            if held != n:
                raise OSError(f"the mask archive holds {held} of {n} masks")
            outputs["masks"] = self._publish(masks_tmp, out / f"{task.name}.masks.zip", held)
        elif s.masks == "rle":
            data = json.dumps({"size": list(size), "order": "F", "first": "zeros", "counts": rle},
                              separators=(",", ":")).encode()
            path = write_bytes_atomic(out / f"{task.name}.masks.json", data)
            outputs["masks"] = {"file": path.name, "bytes": len(data), "frames": n,
                                "sha256": hashlib.sha256(data).hexdigest()}
        segs = find_segments(prob, area, fps, s)
        return {"status": "ok", "fps": round(fps, 4), "frames": n, "duration_s": round(n / fps, 4),
                "frame_size": list(size), "resized_frames": resized,
                "polyp_seconds": round(sum(g["frames"] for g in segs) / fps, 4), "segments": segs,
                "timeline": {"prob": [round(p, 4) for p in probs], "area": [round(a, 5) for a in areas]},
                "outputs": outputs}

    @staticmethod
    def _publish(tmp: Path, dest: Path, frames: int) -> dict[str, Any]:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, dest)
        return {"file": dest.name, "bytes": size, "frames": frames, "sha256": digest}


def read_result(path: Path) -> dict[str, Any] | None:
    """A per-video result JSON, or None when absent or unreadable (then it is simply redone)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("format") == FORMAT else None


def result_complete(d: dict[str, Any] | None, key: str, out: Path) -> bool:
    """A finished result for ``key`` whose outputs are all present at their recorded sizes."""
    if not d or d.get("status") != "ok" or d.get("key") != key or d.get("version") != VERSION:
        return False
    for o in (d.get("outputs") or {}).values():
        try:
            if (out / o["file"]).stat().st_size != o["bytes"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True

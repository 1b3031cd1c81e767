"""Real-time video pipeline: capture, inference and render run concurrently with bounded queues.

Live sources (camera, stream) use latest-frame-wins and count dropped frames; files and folders process every
frame in order. Per-stage and end-to-end (capture → overlay) latencies are reported as p50/p95/p99 together with
FPS and drops. A source that fails mid-stream ends the run cleanly: the report says why, and the output written so
far is finalised.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .backends.base import Backend
from .manifest import Manifest
from .video import Source, SourceError

__all__ = ["FrameProcessor", "Pipeline", "RunReport", "create_processor", "latency_stats"]

try:
    from kernels import ops as _ops

    HAS_FAST = _ops.HAS_EXT
except Exception:  # noqa: BLE001 - the runtime still works on the reference chain
    _ops, HAS_FAST = None, False


def latency_stats(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


class FrameProcessor:
    """Frame → network input → logits → annotated frame, with the compiled hot path (or the reference chain).

    Args:
        backend: an opened or openable :class:`~runtime.backends.base.Backend`.
        manifest: the exported model's manifest (the only source of preprocessing constants).
        fast: use the C++ hot path when it is built.
        threads: threads of the pre/post-processing kernels.
    """

    def __init__(self, backend: Backend, manifest: Manifest, fast: bool = True, threads: int = 1,
                 fill=(0, 255, 0), alpha: float = 0.4, outline=(0, 255, 255)) -> None:
        self.backend, self.m = backend, manifest
        self.fast = fast and HAS_FAST
        self.threads = threads
        self.fill, self.alpha, self.outline = fill, alpha, outline
        dtype = np.float16 if backend.input_spec().dtype == "float16" else np.float32
        # one run function and one input buffer per inference stream (lane): lanes run concurrently
        lanes = getattr(backend, "lanes", None)  # duck-typed backends without lanes run one stream
        self._runs = lanes() if lanes else [lambda x: backend.infer(x, check=False)]
        self._xs = [np.empty((1, manifest.in_channels, *manifest.input_hw), dtype) for _ in self._runs]
        self._x = self._xs[0]

    @property
    def n_lanes(self) -> int:
        """Frames that may be in inference at once (the backend's streams)."""
        return len(self._runs)

    def warmup(self, n: int = 2) -> None:
        """Run the network on a blank input (first inferences allocate and compile; keep them out of the stats)."""
        for _ in range(n):
            for run in self._runs:
                run(np.zeros_like(self._x))

    def preprocess(self, frame: np.ndarray, lane: int = 0) -> np.ndarray:
        """The network input for ``frame``, written into ``lane``'s buffer (valid until that lane's next call)."""
        x = self._xs[lane]
        if self.fast:
            return _ops.preprocess(frame, self.m.input_hw, self.m.mean, self.m.std, x.dtype, out=x,
                                   threads=self.threads)
        from .preprocess import preprocess_reference

        return preprocess_reference(frame, self.m.input_hw, self.m.mean, self.m.std, x.dtype)

    def infer(self, x: np.ndarray, lane: int = 0) -> np.ndarray:
        return self._runs[lane](x)

    def render(self, frame: np.ndarray, logits: np.ndarray) -> int:
        """Annotate ``frame`` in place; returns the foreground pixel count."""
        if self.fast:
            return _ops.overlay(frame, logits, self.m.threshold, self.fill, self.alpha, self.outline,
                                threads=self.threads)
        from .preprocess import overlay_reference

        out, mask = overlay_reference(frame, logits, self.m.threshold, self.fill, self.alpha, self.outline)
        frame[...] = out
        return int(mask.sum())


def create_processor(backend: Backend, manifest: Manifest, fast: bool = True, threads: int = 1):
    """The frame processor for ``backend``: on TensorRT, the all-GPU one (CUDA pre/post kernels around the engine,
    :mod:`runtime.gpu`) when its library is built; otherwise the CPU one (C++ hot path)."""
    if fast and getattr(backend, "name", "") == "trt":
        from .gpu import GpuFrameProcessor, find_cuda_hotpath

        if find_cuda_hotpath() is not None:
            return GpuFrameProcessor(backend, manifest)
    return FrameProcessor(backend, manifest, fast=fast, threads=threads)


@dataclass
class RunReport:
    source: str
    live: bool
    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    ended_by: str = "end of source"
    error: str = ""
    latency_ms: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)


class _Latest:
    """One-slot buffer: a new frame replaces an unconsumed one (counted as dropped)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item = None
        self.dropped = 0
        self.closed = False

    def put(self, item) -> None:
        with self._cv:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cv.notify()

    def get(self, timeout: float = 0.5):
        with self._cv:
            if self._item is None and not self.closed:
                self._cv.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()


_END = object()


class Pipeline:
    """Runs ``source`` through ``processor`` with a capture thread, an inference thread and a render thread.

    Args:
        sinks: callables ``sink(frame, info)`` called by the render thread for every annotated frame (video
            writer, web server, window).
        max_frames: stop after this many frames (0 = until the source ends).
        queue_size: bound of the capture → inference and inference → render queues (ordered sources).
    """

    def __init__(self, source: Source, processor: FrameProcessor, sinks: list[Callable] | None = None,
                 max_frames: int = 0, queue_size: int = 1) -> None:
        self.source, self.proc, self.sinks = source, processor, sinks or []
        self.max_frames, self.queue_size = max_frames, queue_size
        self.stop_event = threading.Event()
        self.stats: dict[str, list[float]] = {k: [] for k in ("capture", "preprocess", "infer", "render", "sinks",
                                                              "end_to_end")}
        self.frames_done = 0
        self.last_info: dict[str, Any] = {}

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> RunReport:
        live = self.source.live
        cap_q: Any = _Latest() if live else queue.Queue(self.queue_size)
        out_q: queue.Queue = queue.Queue(self.queue_size)
        report = RunReport(source=self.source.name, live=live)
        errors: list[str] = []
        captured = [0]

        def put(q, item) -> bool:
            while not self.stop_event.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        # ordered sources read the next frame only once an inference stream is free, so that the capture timestamp
        # is the moment the frame could enter the pipeline (as a camera frame would), not a read-ahead that sits in
        # a queue: end-to-end latency then measures the pipeline, not a backlog
        n_workers = max(1, int(getattr(self.proc, "n_lanes", 1)))
        # with several streams a frame keeps its slot until it is shown (ordered sources), so a stalled stream
        # cannot let finished frames pile up in the reorder buffer: at most 2 × streams frames are in flight
        release_at_render = not live and n_workers > 1
        slots = threading.Semaphore(2 * n_workers if release_at_render else max(self.queue_size, n_workers))
        workers_left = [n_workers]
        workers_lock = threading.Lock()
        late = [0]

        def capture() -> None:
            try:
                while not self.stop_event.is_set():
                    if self.max_frames and captured[0] >= self.max_frames:
                        break
                    if not live:
                        while not slots.acquire(timeout=0.2):
                            if self.stop_event.is_set():
                                return
                    t0 = time.perf_counter()
                    frame = self.source.read()
                    if frame is None:
                        break
                    t1 = time.perf_counter()
                    self.stats["capture"].append((t1 - t0) * 1e3)
                    captured[0] += 1
                    item = (captured[0], frame, t1)
                    if live:
                        cap_q.put(item)
                    elif not put(cap_q, item):
                        break
            except SourceError as e:
                errors.append(str(e))
            except Exception as e:  # noqa: BLE001 - report, never hang the other threads
                errors.append(f"capture failed: {type(e).__name__}: {e}")
            finally:
                if live:
                    cap_q.close()
                else:
                    put(cap_q, _END)

        def infer(lane: int) -> None:
            lane_args = (lane,) if n_workers > 1 else ()
            try:
                while not self.stop_event.is_set():
                    if live:
                        item = cap_q.get()
                        if item is None:
                            if cap_q.closed:
                                break
                            continue
                    else:
                        try:
                            item = cap_q.get(timeout=0.2)
                        except queue.Empty:
                            continue
                        if item is _END:
                            put(cap_q, _END)  # for the other streams
                            break
                    idx, frame, t_cap = item
                    t0 = time.perf_counter()
                    x = self.proc.preprocess(frame, *lane_args)
                    t1 = time.perf_counter()
                    logits = self.proc.infer(x, *lane_args)
                    t2 = time.perf_counter()
                    if not live and not release_at_render:
                        slots.release()
                    self.stats["preprocess"].append((t1 - t0) * 1e3)
                    self.stats["infer"].append((t2 - t1) * 1e3)
                    if not put(out_q, (idx, frame, logits.copy(), t_cap)):
                        break
            except Exception as e:  # noqa: BLE001
                errors.append(f"inference failed: {type(e).__name__}: {e}")
                self.stop_event.set()
            finally:
                with workers_lock:
                    workers_left[0] -= 1
                    last = workers_left[0] == 0
                if last:
                    put(out_q, _END)

        def render(item) -> None:
            if release_at_render:
                slots.release()
            idx, frame, logits, t_cap = item
            t0 = time.perf_counter()
            fg = self.proc.render(frame, logits)
            t1 = time.perf_counter()
            self.stats["render"].append((t1 - t0) * 1e3)
            self.stats["end_to_end"].append((t1 - t_cap) * 1e3)
            self.frames_done += 1
            info = {"frame": idx, "polyp_px": fg, "polyp_fraction": fg / (frame.shape[0] * frame.shape[1]),
                    "latency_ms": (t1 - t_cap) * 1e3, "fps": self.frames_done / max(1e-9, t1 - t_start),
                    "dropped": (cap_q.dropped + late[0]) if live else 0}
            self.last_info = info
            for sink in self.sinks:
                sink(frame, info)
            self.stats["sinks"].append((time.perf_counter() - t1) * 1e3)

        threads = [threading.Thread(target=capture, name="capture", daemon=True)] + [
            threading.Thread(target=infer, args=(i,), name=f"infer{i}", daemon=True) for i in range(n_workers)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        pending: dict[int, Any] = {}
        next_idx, last_shown = 1, 0
        try:
            while True:
                try:
                    item = out_q.get(timeout=0.2)
                except queue.Empty:
                    if self.stop_event.is_set() and not any(t.is_alive() for t in threads):
                        break
                    continue
                if item is _END:
                    break
                if n_workers == 1:
                    render(item)
                elif live:  # streams finish out of order: a frame older than the one shown is dropped
                    if item[0] < last_shown:
                        late[0] += 1
                        continue
                    last_shown = item[0]
                    render(item)
                else:  # ordered sources: restore capture order
                    pending[item[0]] = item
                    while next_idx in pending:
                        render(pending.pop(next_idx))
                        next_idx += 1
            for idx in sorted(pending):  # after a failure: whatever finished, in order
                render(pending.pop(idx))
        except KeyboardInterrupt:
            report.ended_by = "interrupted"
        except Exception as e:  # noqa: BLE001 - a failing sink ends the run cleanly too
            errors.append(f"render failed: {type(e).__name__}: {e}")
        finally:
            self.stop_event.set()
            for t in threads:
                t.join(timeout=5)
            self.source.close()
        report.seconds = time.perf_counter() - t_start
        report.frames = self.frames_done
        report.dropped = (cap_q.dropped + late[0]) if live else 0
        report.fps = self.frames_done / report.seconds if report.seconds > 0 else 0.0
        if errors:
            report.ended_by, report.error = "source or stage failure", errors[0]
        elif self.max_frames and captured[0] >= self.max_frames and report.ended_by != "interrupted":
            report.ended_by = "max frames"
        report.latency_ms = {k: latency_stats(v) for k, v in self.stats.items()}
        return report


class VideoSink:
    """Writes annotated frames to an MP4, atomically: a temporary file renamed when the run ends."""

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".avi", ".mkv"):
            raise ValueError(f"--out must be a .mp4/.avi/.mkv path, got {str(self.path)!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps = fps or 25.0
        self.writer = None
        self.frames = 0

    def __call__(self, frame: np.ndarray, info: dict) -> None:
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise OSError(f"cannot write video {self.path}")
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> str:
        if self.writer is None:
            return ""
        self.writer.release()
        os.replace(self.tmp, self.path)
        return str(self.path)

"""Real-time video pipeline: capture, inference and render run concurrently with bounded queues.

Live sources (camera, stream) use latest-frame-wins and count dropped frames; files and folders process every
frame in order. Per-stage and end-to-end (capture → overlay) latencies are reported as p50/p95/p99 together with
FPS and drops. A source that fails mid-stream ends the run cleanly: the report says why, and the output written so
far is finalised.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np

from .backends.base import Backend
from .manifest import Manifest
from .pipeline_steps import PipelineRun, RunReport, latency_stats
from .video import Source, VideoWriter

__all__ = ["FrameProcessor", "Pipeline", "RunReport", "create_processor", "latency_stats"]

try:
    from kernels import ops as _ops

    HAS_FAST = _ops.HAS_EXT
except Exception:  # noqa: BLE001 - the runtime still works on the reference chain
    _ops, HAS_FAST = None, False


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
        from kernels.frame_reference import preprocess_reference

        return preprocess_reference(frame, self.m.input_hw, self.m.mean, self.m.std, x.dtype)

    def infer(self, x: np.ndarray, lane: int = 0) -> np.ndarray:
        return self._runs[lane](x)

    def render(self, frame: np.ndarray, logits: np.ndarray) -> int:
        """Annotate ``frame`` in place; returns the foreground pixel count."""
        if self.fast:
            return _ops.overlay(frame, logits, self.m.threshold, self.fill, self.alpha, self.outline,
                                threads=self.threads)
        from kernels.frame_reference import overlay_reference

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


class Pipeline:
    """Runs ``source`` through ``processor`` with a capture thread, one inference thread per stream and the render
    loop on the calling thread.

    Args:
        sinks: callables ``sink(frame, info)`` called by the render thread for every annotated frame (video
            writer, web server, window).
        max_frames: stop after this many frames (0 = until the source ends).
        queue_size: bound of the capture → inference and inference → render queues (ordered sources).
        stabilizer: a :class:`~runtime.stabilize.Stabilizer` applied to the logits in display order (None: raw);
            the all-GPU processor keeps its logits on the device and runs without it.
        deadline: a :class:`~runtime.deadline.Deadline`: live sources are then shown at the camera's rate with the
            newest mask, never with one older than its budget (see :mod:`runtime.deadline`); files and folders keep
            every frame with its own mask.
        fallback: a lighter processor the deadline may switch inference to when the primary cannot keep up.
    """

    def __init__(self, source: Source, processor: FrameProcessor, sinks: list[Callable] | None = None,
                 max_frames: int = 0, queue_size: int = 1, stabilizer: Any = None, deadline: Any = None,
                 fallback: FrameProcessor | None = None) -> None:
        self.source, self.proc, self.sinks = source, processor, sinks or []
        self.max_frames, self.queue_size = max_frames, queue_size
        host = getattr(processor, "host_logits", True)
        self.stabilizer = stabilizer if host else None
        self.deadline = deadline if host else None  # the all-GPU processor renders the frame it inferred
        self.fallback = fallback
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.stats: dict[str, list[float]] = {k: [] for k in ("capture", "preprocess", "infer", "stabilize", "render",
                                                              "sinks", "end_to_end")}
        self.frames_done = 0
        self.last_info: dict[str, Any] = {}

    def stop(self, reason: str = "") -> None:
        """End the run (from a signal handler or another thread); ``reason`` (e.g. ``SIGTERM``) goes to the report's
        ``ended_by``."""
        if reason and not self.stop_reason:
            self.stop_reason = reason
        self.stop_event.set()

    def run(self) -> RunReport:
        """Run until the source ends, ``max_frames``, :meth:`stop` (e.g. on SIGTERM), Ctrl-C or a failure of any
        stage; the steps are those of :class:`~runtime.pipeline_steps.PipelineRun`."""
        return PipelineRun(self).execute()


class VideoSink:
    """Writes annotated frames to a video, published only when complete (see :class:`runtime.video.VideoWriter`):
    frames of another size are resized, and :meth:`close` raises :class:`runtime.video.VideoWriteError` with the
    number of frames the file really holds when it does not hold them all."""

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        self.writer = VideoWriter(path, fps)
        self.path = self.writer.path

    @property
    def frames(self) -> int:
        return self.writer.frames

    def __call__(self, frame: np.ndarray, info: dict) -> None:
        self.writer.write(frame)

    def close(self) -> str:
        p = self.writer.close()
        return str(p) if p else ""

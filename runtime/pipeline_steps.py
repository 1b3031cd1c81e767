"""The steps of one :meth:`runtime.pipeline.Pipeline.run`: a capture thread, one inference worker per stream and the
render loop on the calling thread, joined by bounded queues; then the report. :class:`InFlight` bounds the frames an
ordered source has in flight, :class:`Ordering` decides which inferred frames are shown and when (reorder buffer,
late frames of live sources), :class:`PipelineRun` holds the state the threads share and runs the steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .video import SourceError

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["END", "InFlight", "LatestSlot", "Ordering", "PipelineRun", "RunReport", "latency_stats",
           "put_until_stopped"]


def latency_stats(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


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
    deadline: dict[str, Any] = field(default_factory=dict)


class LatestSlot:
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


END = object()  # end of the frames (ordered sources: capture → inference; every source: inference → render)


def put_until_stopped(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` into the bounded ``q``, retrying until it fits; False if ``stop`` is set first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


class InFlight:
    """Slots of frames in flight for ordered sources (live sources never wait: latest frame wins).

    Ordered sources read the next frame only once an inference stream is free, so that the capture timestamp is the
    moment the frame could enter the pipeline (as a camera frame would), not a read-ahead that sits in a queue:
    end-to-end latency then measures the pipeline, not a backlog. With several streams a frame keeps its slot until
    it is shown, so a stalled stream cannot let finished frames pile up in the reorder buffer: at most 2 × streams
    frames are in flight.
    """

    def __init__(self, live: bool, n_workers: int, queue_size: int) -> None:
        self.live = live
        self.release_at_render = not live and n_workers > 1
        self._slots = threading.Semaphore(2 * n_workers if self.release_at_render else max(queue_size, n_workers))

    def acquire(self, stop: threading.Event) -> bool:
        """Capture: wait for a free slot (ordered sources); False if ``stop`` is set while waiting."""
        if not self.live:
            while not self._slots.acquire(timeout=0.2):
                if stop.is_set():
                    return False
        return True

    def inferred(self) -> None:
        """A frame left its inference stream (frees its slot unless it is held until shown)."""
        if not self.live and not self.release_at_render:
            self._slots.release()

    def shown(self) -> None:
        """A frame reached the render step (frees its slot when slots are held until shown)."""
        if self.release_at_render:
            self._slots.release()


class Ordering:
    """Which inferred frames ``(idx, frame, logits, t_capture)`` are shown, and when. One stream: every frame as it
    comes. Several streams finish out of order: live sources drop a frame older than the one shown (``late``),
    ordered sources restore capture order in a reorder buffer."""

    def __init__(self, live: bool, n_workers: int) -> None:
        self.live, self.n_workers = live, n_workers
        self.pending: dict[int, Any] = {}
        self.next_idx, self.last_shown = 1, 0
        self.late = 0

    def ready(self, item) -> Iterator[Any]:
        """The frames to show now that ``item`` has arrived, in order."""
        if self.n_workers == 1:
            yield item
        elif self.live:  # streams finish out of order: a frame older than the one shown is dropped
            if item[0] < self.last_shown:
                self.late += 1
                return
            self.last_shown = item[0]
            yield item
        else:  # ordered sources: restore capture order
            self.pending[item[0]] = item
            while self.next_idx in self.pending:
                yield self.pending.pop(self.next_idx)
                self.next_idx += 1

    def leftovers(self) -> Iterator[Any]:
        """After a failure: whatever finished, in order."""
        for idx in sorted(self.pending):
            yield self.pending.pop(idx)


class PipelineRun:
    """One run of ``pipe``: the state its threads share and the steps each thread runs."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe, self.stop_event, self.stats = pipe, pipe.stop_event, pipe.stats
        self.live = pipe.source.live
        self.cap_q: Any = LatestSlot() if self.live else queue.Queue(pipe.queue_size)
        self.out_q: queue.Queue = queue.Queue(pipe.queue_size)
        self.report = RunReport(source=pipe.source.name, live=self.live)
        self.errors: list[str] = []
        self.captured = 0
        # camera-rate display (runtime.deadline): every captured frame is shown with the newest fresh mask
        self.camera = pipe.deadline is not None and self.live
        self.display: LatestSlot | None = LatestSlot() if self.camera else None
        self.n_workers = 1 if self.camera else max(1, int(getattr(pipe.proc, "n_lanes", 1)))
        self.in_flight = InFlight(self.live, self.n_workers, pipe.queue_size)
        self.ordering = Ordering(self.live, self.n_workers)
        self.workers_left = self.n_workers
        self.workers_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.t_start = 0.0

    def _put(self, q: queue.Queue, item) -> bool:
        return put_until_stopped(q, item, self.stop_event)

    @property
    def dropped(self) -> int:
        """Frames captured but never shown: replaced in the live slot, or finished too late (live sources)."""
        if self.camera:
            return self.display.dropped
        return (self.cap_q.dropped + self.ordering.late) if self.live else 0

    # ------------------------------------------------------------------------------------------ capture thread
    def capture(self) -> None:
        """Read frames until the source ends, ``max_frames``, a stop or a failure; then signal the end."""
        try:
            self._capture_frames()
        except SourceError as e:
            self.errors.append(str(e))
        except Exception as e:  # noqa: BLE001 - report, never hang the other threads
            self.errors.append(f"capture failed: {type(e).__name__}: {e}")
        finally:
            if self.live:
                self.cap_q.close()
            else:
                self._put(self.cap_q, END)
            if self.display is not None:
                self.display.close()

    def _capture_frames(self) -> None:
        pipe = self.pipe
        while not self.stop_event.is_set():
            if pipe.max_frames and self.captured >= pipe.max_frames:
                break
            if not self.in_flight.acquire(self.stop_event):
                return
            t0 = time.perf_counter()
            frame = pipe.source.read()
            if frame is None:
                break
            t1 = time.perf_counter()
            self.stats["capture"].append((t1 - t0) * 1e3)
            self.captured += 1
            item = (self.captured, frame, t1)
            if self.display is not None:  # the display draws on its own copy; inference reads the original
                self.display.put((self.captured, frame.copy(), t1))
            if self.live:
                self.cap_q.put(item)
            elif not self._put(self.cap_q, item):
                break

    # ------------------------------------------------------------------------------------------ inference workers
    def infer(self, lane: int) -> None:
        """One inference stream: captured frames → logits, until the end of the frames, a stop or a failure."""
        try:
            self._infer_frames(lane)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"inference failed: {type(e).__name__}: {e}")
            self.stop_event.set()
        finally:
            with self.workers_lock:
                self.workers_left -= 1
                last = self.workers_left == 0
            if last:  # the last stream out signals the end to the render loop
                self._put(self.out_q, END)

    def _next_captured(self):
        """The next captured frame, ``None`` if none came in time, or ``END`` when the frames have ended."""
        if self.live:
            item = self.cap_q.get()
            return END if item is None and self.cap_q.closed else item
        try:
            item = self.cap_q.get(timeout=0.2)
        except queue.Empty:
            return None
        if item is END:
            self._put(self.cap_q, END)  # for the other streams
        return item

    def _active_proc(self):
        """The processor inference uses now: the fallback while the deadline has degraded to it."""
        pipe = self.pipe
        if self.camera and pipe.fallback is not None and pipe.deadline.level == 1:
            return pipe.fallback
        return pipe.proc

    def _infer_frames(self, lane: int) -> None:
        lane_args = (lane,) if self.n_workers > 1 else ()
        while not self.stop_event.is_set():
            item = self._next_captured()
            if item is None:
                continue
            if item is END:
                break
            proc = self._active_proc()
            idx, frame, t_cap = item
            t0 = time.perf_counter()
            x = proc.preprocess(frame, *lane_args)
            t1 = time.perf_counter()
            logits = proc.infer(x, *lane_args)
            t2 = time.perf_counter()
            self.in_flight.inferred()
            self.stats["preprocess"].append((t1 - t0) * 1e3)
            self.stats["infer"].append((t2 - t1) * 1e3)
            out = (idx, frame, logits.copy(), t_cap, proc) if self.camera else (idx, frame, logits.copy(), t_cap)
            if not self._put(self.out_q, out):
                break

    # ------------------------------------------------------------------------------------------ render (caller)
    def show(self, item) -> None:
        """Annotate one inferred frame, record its latencies and hand it to the sinks."""
        self.in_flight.shown()
        idx, frame, logits, t_cap = item
        logits = self._stabilize(logits, frame)  # in display order: the temporal filter sees frames as shown
        t0 = time.perf_counter()
        fg = self.pipe.proc.render(frame, logits)
        self._deliver(idx, frame, fg, t0, t_cap, {})

    def _stabilize(self, logits, frame):
        st = self.pipe.stabilizer
        if st is None:
            return logits
        t0 = time.perf_counter()
        out = st(logits, frame)
        self.stats["stabilize"].append((time.perf_counter() - t0) * 1e3)
        return out

    def _deliver(self, idx: int, frame, fg: int, t0: float, t_cap: float, extra: dict[str, Any]) -> None:
        """Record the render and end-to-end times of a shown frame and hand it, with its info, to the sinks."""
        pipe = self.pipe
        t1 = time.perf_counter()
        self.stats["render"].append((t1 - t0) * 1e3)
        self.stats["end_to_end"].append((t1 - t_cap) * 1e3)
        pipe.frames_done += 1
        info = {"frame": idx, "polyp_px": fg, "polyp_fraction": fg / (frame.shape[0] * frame.shape[1]),
                "latency_ms": (t1 - t_cap) * 1e3, "fps": pipe.frames_done / max(1e-9, t1 - self.t_start),
                "dropped": self.dropped, **extra}
        pipe.last_info = info
        for sink in pipe.sinks:
            sink(frame, info)
        self.stats["sinks"].append((time.perf_counter() - t1) * 1e3)

    def show_camera(self, shown, mask) -> None:
        """Camera-rate display: annotate ``shown`` (a captured frame) with the newest ``mask`` unless it is older than
        the deadline's budget; then the warning instead of the outline."""
        from .deadline import draw_stale_warning

        dl = self.pipe.deadline
        idx, frame, t_cap = shown
        t0 = time.perf_counter()
        stale, age = dl.frame(t0, t_cap, mask[2] if mask else None)
        if stale:
            fg = 0
            draw_stale_warning(frame, age)
        else:
            fg = mask[3].render(frame, mask[1])
        self._deliver(idx, frame, fg, t0, t_cap, {
            "frame_age_ms": (time.perf_counter() - t_cap) * 1e3, "mask_age_ms": None if age == float("inf") else age,
            "mask_frame": mask[0] if mask else None, "stale": stale, "budget_ms": dl.budget_ms,
            "level": dl.level_name})

    def render_loop_camera(self) -> None:
        """Show every captured frame (latest wins) with the newest mask; masks are taken as they come (in capture
        order: one inference stream) and stabilised then."""
        pipe, mask, ended = self.pipe, None, False
        while True:
            while not ended:  # take every finished mask
                try:
                    item = self.out_q.get_nowait()
                except queue.Empty:
                    break
                if item is END:
                    ended = True
                    break
                idx, frame, logits, t_cap, proc = item
                mask = (idx, self._stabilize(logits, frame), t_cap, proc)
                pipe.deadline.mask_new()
            shown = self.display.get(timeout=0.02)
            if shown is not None:
                self.show_camera(shown, mask)
            elif self.display.closed and (ended or self.stop_event.is_set()):
                break
            elif self.stop_event.is_set() and not any(t.is_alive() for t in self.threads):
                break

    def render_loop(self) -> None:
        """Show inferred frames as :class:`Ordering` releases them, until the end of the frames (or a stop with
        every thread gone); then whatever a failure left in the reorder buffer."""
        if self.camera:
            return self.render_loop_camera()
        while True:
            try:
                item = self.out_q.get(timeout=0.2)
            except queue.Empty:
                if self.stop_event.is_set() and not any(t.is_alive() for t in self.threads):
                    break
                continue
            if item is END:
                break
            for ready in self.ordering.ready(item):
                self.show(ready)
        for ready in self.ordering.leftovers():
            self.show(ready)

    # ------------------------------------------------------------------------------------------ the whole run
    def start(self) -> None:
        """Start the capture thread and one inference thread per stream."""
        self.threads = [threading.Thread(target=self.capture, name="capture", daemon=True)] + [
            threading.Thread(target=self.infer, args=(i,), name=f"infer{i}", daemon=True)
            for i in range(self.n_workers)]
        self.t_start = time.perf_counter()
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        """Stop every thread and close the source."""
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=5)
        self.pipe.source.close()

    def execute(self) -> RunReport:
        """Start, render until the end (a failing sink or Ctrl-C ends the run cleanly too), finish, report."""
        self.start()
        try:
            self.render_loop()
        except KeyboardInterrupt:
            self.report.ended_by = "SIGINT"
        except Exception as e:  # noqa: BLE001 - a failing sink ends the run cleanly too
            self.errors.append(f"render failed: {type(e).__name__}: {e}")
        finally:
            self.finish()
        return self.assemble_report()

    def assemble_report(self) -> RunReport:
        """Frames, drops, FPS, why the run ended, and the latency statistics of every stage."""
        pipe, report = self.pipe, self.report
        report.seconds = time.perf_counter() - self.t_start
        report.frames = pipe.frames_done
        report.dropped = self.dropped
        report.fps = pipe.frames_done / report.seconds if report.seconds > 0 else 0.0
        if self.errors:
            report.ended_by, report.error = "source or stage failure", self.errors[0]
        elif pipe.stop_reason:
            report.ended_by = pipe.stop_reason
        elif pipe.max_frames and self.captured >= pipe.max_frames and report.ended_by != "SIGINT":
            report.ended_by = "max frames"
        report.latency_ms = {k: latency_stats(v) for k, v in self.stats.items()}
        if self.camera:
            report.deadline = pipe.deadline.report()
        return report

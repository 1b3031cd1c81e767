"""Several inference streams: concurrent lanes give the single-stream results, the pipeline keeps frame order on
ordered sources and never shows an older frame after a newer one on live sources, and ``streams="auto"`` picks
two streams only for a network slower than the frame budget."""

from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np
import pytest

from runtime.backends import create_backend, open_backend, parse_streams
from runtime.errors import RuntimeInputError
from runtime.manifest import Manifest
from runtime.pipeline import FrameProcessor, Pipeline
from runtime.video import Source, open_source


def _frames(clip, n):
    return [cv2.imread(str(p)) for p in sorted(clip.iterdir())[:n]]


def _run(onnx_model, clip, streams):
    backend = create_backend("ort", onnx_model, threads=2, streams=streams).open()
    proc = FrameProcessor(backend, Manifest.load(onnx_model))
    used = set()
    runs = proc._runs

    def traced(run):
        def go(x):
            used.add(threading.current_thread().name)
            time.sleep(0.005)  # make the streams overlap
            return run(x)
        return go

    proc._runs = [traced(r) for r in runs]
    seen = []
    rep = Pipeline(open_source(str(clip)), proc, [lambda f, i: seen.append((i["frame"], i["polyp_px"]))]).run()
    return proc, rep, seen, used


def test_two_streams_keep_order_and_results(onnx_model, clip):
    p1, r1, s1, _ = _run(onnx_model, clip, 1)
    p2, r2, s2, used = _run(onnx_model, clip, 2)
    assert p1.n_lanes == 1 and p2.n_lanes == 2
    assert not r2.error and r2.frames == 25 and r2.latency_ms["infer"]["n"] == 25
    assert [i for i, _ in s2] == list(range(1, 26)), "ordered source: frames must come out in capture order"
    assert s2 == s1, "two streams must give the one-stream overlay, frame by frame"
    assert used == {"infer0", "infer1"}, used


class _Camera(Source):
    live = True
    name = "fake camera"

    def __init__(self, frames, n):
        self.frames, self.n, self.i = frames, n, 0

    def read(self):
        if self.i >= self.n:
            return None
        self.i += 1
        time.sleep(0.002)
        return self.frames[self.i % len(self.frames)].copy()


def test_live_source_with_two_streams_never_goes_back_in_time(onnx_model, clip):
    proc = FrameProcessor(create_backend("ort", onnx_model, threads=2, streams=2).open(), Manifest.load(onnx_model))
    runs = proc._runs
    # lane 0 slow, lane 1 fast: lane 1 finishes newer frames first, so lane 0's results arrive late
    proc._runs = [lambda x: (time.sleep(0.03), runs[0](x))[1], runs[1]]
    seen = []
    rep = Pipeline(_Camera(_frames(clip, 5), 150), proc, [lambda f, i: seen.append(i["frame"])]).run()
    assert not rep.error and rep.frames >= 3
    assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
    assert rep.frames + rep.dropped == 150 and rep.dropped > 0, "every captured frame is shown or counted dropped"


class _Counting(Source):
    """An ordered source that records, at each read, how many frames were read but not yet shown."""
    live = False
    name = "counting folder"

    def __init__(self, inner, shown):
        self.inner, self.shown, self.reads, self.in_flight = inner, shown, 0, []

    def read(self):
        f = self.inner.read()
        if f is not None:
            self.reads += 1
            self.in_flight.append(self.reads - len(self.shown))
        return f

    def close(self):
        self.inner.close()


def test_a_stalled_stream_does_not_pile_frames_up(onnx_model, clip):
    """Ordered source, two streams, one stalls for 1 s: the other may not run ahead and fill the reorder buffer."""
    proc = FrameProcessor(create_backend("ort", onnx_model, threads=2, streams=2).open(), Manifest.load(onnx_model))
    runs, calls = proc._runs, [0]

    def stalling(x):
        calls[0] += 1
        if calls[0] == 3:
            time.sleep(1.0)
        return runs[0](x)

    proc._runs = [stalling, runs[1]]
    shown: list[int] = []
    src = _Counting(open_source(str(clip)), shown)
    rep = Pipeline(src, proc, [lambda f, i: shown.append(i["frame"])]).run()
    assert not rep.error and shown == list(range(1, 26))
    assert max(src.in_flight) <= 5, src.in_flight  # 2 × streams, + the frame being shown


def test_openvino_lanes_run_concurrently_and_match_one_request(onnx_model, clip):
    pytest.importorskip("openvino")
    m = Manifest.load(onnx_model)
    from kernels.frame_reference import preprocess_reference

    xs = [preprocess_reference(f, m.input_hw, m.mean, m.std) for f in _frames(clip, 2)]
    with create_backend("openvino", onnx_model, threads=2) as one:
        want = [one.infer(x) for x in xs]
    two = create_backend("openvino", onnx_model, threads=2, streams=2).open()
    lanes = two.lanes()
    assert len(lanes) == 2 and two.streams == 2
    got = [None, None]

    def work(i):
        for _ in range(5):
            got[i] = lanes[i](xs[i].copy())

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    two.close()
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.abs(g - w).max() < 1e-3 * max(1.0, np.abs(w).max())
    assert np.abs(want[0] - want[1]).max() > 1e-3, "the two frames must differ for the lane check to mean anything"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="auto streams need two cores")
def test_auto_streams_follow_the_latency_budget(onnx_model):
    msgs = []
    fast = open_backend("ort", onnx_model, threads=2, streams="auto", budget_ms=1e6, log=msgs.append)
    assert fast.streams == 1 and not msgs
    fast.close()
    slow = open_backend("ort", onnx_model, threads=2, streams="auto", budget_ms=0.0, log=msgs.append)
    assert slow.streams == 2 and len(slow.lanes()) == 2 and "2 streams" in msgs[0]
    slow.close()
    fixed = open_backend("ort", onnx_model, threads=2, streams=3, log=msgs.append)
    assert fixed.streams == 3 and len(msgs) == 1
    fixed.close()


def test_streams_argument_errors(onnx_model):
    assert parse_streams("auto") == "auto" and parse_streams("2") == 2
    for bad in ("0", "-1", "two"):
        with pytest.raises(RuntimeInputError, match="--streams must be"):
            parse_streams(bad)
    with pytest.raises(RuntimeInputError, match="one stream"):
        create_backend("trt", onnx_model, streams=2)

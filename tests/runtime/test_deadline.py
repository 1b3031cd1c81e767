"""The deadline on a live source with a deliberately slowed backend: every captured frame is shown, stale masks are
withheld visibly, inference degrades to the fallback model and recovers to the primary when it can keep up."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from runtime.backends import create_backend
from runtime.deadline import Deadline, DeadlinePolicy
from runtime.manifest import Manifest
from runtime.pipeline import FrameProcessor, Pipeline
from runtime.video import Source


class _Camera(Source):
    """A 25 FPS live camera replaying a real clip."""

    live, name, fps = True, "paced camera", 25.0

    def __init__(self, folder, n):
        self.frames = [cv2.imread(str(p)) for p in sorted(folder.iterdir())]
        self.n, self.i, self.next = n, 0, time.perf_counter()

    def read(self):
        if self.i >= self.n:
            return None
        self.next += 1 / self.fps
        time.sleep(max(0.0, self.next - time.perf_counter()))
        self.i += 1
        return self.frames[self.i % len(self.frames)].copy()


class _Slowed:
    """A processor whose inference takes ``delay`` seconds longer (a network too big for the machine)."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def infer(self, x, *lane):
        time.sleep(self.delay)
        return self.inner.infer(x, *lane)


def _proc(onnx_model):
    return FrameProcessor(create_backend("ort", onnx_model, threads=1).open(), Manifest.load(onnx_model))


def _red_border(frame) -> bool:
    return bool((frame[1, 1] == (0, 0, 255)).all() and (frame[-2, -2] == (0, 0, 255)).all())


@pytest.fixture
def clip19(data_dir):
    """seq19: its polyp is clear enough for the small 96x96 test export to outline it in most frames."""
    p = data_dir / "cvc-clinicdb-clips" / "seq19" / "images"
    if not p.is_dir():
        pytest.skip(f"{p} not found")
    return p


def test_slow_backend_degrades_to_the_fallback_withholds_stale_masks_and_recovers(onnx_model, clip19):
    primary = _Slowed(_proc(onnx_model), 0.25)  # 4 masks per second at best: far behind a 25 FPS camera
    deadline = Deadline(DeadlinePolicy(sustain_s=0.4, retry_s=0.8), fps=25, has_fallback=True)
    assert deadline.budget_ms == pytest.approx(80.0)  # two frame periods
    seen = []

    def sink(frame, info):
        seen.append({**info, "red": _red_border(frame)})

    def speed_up_after_fallback():  # the machine frees up once the pipeline has degraded: the primary can keep up
        while not deadline.events:
            time.sleep(0.01)
        primary.delay = 0.0

    threading.Thread(target=speed_up_after_fallback, daemon=True).start()
    pipe = Pipeline(_Camera(clip19, 125), primary, [sink], deadline=deadline, fallback=_proc(onnx_model))
    rep = pipe.run()
    d = rep.deadline
    assert not rep.error and rep.frames == d["displayed"] == len(seen)
    assert rep.frames >= 0.9 * 125  # shown at the camera's rate, not the network's
    # degraded because masks were stale, then back on the primary once it kept up
    assert [(e["from"], e["to"]) for e in d["events"]][:2] == [("primary", "fallback"), ("fallback", "primary")]
    assert "older than 80 ms" in d["events"][0]["why"] and d["level"] == "primary"
    stale = [s for s in seen if s["stale"]]
    fresh = [s for s in seen if not s["stale"]]
    assert stale and fresh
    # a stale mask is never drawn: no outline, the warning border instead; fresh frames carry the outline
    assert all(s["polyp_px"] == 0 and s["red"] for s in stale)
    assert not any(s["red"] for s in fresh) and sum(s["polyp_px"] > 0 for s in fresh) > len(fresh) // 2
    assert all(s["mask_age_ms"] <= 80.0 for s in fresh) and all(s["frame_age_ms"] >= 0 for s in seen)
    # after the recovery nearly every frame has a fresh mask
    t_back = d["events"][1]["t_s"]
    tail = seen[int(len(seen) * 0.8):]
    assert d["seconds_in"]["fallback"] > 0 and t_back > 0
    assert sum(not s["stale"] for s in tail) >= 0.8 * len(tail)
    assert d["masks"] < d["displayed"] and d["frames_per_mask"] > 1  # frames were skipped, never waited for


def test_without_fallback_the_stale_guard_alone_holds(onnx_model, clip):
    deadline = Deadline(DeadlinePolicy(sustain_s=0.2), fps=25, has_fallback=False)
    seen = []
    pipe = Pipeline(_Camera(clip, 50), _Slowed(_proc(onnx_model), 0.3), [lambda f, i: seen.append((i, _red_border(f)))],
                    deadline=deadline)
    rep = pipe.run()
    d = rep.deadline
    assert d["events"] == [] and d["level"] == "primary"
    assert d["stale_fraction"] > 0.6 and rep.frames >= 45
    assert all(red and i["polyp_px"] == 0 for i, red in seen if i["stale"])
    assert d["mask_age_ms"]["n"] > 0 and d["mask_age_ms"]["p50"] > 80


def test_files_keep_every_frame_with_its_own_mask(onnx_model, clip):
    """A deadline does not change ordered sources (recordings): every frame, its own mask, no warning."""
    from runtime.video import open_source

    pipe = Pipeline(open_source(str(clip)), _proc(onnx_model), deadline=Deadline(fps=25))
    rep = pipe.run()
    assert rep.frames == 25 and rep.deadline == {}
    assert np.isfinite(rep.latency_ms["end_to_end"]["p50"])

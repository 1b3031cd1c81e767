"""The web view as a clinician watches it, in headless Chromium: the video scaled to the window, the polyp indicator,
FPS and latency figures with sparklines, the full-screen control, the stale-mask warning, and the token rules."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.serve import FrameServer


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browse(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,720",
                           "--virtual-time-budget=6000", *extra, url], capture_output=True, text=True, timeout=120)


@pytest.fixture
def frame(clip):
    return cv2.imread(str(sorted(clip.iterdir())[0]))


def _serve(frame, info, token=None):
    srv = FrameServer("127.0.0.1", _port(), token=token)
    srv(frame, info)
    return srv


def _attr(dom: str, name: str) -> int:
    return int(dom.split(f'{name}="')[1].split('"')[0])


def test_page_scales_the_video_to_the_window_with_readable_figures(frame, tmp_path):
    info = {"frame": 7, "fps": 41.25, "latency_ms": 23.4, "polyp_px": 5200, "polyp_fraction": 0.047, "dropped": 0}
    srv = _serve(frame, info, token="a-long-enough-test-token")
    try:
        url = f"http://127.0.0.1:{srv.port}/?token=a-long-enough-test-token"
        dom = _browse(url, tmp_path, "--dump-dom").stdout
        shot = tmp_path / "page.png"
        r = _browse(url, tmp_path, f"--screenshot={shot}")
        assert shot.is_file(), r.stderr[-2000:]
        denied = _browse(f"http://127.0.0.1:{srv.port}/", tmp_path, "--dump-dom").stdout
    finally:
        srv.close()
    # the figures, readable, and the controls
    assert 'id="indicator" aria-live="polite" class="polyp">POLYP<' in dom
    assert 'id="fps">41.3<' in dom and 'id="latency">23<' in dom
    assert 'id="fs"' in dom and "requestFullscreen" in dom and 'id="fps-spark"' in dom and 'id="lat-spark"' in dom
    assert 'id="stale" role="alert" class=""' in dom  # no warning while masks are fresh
    # the video fills the window below the bar (a 384x288 frame shown at the window's size, aspect kept)
    assert _attr(dom, "data-natural-w") == 384 and _attr(dom, "data-window-w") == 1280
    win_w, win_h = _attr(dom, "data-window-w"), _attr(dom, "data-window-h")
    assert _attr(dom, "data-video-w") >= 0.95 * win_w and _attr(dom, "data-video-h") >= win_h - 90, dom[:0] + str(
        (win_w, win_h, _attr(dom, "data-video-w"), _attr(dom, "data-video-h")))
    img = cv2.imread(str(shot))
    assert img.shape[1] == 1280
    ys, xs = np.nonzero(img[80:].max(axis=2) > 40)  # the picture (below the bar) is lit where the frame is drawn
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    # scaled up from 384x288 to the window's height, aspect kept (the frame's dark corners make the box a bit smaller)
    assert height >= 0.85 * (win_h - 80) and width >= 0.85 * height * 384 / 288, (width, height, img.shape)
    assert "access token required" in denied or "403" in denied or 'id="video"' not in denied


def test_page_shows_the_stale_mask_warning(frame, tmp_path):
    info = {"frame": 3, "fps": 24.8, "latency_ms": 18.0, "polyp_px": 0, "stale": True, "mask_age_ms": 412.0,
            "budget_ms": 80.0, "level": "fallback"}
    srv = _serve(frame, info)
    try:
        dom = _browse(f"http://127.0.0.1:{srv.port}/", tmp_path, "--dump-dom").stdout
    finally:
        srv.close()
    assert 'id="stale" role="alert" class="on">NO FRESH MASK (412 ms)' in dom
    assert 'class="stale">no fresh mask<' in dom and "model: fallback" in dom and 'id="maskage">412<' in dom

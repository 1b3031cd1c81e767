"""Video pipeline and live demo on real CVC-ClinicDB clips: ordered and live sources, failures mid-stream, outputs,
the web page in a real headless browser, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.backends import create_backend
from runtime.manifest import Manifest, manifest_path
from runtime.pipeline import FrameProcessor, Pipeline, VideoSink
from runtime.serve import FrameServer, needs_token
from runtime.video import Source, open_source

ROOT = Path(__file__).resolve().parents[2]


def _proc(onnx_model):
    m = Manifest.load(onnx_model)
    return FrameProcessor(create_backend("ort", onnx_model, threads=1).open(), m)


def test_ordered_folder_every_frame_in_order(onnx_model, clip, tmp_path):
    seen = []
    sink = VideoSink(tmp_path / "out.mp4", 25)
    pipe = Pipeline(open_source(str(clip)), _proc(onnx_model), [lambda f, i: seen.append(i["frame"]), sink])
    rep = pipe.run()
    sink.close()
    assert rep.frames == 25 and seen == list(range(1, 26)) and rep.dropped == 0 and not rep.error
    assert rep.ended_by == "end of source"
    for stage in ("capture", "preprocess", "infer", "render", "end_to_end"):
        st = rep.latency_ms[stage]
        assert st["n"] == 25 and 0 < st["p50"] <= st["p95"] <= st["p99"]
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 25
    ok, first = cap.read()
    assert ok and first.shape == (288, 384, 3)


class _FastLive(Source):
    """A live source that produces frames faster than the network consumes them."""

    live = True
    name = "fake camera"

    def __init__(self, frame, n):
        self.frame, self.n, self.i = frame, n, 0

    def read(self):
        if self.i >= self.n:
            return None
        self.i += 1
        time.sleep(0.001)
        f = self.frame.copy()
        f[0, 0, 0] = self.i % 256
        return f


def test_live_source_latest_frame_wins(onnx_model, clip):
    frame = cv2.imread(str(sorted(clip.iterdir())[0]))
    proc = _proc(onnx_model)
    slow_infer = proc.infer
    proc.infer = lambda x: (time.sleep(0.02), slow_infer(x))[1]
    rep = Pipeline(_FastLive(frame, 200), proc).run()
    assert rep.live and rep.dropped > 50, rep.dropped
    assert rep.frames + rep.dropped <= 200 and rep.frames >= 3


def test_failure_mid_stream_ends_cleanly_with_output_intact(onnx_model, clip, tmp_path):
    folder = tmp_path / "clip"
    shutil.copytree(clip, folder)
    bad = sorted(folder.iterdir())[9]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out, rep_path = tmp_path / "o.mp4", tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "demos.live", "--source", str(folder), "--onnx", str(onnx_model),
                        "--backend", "ort", "--out", str(out), "--report", str(rep_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    rep = json.loads(rep_path.read_text())
    assert rep["frames"] == 9 and bad.name in rep["error"] and rep["ended_by"] == "source or stage failure"
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 9 and cap.read()[0]
    assert not list(tmp_path.glob(".o.partial*"))


@pytest.mark.parametrize("case", ["missing", "not-a-video", "no-manifest", "other-manifest", "engine-no-gpu",
                                  "size-with-onnx", "size-not-multiple"])
def test_bad_input_one_line(case, onnx_model, clip, tmp_path):
    args = ["--source", str(clip), "--onnx", str(onnx_model), "--backend", "ort"]
    if case == "missing":
        args[1] = str(tmp_path / "nope.mp4")
        want = "does not exist"
    elif case == "not-a-video":
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(os.urandom(4096))
        args[1] = str(junk)
        want = "cannot open video file"
    elif case == "no-manifest":
        lone = tmp_path / "lone.onnx"
        shutil.copy(onnx_model, lone)
        args[3] = str(lone)
        want = "no manifest"
    elif case == "other-manifest":
        other = tmp_path / "other.onnx"
        shutil.copy(onnx_model, other)
        m = Manifest.load(onnx_model)
        m.onnx_sha256 = "0" * 64
        m.save(manifest_path(other))
        args[3] = str(other)
        want = "belongs to another model file"
    elif case == "size-with-onnx":
        args += ["--input-size", "96", "96"]
        want = "--input-size applies to --model exports"
    elif case == "size-not-multiple":
        args = ["--source", str(clip), "--model", "msnet_effl0", "--precision", "fp32", "--input-size", "100", "96"]
        want = "multiples of 32"
    else:
        eng = tmp_path / "m.engine"
        eng.write_bytes(b"\0" * 64)
        Manifest.load(onnx_model).save(manifest_path(eng))
        args = ["--source", str(clip), "--engine", str(eng)]
        want = "no CUDA device"
    r = subprocess.run([sys.executable, "-m", "demos.live", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "POLYPSEG_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert want in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_token_rules():
    assert not needs_token("127.0.0.1") and not needs_token("localhost") and not needs_token("::1")
    assert needs_token("0.0.0.0") and needs_token("192.168.1.20")
    srv = FrameServer("127.0.0.1", _free_port(), token="s3cret-long-enough-token")
    try:
        srv(np.zeros((8, 8, 3), np.uint8), {"frame": 1})
        base = f"http://127.0.0.1:{srv.port}"
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(base + "/frame.jpg", timeout=5)
        with urllib.request.urlopen(base + "/frame.jpg?token=s3cret-long-enough-token", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
    finally:
        srv.close()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return None


def test_serve_page_shows_frames_in_headless_chromium(onnx_model, clip, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    port = _free_port()
    demo = subprocess.Popen([sys.executable, "-m", "demos.live", "--source", str(clip), "--onnx", str(onnx_model),
                             "--backend", "ort", "--loop", "--serve", f"127.0.0.1:{port}", "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/frame.jpg", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        profile = tmp_path / "profile"
        r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--dump-dom",
                            f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=120)
        dom = r.stdout
        assert 'id="frames"' in dom, r.stderr[-2000:]
        n = int(dom.split('id="frames">')[1].split("<")[0])
        assert n >= 3, f"the page received {n} frames"
        assert '"fps"' in dom and "polyp_px" in dom  # live statistics reached the page
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    assert demo.returncode == 143  # stopped by SIGTERM: outputs finalised, conventional status


def test_model_export_at_another_input_size_is_cached_by_size(clip, tmp_path):
    """--model with --input-size exports (and caches) the graph at that size; the report says which size ran."""
    cache, rep = tmp_path / "cache", tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "demos.live", "--source", str(clip), "--model", "msnet_effl0",
                        "--precision", "fp32", "--input-size", "96", "128", "--backend", "ort", "--max-frames", "6",
                        "--report", str(rep), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "POLYPSEG_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(rep.read_text())
    assert report["model"]["input_hw"] == [96, 128] and report["frames"] == 6
    assert [p.name.split("-")[1] for p in (cache / "onnx").glob("*.onnx")] == ["96x128"]


def test_stabilizer_runs_in_display_order_and_changes_only_the_overlay(onnx_model, clip):
    """With the stabiliser the pipeline shows the same frames, in order, with the stabilised outline (its time
    reported as its own stage); without it, the overlay is the network's own."""
    from runtime.stabilize import Stabilizer

    def run(stab):
        shown = []
        pipe = Pipeline(open_source(str(clip)), _proc(onnx_model), [lambda f, i: shown.append((i["frame"],
                                                                                               i["polyp_px"]))],
                        stabilizer=stab)
        return pipe.run(), shown, pipe

    raw, shown_raw, _ = run(None)
    st = Stabilizer()
    rep, shown, pipe = run(st)
    assert [f for f, _ in shown] == list(range(1, 26)) == [f for f, _ in shown_raw]
    assert rep.latency_ms["stabilize"]["n"] == 25 and raw.latency_ms["stabilize"]["n"] == 0
    assert [px for _, px in shown] != [px for _, px in shown_raw]  # the outline did change
    assert pipe.stabilizer is st and st._ema is not None

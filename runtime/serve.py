"""A small web page for headless edge boxes: the annotated video (MJPEG) and live statistics.

The page is made for a second monitor in the endoscopy room: the video scaled to the window (full-screen button or
double-click), a polyp indicator, FPS and end-to-end latency as large figures with a one-minute sparkline each, the
age of the drawn mask and the model level of :mod:`runtime.deadline`, and the "no fresh mask" warning when the
outline is withheld; the raw statistics fold away at the bottom.

Routes: ``/`` (page), ``/stream.mjpg`` (multipart JPEG stream), ``/frame.jpg`` (latest frame), ``/stats``
(JSON). The video is patient data: the server binds to loopback unless told otherwise, and a non-loopback bind
requires an access token (generated and printed when not given), passed as ``?token=`` or an
``Authorization: Bearer`` header. Nothing else listens.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from .errors import RuntimeInputError

__all__ = ["FrameServer", "parse_hostport"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>polypseg live</title>
<style>
html,body{margin:0;height:100%;background:#000;color:#eee;font-family:system-ui,sans-serif;overflow:hidden}
#app{display:flex;flex-direction:column;height:100vh}
#bar{display:flex;align-items:center;gap:1.6em;padding:.4em 1em;background:#161616;font-size:1.1em;flex:0 0 auto}
#indicator{font-weight:700;padding:.25em .9em;border-radius:1em;background:#444;color:#ddd;min-width:6.5em;
  text-align:center}
#indicator.polyp{background:#d62728;color:#fff}
#indicator.stale{background:#ff9800;color:#000}
.fig{display:flex;align-items:baseline;gap:.35em}
.fig b{font-size:1.6em;font-variant-numeric:tabular-nums}
.fig small{color:#999}
canvas.spark{width:110px;height:30px;align-self:center}
#level{color:#999}
#fs{margin-left:auto;background:#333;color:#eee;border:1px solid #555;border-radius:.3em;padding:.3em .8em;
  font-size:1em;cursor:pointer}
#stage{position:relative;flex:1 1 auto;min-height:0;display:flex;align-items:center;justify-content:center}
#video{width:100%;height:100%;object-fit:contain;display:block}
#stale{display:none;position:absolute;top:1em;left:50%;transform:translateX(-50%);background:#ff9800;color:#000;
  font-weight:700;font-size:1.4em;padding:.3em 1em;border-radius:.3em}
#stale.on{display:block}
details{position:absolute;bottom:.3em;right:.5em;max-width:40em;font-size:.75em;color:#aaa;
  background:rgba(0,0,0,.6)}
#stats{font-family:monospace;white-space:pre;margin:0}
</style></head>
<body><div id="app">
<div id="bar">
  <span id="indicator" aria-live="polite">no polyp</span>
  <span class="fig"><b id="fps">–</b><small>FPS</small></span><canvas class="spark" id="fps-spark"></canvas>
  <span class="fig"><b id="latency">–</b><small>ms latency</small></span><canvas class="spark" id="lat-spark"></canvas>
  <span class="fig"><b id="maskage">–</b><small>ms mask age</small></span>
  <span id="level"></span>
  <button id="fs" type="button" title="full screen (double-click the video too)">Full screen</button>
</div>
<div id="stage">
  <img id="video" alt="annotated video">
  <div id="stale" role="alert">NO FRESH MASK — outline withheld</div>
  <details><summary>frames received: <span id="frames">0</span> · statistics</summary>
    <div id="stats">waiting for statistics…</div></details>
</div></div>
<script>
const tok = new URLSearchParams(location.search).get("token");
const q = tok ? ("token=" + encodeURIComponent(tok) + "&") : "";
let frames = 0, last = -1;
const img = document.getElementById("video"), stage = document.getElementById("stage");
const hist = {fps: [], lat: []};
function spark(id, data, colour) {
  const c = document.getElementById(id), dpr = window.devicePixelRatio || 1;
  c.width = c.clientWidth * dpr; c.height = c.clientHeight * dpr;
  const g = c.getContext("2d"); g.clearRect(0, 0, c.width, c.height);
  if (data.length < 2) return;
  const lo = Math.min(...data), hi = Math.max(...data), span = (hi - lo) || 1;
  g.strokeStyle = colour; g.lineWidth = 1.5 * dpr; g.beginPath();
  data.forEach((v, i) => { const x = i / (data.length - 1) * (c.width - 2) + 1;
    const y = c.height - 2 - (v - lo) / span * (c.height - 4); i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke();
}
function fullscreen() {
  const el = document.getElementById("app");
  if (document.fullscreenElement) document.exitFullscreen(); else if (el.requestFullscreen) el.requestFullscreen();
}
document.getElementById("fs").onclick = fullscreen; img.ondblclick = fullscreen;
function layout() {  // the video's shown size, for checks and for the operator's info
  stage.dataset.videoW = Math.round(img.getBoundingClientRect().width);
  stage.dataset.videoH = Math.round(img.getBoundingClientRect().height);
  stage.dataset.naturalW = img.naturalWidth; stage.dataset.windowW = window.innerWidth;
  stage.dataset.windowH = window.innerHeight;
}
async function pull() {
  try {
    const r = await fetch("/frame.jpg?" + q + "t=" + Date.now(), {cache: "no-store"});
    if (r.ok) {
      const idx = parseInt(r.headers.get("X-Frame-Index") || "-1");
      const blob = await r.blob();
      if (idx !== last) { frames++; last = idx; document.getElementById("frames").textContent = frames; }
      const url = URL.createObjectURL(blob); const old = img.src; img.src = url; if (old) URL.revokeObjectURL(old);
    }
  } catch (e) {}
  layout();
  setTimeout(pull, 30);
}
function show(s) {
  const ind = document.getElementById("indicator"), stale = !!s.stale;
  ind.className = stale ? "stale" : (s.polyp_px > 0 ? "polyp" : "");
  ind.textContent = stale ? "no fresh mask" : (s.polyp_px > 0 ? "POLYP" : "no polyp");
  document.getElementById("stale").className = stale ? "on" : "";
  if (stale && s.mask_age_ms != null)
    document.getElementById("stale").textContent =
      "NO FRESH MASK (" + Math.round(s.mask_age_ms) + " ms) — outline withheld";
  if (s.fps != null) { document.getElementById("fps").textContent = s.fps.toFixed(1); hist.fps.push(s.fps); }
  if (s.latency_ms != null) {
    document.getElementById("latency").textContent = Math.round(s.latency_ms); hist.lat.push(s.latency_ms); }
  document.getElementById("maskage").textContent = s.mask_age_ms != null ? Math.round(s.mask_age_ms) :
    (s.latency_ms != null ? Math.round(s.latency_ms) : "–");
  document.getElementById("level").textContent = s.level ? ("model: " + s.level) : "";
  for (const k in hist) if (hist[k].length > 60) hist[k].shift();
  spark("fps-spark", hist.fps, "#4caf50"); spark("lat-spark", hist.lat, "#03a9f4");
  document.getElementById("stats").textContent = JSON.stringify(s, null, 1);
}
async function stats() {
  try {
    const r = await fetch("/stats?" + q, {cache: "no-store"});
    if (r.ok) show(await r.json());
  } catch (e) {}
  setTimeout(stats, 250);
}
pull(); stats();
</script></body></html>
"""


def parse_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host:
        host = "127.0.0.1"
    host = host.strip("[]")
    try:
        p = int(port)
        if not 0 <= p < 65536:
            raise ValueError
    except ValueError:
        raise RuntimeInputError(f"--serve expects HOST:PORT (e.g. 127.0.0.1:8080), got {s!r}") from None
    return host, p


def needs_token(host: str) -> bool:
    """Any bind other than loopback exposes patient video to the network: it requires an access token."""
    return not is_loopback(host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FrameServer:
    """Serves the latest annotated frame and statistics; use as a pipeline sink (``server(frame, info)``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, quality: int = 80) -> None:
        self.token = token or (secrets.token_urlsafe(16) if needs_token(host) else None)
        self.quality = quality
        self._lock = threading.Condition()
        self._frame: np.ndarray | None = None
        self._jpeg: bytes = b""
        self._jpeg_idx = -1
        self._idx = -1
        self.stats: dict = {}
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _authorised(self, qs) -> bool:
                if not server.token:
                    return True
                given = (qs.get("token") or [""])[0]
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    given = given or auth[7:]
                return hmac.compare_digest(given.encode(), server.token.encode())

            def do_GET(self):  # noqa: N802 - http.server API
                url = urlparse(self.path)
                qs = parse_qs(url.query)
                server.requests += 1
                if not self._authorised(qs):
                    self.send_error(403, "access token required")
                    return
                if url.path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif url.path == "/frame.jpg":
                    jpg, idx = server.latest_jpeg()
                    if not jpg:
                        self.send_error(503, "no frame yet")
                        return
                    self._send(200, "image/jpeg", jpg, {"X-Frame-Index": str(idx)})
                elif url.path == "/stats":
                    self._send(200, "application/json", json.dumps(server.stats).encode())
                elif url.path == "/stream.mjpg":
                    self._stream()
                else:
                    self.send_error(404)

            def _send(self, code, ctype, body, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _stream(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                last = -1
                try:
                    while not server.closed:
                        jpg, idx = server.latest_jpeg(wait_newer_than=last, timeout=1.0)
                        if idx == last or not jpg:
                            continue
                        last = idx
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpg)).encode() + b"\r\n\r\n" + jpg + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.closed = False
        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise RuntimeInputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="serve", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def __call__(self, frame: np.ndarray, info: dict) -> None:
        with self._lock:
            self._frame = frame.copy()
            self._idx = int(info.get("frame", self._idx + 1))
            self.stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()}
            self._lock.notify_all()

    def latest_jpeg(self, wait_newer_than: int | None = None, timeout: float = 0.0) -> tuple[bytes, int]:
        with self._lock:
            if wait_newer_than is not None and self._idx <= wait_newer_than:
                self._lock.wait(timeout)
            frame, idx = self._frame, self._idx
            if frame is None:
                return b"", -1
            if idx == self._jpeg_idx:
                return self._jpeg, idx
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        with self._lock:
            if ok and idx >= self._jpeg_idx:
                self._jpeg, self._jpeg_idx = buf.tobytes(), idx
            return self._jpeg, self._jpeg_idx

    def close(self) -> None:
        self.closed = True
        with self._lock:
            self._lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_until(pred, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()

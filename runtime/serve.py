"""A small web page for headless edge boxes: the annotated video (MJPEG) and live statistics.

The page is made for a second monitor in the endoscopy room: the video scaled to the window (full-screen button or
double-click), a polyp indicator, FPS and end-to-end latency as large figures with a one-minute sparkline each, the
age of the drawn mask and the model level of :mod:`runtime.deadline`, and the "no fresh mask" warning when the
outline is withheld; the raw statistics fold away at the bottom.

Routes: ``/`` (page), ``/stream.mjpg`` (multipart JPEG stream), ``/frame.jpg`` (latest frame), ``/stats``
(JSON). The video is patient data: the server binds to loopback (IPv4 or IPv6) unless told otherwise, and a
non-loopback bind requires an access token of at least 16 characters (generated and printed when not given), passed
as ``?token=`` or an ``Authorization: Bearer`` header; the token never appears in logs or reports
(:attr:`FrameServer.redacted_url`). Nothing else listens, and no response may be cached (``no-store``).

Hostile or broken clients cost bounded resources: at most ``max_clients`` connections at once (one thread each;
beyond that a one-line 503), a connection that has not sent its request within ``timeout`` seconds is closed, and a
viewer that stops reading is dropped after ``timeout`` seconds. Their disconnects, timeouts and bad requests are
counted and reported as one ``serve: …`` line on stderr at most every 10 s, never as a traceback.

The pipeline's sink call only copies the frame and wakes one thread: each frame is encoded to JPEG at most once,
off the pipeline's thread and only when someone asks, and one thread writes it to all stream viewers
(``python -m runtime.serve_bench`` measures what 20 viewers cost the pipeline).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import secrets
import selectors
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, quote, urlparse

import cv2
import numpy as np

from .errors import RuntimeInputError

__all__ = ["MIN_TOKEN_CHARS", "FrameServer", "check_token", "parse_hostport"]

#: shortest access token accepted for a bind off loopback (generated ones have 22 characters)
MIN_TOKEN_CHARS = 16

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


def check_token(token: str | None, host: str) -> None:
    """Refuse a user-given token too short to protect the video (on loopback a token is optional, but one that is
    given must be as strong as anywhere else: the same URL may be forwarded)."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise RuntimeInputError(f"--token must be at least {MIN_TOKEN_CHARS} characters (got {len(token)}): use a "
                                "long random string, or omit it to get one generated")


class _ClientLog:
    """Client trouble as one ``serve: …`` line on stderr at most every ``interval`` seconds, with counts."""

    PHRASES = {
        "left": "{n} viewer(s) left the stream",
        "disconnected": "{n} client(s) disconnected early",
        "idle": "{n} idle or incomplete connection(s) closed after {timeout:g} s",
        "stalled": "{n} viewer(s) dropped for not reading for {timeout:g} s",
        "bad": "{n} bad request(s)",
        "denied": "{n} request(s) without a valid token",
        "refused": "{n} connection(s) refused (over {max_clients} clients)",
        "failed": "{n} request(s) failed (last: {error})",
    }

    def __init__(self, timeout: float, max_clients: int, interval: float = 10.0) -> None:
        self.interval, self.timeout, self.max_clients = interval, timeout, max_clients
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last = -math.inf
        self.error = ""

    def note(self, kind: str, error: str = "") -> None:
        with self._lock:
            self._counts[kind] += 1
            self.error = error or self.error
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Print the pending counts if the last line is ``interval`` seconds old (or ``force``)."""
        with self._lock:
            now = time.monotonic()
            if not self._counts or (not force and now - self._last < self.interval):
                return
            counts, self._counts, self._last = self._counts, Counter(), now
        parts = [self.PHRASES[k].format(n=n, timeout=self.timeout, max_clients=self.max_clients, error=self.error)
                 for k, n in counts.items()]
        print("serve: " + ", ".join(parts), file=sys.stderr, flush=True)


@dataclass
class _Conn:
    """A connection being served: the time its request must have arrived by, and what went wrong (first only)."""

    deadline: float
    kind: str = ""


class _Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.0: one request). Client failures are recorded on the connection, never raised."""

    server_version, sys_version = "polypseg", ""
    disable_nagle_algorithm = True  # each stream part leaves at once
    server: _HTTPServer

    def setup(self) -> None:
        self.owner: FrameServer = self.server.owner
        self.timeout = self.owner.timeout  # every read and every send: a silent or non-reading client is let go
        self.parsed = self.streaming = False
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError):  # broken pipe, reset, aborted, timed out mid-write
            self._mark("left" if self.streaming else "disconnected")

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def _mark(self, kind: str) -> None:
        self.server.mark(self.request, kind)

    def log_message(self, *args) -> None:  # quiet: the server's one-line summary reports client trouble
        pass

    def log_error(self, format: str, *args) -> None:  # noqa: A002 - http.server API
        if format.startswith("Request timed out"):
            self._mark("stalled" if self.parsed else "idle")
        elif format.startswith("code") and args and args[0] in (400, 414, 431, 501, 505):
            self._mark("bad")

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.parsed = True
        self.server.request_read(self.request)
        return ok

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # every response, errors and the stream included
        super().end_headers()

    def _authorised(self, qs: dict) -> bool:
        token = self.owner.token
        if not token:
            return True
        given = (qs.get("token") or [""])[0]
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = given or auth[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        url = urlparse(self.path)
        qs = parse_qs(url.query)
        self.owner.requests += 1
        if not self._authorised(qs):
            self._mark("denied")
            self.send_error(403, "access token required")
            return
        if url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif url.path == "/frame.jpg":
            jpg, idx = self.owner.latest_jpeg()
            if not jpg:
                self.send_error(503, "no frame yet")
                return
            self._send(200, "image/jpeg", jpg, {"X-Frame-Index": str(idx)})
        elif url.path == "/stats":
            self._send(200, "application/json", json.dumps(self.owner.stats).encode())
        elif url.path == "/stream.mjpg":
            self._stream()
        else:
            self.send_error(404)

    def _send(self, code: int, ctype: str, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        """Send the headers, then hand the connection to the broadcaster and wait until it lets the viewer go."""
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        self.streaming = True
        viewer = self.owner.broadcaster.add(self.connection)
        while not viewer.done.wait(1.0) and not self.owner.closed:
            pass
        if viewer.kind:
            self._mark(viewer.kind)


class _Jpeg(NamedTuple):
    """An encoded frame: the JPEG, the same as a part of the multipart stream, its index and sequence number."""

    data: bytes
    part: bytes
    index: int
    seq: int


class _Viewer:
    """A ``/stream.mjpg`` connection as the broadcaster sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.last = 0  # sequence number of the last frame sent (whole or in part)
        self.pending: memoryview | None = None  # the rest of a part the socket did not take yet
        self.since = 0.0  # when the pending rest appeared
        self.kind = ""  # why it was let go (a client-log kind; empty when the server closed)
        self.done = threading.Event()


class _Broadcaster:
    """Writes each new frame to every stream viewer from one thread, with non-blocking sends.

    A thread per viewer woken for every frame costs the pipeline several times more (interpreter-lock hand-offs
    and context switches, measured with :mod:`runtime.serve_bench`). A viewer whose socket does not take a whole
    part keeps its rest and skips frames until it has caught up (then gets the newest); one that takes nothing for
    ``timeout`` seconds is dropped. The pipeline's sink call only wakes this thread (one byte on a socket pair)."""

    def __init__(self, owner: FrameServer) -> None:
        self.owner = owner
        self.viewers: list[_Viewer] = []
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ)
        self.running = True
        self.thread = threading.Thread(target=self._run, name="serve-stream", daemon=True)
        self.thread.start()

    def add(self, sock: socket.socket) -> _Viewer:
        viewer = _Viewer(sock)
        sock.setblocking(False)
        with self.lock:
            if not self.running:
                viewer.done.set()
                return viewer
            self.viewers.append(viewer)
            self.sel.register(sock, selectors.EVENT_READ, viewer)  # readable: the client closed (or sent junk)
        self.wake()
        return viewer

    def wake(self) -> None:
        """A new frame (or viewer, or the end): called by the pipeline's thread, so cheap and never blocking."""
        if self.viewers or self.owner.closed:
            try:
                self._wake_w.send(b"\0")
            except OSError:  # the pair is full: a wake-up is pending anyway
                pass

    def _run(self) -> None:
        try:
            while not self.owner.closed:
                self._step()
        except Exception as e:  # a bug (or the server closing under it): the streams end, one line, no traceback
            if not self.owner.closed:
                self.owner.last_error = f"{type(e).__name__}: {e}"[:200]
                self.owner.log.note("failed", self.owner.last_error)
        finally:
            with self.lock:
                self.running = False
                viewers, self.viewers = self.viewers, []
                self.sel.close()
            for v in viewers:
                v.done.set()
            self._wake_r.close()
            self._wake_w.close()

    def _step(self) -> None:
        events = self.sel.select(timeout=min(0.5, self.owner.timeout / 2))  # (epoll: others may register meanwhile)
        for key, mask in events:
            if key.fileobj is self._wake_r:
                self._drain(self._wake_r)
                continue
            v = key.data
            if mask & selectors.EVENT_READ and not self._drain(v.sock):
                self._drop(v, "left")
            if mask & selectors.EVENT_WRITE and v.pending is not None:
                self._write(v, v.pending, v.last)
        self._send_newest()

    @staticmethod
    def _drain(sock) -> bool:
        """Read and drop what is there; False if the peer has closed (or reset) the connection."""
        try:
            while sock.recv(65536):
                pass
            return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _send_newest(self) -> None:
        now = time.monotonic()
        viewers = list(self.viewers)
        for v in viewers:
            if v.pending is not None and now - v.since > self.owner.timeout:
                self._drop(v, "stalled")
        ready = [v for v in viewers if v.pending is None and v.last < self.owner.frame_seq]
        if not ready:
            return
        part, seq = self.owner.latest_part()  # encoded here once, never on the pipeline's thread
        for v in ready:
            if part and seq > v.last:
                self._write(v, memoryview(part), seq)

    def _write(self, v: _Viewer, data: memoryview, seq: int) -> None:
        if v.done.is_set():  # dropped meanwhile
            return
        try:
            n = v.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._drop(v, "left")
            return
        was_pending, v.last = v.pending is not None, seq
        v.pending = data[n:] if n < len(data) else None
        if v.pending is not None and not was_pending:
            v.since = time.monotonic()
        if (v.pending is not None) != was_pending:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if v.pending is not None else 0)
            with self.lock:
                self.sel.modify(v.sock, events, v)

    def _drop(self, v: _Viewer, kind: str) -> None:
        with self.lock:
            if v not in self.viewers:
                return
            self.viewers.remove(v)
            self.sel.unregister(v.sock)
        v.kind = kind
        v.done.set()


def _refusal(max_clients: int) -> bytes:
    body = f"too many viewers ({max_clients}): close another view\n".encode()
    return (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nCache-Control: no-store\r\nRetry-After: 5\r\n"
            b"Connection: close\r\n\r\n" + body)


def _read_head(sock: socket.socket, limit: int = 8192) -> None:
    """Read (and drop) a request head, so that closing after the reply does not reset it away."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            return
        data += chunk


class _HTTPServer(ThreadingHTTPServer):
    """At most ``max_clients`` connections at once, each on its own thread; the others get a one-line 503.

    Connections are tracked: one whose request has not fully arrived by its deadline is shut down (the socket
    timeout alone lets a client trickle a byte at a time). A refusal is written by a short-lived thread of its own
    (itself bounded: with as many refusals in flight, further connections are closed unanswered).
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple, owner: FrameServer) -> None:
        self.owner = owner
        self.slots = threading.BoundedSemaphore(owner.max_clients)
        self.refusals = threading.BoundedSemaphore(owner.max_clients)
        self.conns: dict[socket.socket, _Conn] = {}
        self.conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: its reverse DNS lookup can stall start-up
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: socket.socket, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.owner.log.note("refused")
            if self.refusals.acquire(blocking=False):
                threading.Thread(target=self._refuse, args=(request,), name="serve-refuse", daemon=True).start()
            else:
                self.shutdown_request(request)
            return
        with self.conns_lock:
            self.conns[request] = _Conn(time.monotonic() + self.owner.timeout)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self.conns_lock:
            conn = self.conns.pop(request, None)
        if conn is not None:
            self.slots.release()
            if conn.kind:
                self.owner.log.note(conn.kind, self.owner.last_error if conn.kind == "failed" else "")

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.settimeout(min(1.0, self.owner.timeout))
            _read_head(request)
            request.sendall(_refusal(self.owner.max_clients))
        except OSError:
            pass
        finally:
            self.shutdown_request(request)
            self.refusals.release()

    def mark(self, request: socket.socket, kind: str) -> None:
        """Record what went wrong with a connection (the first thing only; reported when it closes)."""
        with self.conns_lock:
            conn = self.conns.get(request)
            if conn is not None and not conn.kind:
                conn.kind = kind

    def request_read(self, request: socket.socket) -> None:
        with self.conns_lock:
            conn = self.conns.get(request)
            if conn is not None:
                conn.deadline = math.inf

    def service_actions(self) -> None:
        """Every poll of the serve loop: shut down connections whose request is late; print pending counts."""
        now = time.monotonic()
        with self.conns_lock:
            late = [s for s, c in self.conns.items() if c.deadline < now]
            for s in late:
                self.conns[s].deadline = math.inf
                self.conns[s].kind = self.conns[s].kind or "idle"
        for s in late:
            _shut(s)
        self.owner.log.flush()

    def handle_error(self, request, client_address) -> None:
        """Never a traceback: a client's failure is counted; anything else is one line (the error, not the stack)."""
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            self.mark(request, "disconnected")
            return
        self.owner.last_error = f"{type(e).__name__}: {e}"[:200]
        self.mark(request, "failed")

    def close_connections(self) -> None:
        with self.conns_lock:
            socks = list(self.conns)
        for s in socks:
            _shut(s)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class FrameServer:
    """Serves the latest annotated frame and statistics; use as a pipeline sink (``server(frame, info)``).

    Args:
        host, port: where to listen (``::1`` and other IPv6 addresses too; port 0 picks a free one).
        token: access token; required off loopback (at least :data:`MIN_TOKEN_CHARS` characters), generated when
            absent there.
        quality: JPEG quality of the served frames.
        timeout: seconds a client has to send its request, and a viewer to take each frame, before it is let go.
        max_clients: connections served at once (each holds a thread); more get a one-line 503.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, quality: int = 80,
                 timeout: float = 10.0, max_clients: int = 32) -> None:
        check_token(token, host)
        if not timeout > 0 or max_clients < 1:
            raise RuntimeInputError(f"FrameServer needs timeout > 0 and max_clients >= 1, got {timeout}, "
                                    f"{max_clients}")
        self.token = token or (secrets.token_urlsafe(16) if needs_token(host) else None)
        self.quality, self.timeout, self.max_clients = quality, float(timeout), int(max_clients)
        self.log = _ClientLog(self.timeout, self.max_clients)
        self.last_error = ""
        self._lock = threading.Lock()
        self._fresh = threading.Event()  # set (and replaced) by each new frame
        self._encoded: threading.Event | None = None  # while a frame is being encoded: set when it is done
        self._frame: np.ndarray | None = None
        self._idx = -1  # the pipeline's index of the latest frame (X-Frame-Index)
        self._seq = 0  # frames received: orders them whatever the indices do (a source restarting, …)
        self._jpeg = _Jpeg(b"", b"", -1, 0)
        self.stats: dict = {}
        self.requests = 0
        self.closed = False
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            self.httpd = server_class((host, port), self)
        except OSError as e:
            shown = f"[{host}]" if ":" in host else host
            raise RuntimeInputError(f"cannot listen on {shown}:{port}: {e.strerror or e}") from None
        self.host, self.port = host, self.httpd.server_address[1]
        self.broadcaster = _Broadcaster(self)
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(min(0.5, self.timeout / 2),),
                                        name="serve", daemon=True)
        self._thread.start()

    def _url(self, token: str | None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={token}" if token else "")

    @property
    def url(self) -> str:
        """The page's address, with the token: for the operator's eyes only (print it; never log or store it)."""
        return self._url(quote(self.token, safe="") if self.token else None)

    @property
    def redacted_url(self) -> str:
        """The page's address with the token replaced by ``<token>``: for reports and logs."""
        return self._url("<token>" if self.token else None)

    @property
    def clients(self) -> int:
        """Connections being served now."""
        with self.httpd.conns_lock:
            return len(self.httpd.conns)

    def __repr__(self) -> str:
        return f"FrameServer({self.redacted_url}, {self.clients}/{self.max_clients} clients)"

    def __call__(self, frame: np.ndarray, info: dict) -> None:
        """The pipeline's sink: keep a copy of the frame (encoded later, off this thread, only if someone asks) and
        wake the stream's writer."""
        copy = frame.copy()
        stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()}
        with self._lock:
            self._frame, self._idx, self.stats = copy, int(info.get("frame", self._idx + 1)), stats
            self._seq += 1
            fresh, self._fresh = self._fresh, threading.Event()
        fresh.set()
        self.broadcaster.wake()

    @property
    def frame_seq(self) -> int:
        """Frames received so far (the latest one's sequence number)."""
        return self._seq

    def latest_jpeg(self, wait_newer_than: int | None = None, timeout: float = 0.0) -> tuple[bytes, int]:
        """The latest frame as JPEG and its index (``b"", -1`` before the first); waits up to ``timeout`` seconds
        for a frame other than the one with index ``wait_newer_than``."""
        jpg = self._latest(wait_newer_than, timeout)
        return jpg.data, jpg.index

    def latest_part(self) -> tuple[bytes, int]:
        """The latest frame as one part of the ``/stream.mjpg`` multipart stream, and its sequence number."""
        jpg = self._latest(None, 0.0)
        return jpg.part, jpg.seq

    def _latest(self, wait_other_than: int | None, timeout: float) -> _Jpeg:
        """Each frame is encoded once, by the first thread asking for it; the others wait for it and share it."""
        with self._lock:
            fresh, same = self._fresh, wait_other_than is not None and self._idx == wait_other_than
        if same:
            fresh.wait(timeout)
        with self._lock:
            frame, idx, seq, cached = self._frame, self._idx, self._seq, self._jpeg
            if frame is None or cached.seq == seq:
                return cached
            encoded, mine = self._encoded, self._encoded is None
            if mine:
                encoded = self._encoded = threading.Event()
        if not mine:
            encoded.wait(1.0)
            with self._lock:
                return self._jpeg
        result = cached
        try:
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if ok:
                data = buf.tobytes()
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                result = _Jpeg(data, head + data + b"\r\n", idx, seq)
        finally:
            with self._lock:
                if result.seq > self._jpeg.seq:
                    self._jpeg = result
                self._encoded = None
                result = self._jpeg
            encoded.set()
        return result

    def close(self) -> None:
        """Stop serving: streams end, connections are shut, and the pending client counts are printed."""
        if self.closed:
            return
        self.closed = True
        self._fresh.set()  # callers waiting for a frame see the server closed
        self.broadcaster.wake()
        self.httpd.shutdown()
        self.httpd.close_connections()
        self.httpd.server_close()
        self.log.flush(force=True)


def wait_until(pred, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()

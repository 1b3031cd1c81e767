"""The web view against hostile-but-realistic clients, over real sockets: early disconnects (one rate-limited line,
no traceback), silent and trickling connections (closed after the timeout), too many viewers (a one-line 503, the
others unaffected, slots freed), short tokens, the IPv6 loopback, the token kept out of reports, no caching."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from runtime.errors import RuntimeInputError
from runtime.serve import FrameServer

TOKEN = "a-long-enough-test-token"


def _frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)  # noise: JPEGs of a few kB


class _Feeder:
    """Feeds a server frames at ~100 Hz from a thread, like the pipeline's render loop."""

    def __init__(self, srv: FrameServer) -> None:
        self.srv, self.stop = srv, threading.Event()
        self.frames = [_frame(i) for i in range(4)]
        srv(self.frames[0], {"frame": 0})
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 1
        while not self.stop.is_set():
            self.srv(self.frames[i % 4], {"frame": i, "fps": 100.0})
            i += 1
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def serve():
    made: list[tuple[FrameServer, _Feeder | None]] = []

    def make(feed: bool = True, **kw) -> FrameServer:
        srv = FrameServer("127.0.0.1", 0, **kw)
        made.append((srv, _Feeder(srv) if feed else None))
        return srv

    yield make
    for srv, feeder in made:
        if feeder:
            feeder.close()
        srv.close()


def _connect(srv: FrameServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    return s


def _get(srv: FrameServer, path: str) -> socket.socket:
    s = _connect(srv)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def _read_until(s: socket.socket, marker: bytes, limit: float = 5.0) -> bytes:
    data, end = b"", time.monotonic() + limit
    while marker not in data and time.monotonic() < end:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _read_all(s: socket.socket, limit: float = 5.0) -> bytes:
    """Until the server closes the connection (fails the test if it does not within ``limit``)."""
    s.settimeout(limit)
    data, end = b"", time.monotonic() + limit
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open for {limit} s (sent {len(data)} bytes)")


def _frames_in(s: socket.socket, n: int) -> int:
    """Read a stream until at least ``n`` more part boundaries have arrived (5 s at most); the number seen."""
    s.settimeout(5)
    seen, tail, end = 0, b"", time.monotonic() + 5
    while seen < n and time.monotonic() < end:
        chunk = tail + s.recv(65536)
        seen += chunk.count(b"--frame\r\n")
        tail = chunk[-8:]
    return seen


def _reset(s: socket.socket) -> None:
    """Close with a TCP reset (as a killed browser tab or a dropped Wi-Fi does)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _wait(pred, limit: float = 5.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_fifty_early_disconnects_make_one_or_two_lines_and_no_traceback(serve, capfd):
    srv = serve(max_clients=64)
    streams = [_get(srv, "/stream.mjpg") for _ in range(30)]
    for s in streams:
        assert _frames_in(s, 1) >= 1
    for i, s in enumerate(streams):  # mid-stream: half reset, half closed
        _reset(s) if i % 2 else s.close()
    for _ in range(10):  # reset right after connecting, before the request
        _reset(_connect(srv))
    for _ in range(10):  # reset after asking for a frame, without reading it
        s = _get(srv, "/frame.jpg")
        time.sleep(0.01)
        _reset(s)
    assert _wait(lambda: srv.clients == 0), srv.clients
    srv.close()
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err and 1 <= len(lines) <= 2, err
    assert all(line.startswith("serve: ") for line in lines), err
    counted = sum(int(n) for n in re.findall(r"(\d+) (?:viewer|client|idle)", err))
    assert 30 <= counted <= 50, err  # every stream's end was noticed; nothing counted twice


def test_silent_and_trickling_connections_are_closed_after_the_timeout(serve, capfd):
    srv = serve(timeout=0.5)
    silent = [_connect(srv) for _ in range(5)]
    partial = _connect(srv)
    partial.sendall(b"GET /frame.jpg HTTP/1.1\r\n")  # and never the blank line
    trickle = _connect(srv)
    stop = threading.Event()

    def drip():  # one header byte every 0.1 s: never silent for the socket timeout, never done
        try:
            trickle.sendall(b"GET /frame.jpg HTTP/1.1\r\n")
            while not stop.wait(0.1):
                trickle.sendall(b"X")
        except OSError:
            pass

    threading.Thread(target=drip, daemon=True).start()
    t0 = time.monotonic()
    assert _wait(lambda: srv.clients == 7, 2)
    try:
        for s in [*silent, partial, trickle]:
            assert _read_all(s, 3.0) == b""  # closed by the server, nothing sent
    finally:
        stop.set()
    took = time.monotonic() - t0
    assert 0.4 <= took <= 2.5, took
    assert _wait(lambda: srv.clients == 0, 2), srv.clients
    srv.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "idle or incomplete connection(s) closed after 0.5 s" in err, err


def test_a_hundred_silent_sockets_hold_a_bounded_number_of_threads(serve):
    srv = serve(feed=False, max_clients=8, timeout=0.5)
    srv(_frame(0), {"frame": 0})
    before = threading.active_count()
    socks = [_connect(srv) for _ in range(100)]
    time.sleep(0.3)
    held = threading.active_count() - before
    assert held <= 8 + 8, held  # the served ones and the refusals being written, not one thread per socket
    for s in socks:  # each is closed by the server within the timeout, unanswered or with the one-line 503
        reply = _read_all(s, 3.0)
        assert reply == b"" or reply.startswith(b"HTTP/1.0 503"), reply[:80]
        s.close()
    assert _wait(lambda: srv.clients == 0, 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/frame.jpg", timeout=5) as r:
        assert r.status == 200


def test_a_viewer_that_stops_reading_is_dropped_after_the_timeout(serve, capfd):
    srv = serve(timeout=0.5)
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # ~300 kB a JPEG
    reader, got, stop = _get(srv, "/stream.mjpg"), [], threading.Event()
    assert _frames_in(reader, 1) >= 1

    def read():  # a viewer that keeps reading all along
        try:
            while not stop.is_set():
                got.append(_frames_in(reader, 1))
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=read, daemon=True).start()
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never reads: the server's sends back up
    stuck.connect(("127.0.0.1", srv.port))
    stuck.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # big frames on top of the feeder's small ones
        srv(big, {"frame": 20_000 + int(time.monotonic() * 1e3)})
        time.sleep(0.02)
    assert _wait(lambda: srv.clients == 1, 3), srv.clients  # the stuck one is gone (its thread and slot freed)
    n = sum(got)
    assert _wait(lambda: sum(got) >= n + 3)  # the reading viewer was not held up
    stop.set()
    reader.close()
    stuck.close()
    assert _wait(lambda: srv.clients == 0)
    srv.close()
    err = capfd.readouterr().err
    assert "1 viewer(s) dropped for not reading for 0.5 s" in err and "Traceback" not in err, err


def test_each_frame_is_encoded_once_for_all_viewers_and_never_by_the_sink_call(serve, monkeypatch):
    import runtime.serve as serve_mod

    encoders, real = [], serve_mod.cv2.imencode

    def counting(*a, **kw):
        encoders.append(threading.current_thread())
        return real(*a, **kw)

    monkeypatch.setattr(serve_mod.cv2, "imencode", counting)
    srv = serve(feed=False)
    viewers = [_get(srv, "/stream.mjpg") for _ in range(5)]
    assert _wait(lambda: srv.clients == 5)
    for i in range(20):
        srv(_frame(i % 4), {"frame": i})
        time.sleep(0.02)
    for v in viewers:
        assert _frames_in(v, 3) >= 3
        v.close()
    assert 3 <= len(encoders) <= 20, len(encoders)  # at most once per frame, whatever the number of viewers
    assert threading.current_thread() not in encoders  # the pipeline's (here: the test's) thread never encodes


def test_max_clients_refuses_the_fourth_viewer_and_frees_slots(serve):
    srv = serve(max_clients=3)
    viewers = [_get(srv, "/stream.mjpg") for _ in range(3)]
    for v in viewers:
        assert _frames_in(v, 1) >= 1
    t0 = time.monotonic()
    fourth = _get(srv, "/stream.mjpg")
    reply = _read_all(fourth, 3.0)  # answered and closed promptly
    assert time.monotonic() - t0 < 1.5
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 503") and b"Cache-Control: no-store" in head, reply
    assert body == b"too many viewers (3): close another view\n"
    for v in viewers:  # the first three are unaffected
        assert _frames_in(v, 3) >= 3
    viewers.pop().close()
    assert _wait(lambda: srv.clients == 2)
    fifth = _get(srv, "/stream.mjpg")
    assert _read_until(fifth, b"\r\n\r\n").startswith(b"HTTP/1.0 200") and _frames_in(fifth, 2) >= 2
    for v in [*viewers, fifth]:
        v.close()


def test_idle_connections_time_out_and_free_their_slots(serve):
    srv = serve(max_clients=2, timeout=0.5)
    idle = [_connect(srv) for _ in range(2)]
    assert _wait(lambda: srv.clients == 2, 2)
    with pytest.raises(urllib.error.HTTPError, match="503"):
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/frame.jpg", timeout=5)
    assert _wait(lambda: srv.clients == 0, 3), srv.clients
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/frame.jpg", timeout=5) as r:
        assert r.status == 200 and r.read()[:2] == b"\xff\xd8"
    for s in idle:
        s.close()


def test_short_token_refused_with_one_line():
    with pytest.raises(RuntimeInputError) as e:
        FrameServer("0.0.0.0", 0, token="x")  # refused before anything is bound
    msg = str(e.value)
    assert "\n" not in msg and "--token must be at least 16 characters (got 1)" in msg and "omit it" in msg


def test_generated_token_is_long_enough():
    srv = FrameServer("127.0.0.1", 0)
    try:
        assert srv.token is None  # loopback: no token needed
    finally:
        srv.close()
    from runtime.serve import MIN_TOKEN_CHARS, check_token

    check_token("y" * MIN_TOKEN_CHARS, "192.168.1.20")  # long enough: accepted
    with pytest.raises(RuntimeInputError):
        check_token("y" * (MIN_TOKEN_CHARS - 1), "192.168.1.20")
    with pytest.raises(RuntimeInputError):  # a token given on loopback is held to the same length
        check_token("s3cret", "127.0.0.1")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_binds_and_serves_without_token():
    srv = FrameServer("::1", 0)
    try:
        srv(_frame(1), {"frame": 1})
        assert srv.token is None and srv.url == f"http://[::1]:{srv.port}/"
        with urllib.request.urlopen(f"http://[::1]:{srv.port}/frame.jpg", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
    finally:
        srv.close()


def test_redacted_url_and_repr_hide_the_token():
    srv = FrameServer("127.0.0.1", 0, token=TOKEN)
    try:
        assert TOKEN in srv.url
        assert TOKEN not in srv.redacted_url and TOKEN not in repr(srv)
        assert srv.redacted_url == f"http://127.0.0.1:{srv.port}/?token=<token>"
        assert srv.redacted_url in repr(srv)
    finally:
        srv.close()


def _headers(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers


def test_no_store_on_every_response_errors_and_stream_included(serve):
    empty = serve(feed=False, token=TOKEN)  # no frame yet: /frame.jpg is a 503
    base = f"http://127.0.0.1:{empty.port}"
    for path, code in (("/frame.jpg", 403), (f"/nowhere?token={TOKEN}", 404), (f"/frame.jpg?token={TOKEN}", 503),
                       (f"/?token={TOKEN}", 200), (f"/stats?token={TOKEN}", 200)):
        status, headers = _headers(base + path)
        assert (status, headers["Cache-Control"]) == (code, "no-store"), (path, status, dict(headers))
    srv = serve()
    s = _get(srv, "/stream.mjpg")
    head = _read_until(s, b"\r\n\r\n")
    s.close()
    assert head.startswith(b"HTTP/1.0 200") and b"Cache-Control: no-store" in head, head

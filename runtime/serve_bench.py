"""Does the web view slow the pipeline? Frames per second of the real pipeline on a real clip without and with N
MJPEG viewers connected, side by side in one run, and their ratio.

Usage::

    python -m runtime.serve_bench --onnx model.onnx            # its manifest sits beside it
    python -m runtime.serve_bench --onnx model.onnx --viewers 20 --rounds 3 --frames 600

Both configurations run the same pipeline (the demo's: fast pre/post, the outline stabiliser) with a
:class:`~runtime.serve.FrameServer` as its sink on a looped frame folder; they differ only in the viewers: N
connections each reading ``/stream.mjpg`` continuously (threads of a separate process, as browsers would be, so that
the clients' own Python work does not compete for the pipeline's interpreter lock; ``--in-process`` puts them in
this process). The rounds alternate (without, with, without, …) so that other load on the machine falls on both;
the median of each is reported. The target: the viewers cost at most 10 % of the frames per second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Sequence

from common.cli import entry

from .errors import RuntimeInputError

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cvc-clinicdb-clips" / "seq01" / "images"  # ../shared/…
TARGET = 0.90  # with viewers / without: at least this
_MARK = b"--frame\r\n"


def _read_stream(port: int, counts, i: int, stop) -> None:
    """One viewer: read ``/stream.mjpg`` until ``stop`` is set, counting the frames received in ``counts[i]``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            buf, tail = bytearray(1 << 18), b""
            while not stop.is_set():
                try:
                    n = s.recv_into(buf)
                except socket.timeout:
                    continue
                if not n:
                    return
                chunk = tail + bytes(buf[:n])
                counts[i] += chunk.count(_MARK)
                tail = chunk[-(len(_MARK) - 1):]
    except OSError:
        counts[i] = -1 - max(0, counts[i])  # negative: this viewer failed (reported)


def _viewers(port: int, n: int, counts, stop) -> None:
    """N viewer threads (the body of the viewer process, or run on threads of this one with --in-process)."""
    threads = [threading.Thread(target=_read_stream, args=(port, counts, i, stop), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class _Viewers:
    """N MJPEG readers of a server on 127.0.0.1:``port``, in a child process (default) or on threads here."""

    def __init__(self, port: int, n: int, in_process: bool) -> None:
        if in_process:
            self.counts, self.stop = [0] * n, threading.Event()
            self.runner = threading.Thread(target=_viewers, args=(port, n, self.counts, self.stop), daemon=True)
        else:
            ctx = mp.get_context("spawn")
            self.counts, self.stop = ctx.Array("q", n, lock=False), ctx.Event()
            self.runner = ctx.Process(target=_viewers, args=(port, n, self.counts, self.stop), daemon=True)
        self.runner.start()

    def frames(self) -> list[int]:
        return list(self.counts)

    def wait_connected(self, timeout: float) -> None:
        """Until every viewer has received a frame (the server holds one before the run starts)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.frames()
            if any(c < 0 for c in got):
                raise RuntimeInputError("a viewer could not read the stream (see the server's log line)")
            if all(c > 0 for c in got):
                return
            if not self.runner.is_alive():
                raise RuntimeInputError("the viewer process ended before every viewer received a frame")
            time.sleep(0.05)
        raise RuntimeInputError(f"the {len(self.counts)} viewers did not all receive a frame in {timeout:.0f} s")

    def close(self) -> None:
        self.stop.set()
        self.runner.join(10)


def _round(make_pipeline, viewers: int, in_process: bool, first_frame) -> dict:
    """One run of the pipeline with a fresh server (and ``viewers`` MJPEG readers connected before it starts)."""
    from .serve import FrameServer

    server = FrameServer("127.0.0.1", 0, max_clients=max(32, viewers + 4))
    readers = None
    try:
        server(first_frame, {"frame": 0})
        if viewers:
            readers = _Viewers(server.port, viewers, in_process)
            readers.wait_connected(60)
        before = readers.frames() if readers else []
        report = make_pipeline(server).run()
        if report.error:
            raise RuntimeInputError(f"the pipeline failed: {report.error}")
        got = [a - b for a, b in zip(readers.frames(), before)] if readers else []
    finally:
        server.close()  # first: the viewers are let go by the server, not counted as leaving
        if readers:
            readers.close()
    out = {"fps": report.fps, "frames": report.frames, "seconds": report.seconds}
    if got:
        out["viewer_fps"] = statistics.median(got) / max(1e-9, report.seconds)
        out["viewer_failed"] = sum(1 for c in got if c < 0)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Pipeline frames per second without and with MJPEG viewers (alternating rounds, medians, their ratio)."""
    p = argparse.ArgumentParser(prog="python -m runtime.serve_bench", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", required=True, help="an exported ONNX (its manifest must sit beside it)")
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="frame folder or video file (looped)")
    p.add_argument("--backend", choices=("auto", "ort", "openvino"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--viewers", type=int, default=20, help="MJPEG viewers in the second configuration (20)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each configuration, alternating (3)")
    p.add_argument("--frames", type=int, default=600, help="frames per run (600)")
    p.add_argument("--in-process", action="store_true", help="viewer threads in this process (GIL included)")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.frames < 1 or a.viewers < 1:
        raise RuntimeInputError("--rounds, --frames and --viewers must be >= 1")
    from .backends import default_backend, open_backend
    from .manifest import Manifest, manifest_path
    from .pipeline import Pipeline, create_processor
    from .stabilize import Stabilizer
    from .video import open_source

    model = Path(a.onnx)
    if not model.is_file():
        raise RuntimeInputError(f"ONNX file {str(model)!r} does not exist (export one: python -m export.cache "
                                "--model msnet_effl0 --input-size 96 96 --precision fp32)")
    manifest = Manifest.load(manifest_path(model))
    manifest.check_matches(model)
    backend_name = default_backend() if a.backend == "auto" else a.backend
    backend = open_backend(backend_name, model, threads=a.threads, log=lambda m: None)
    processor = create_processor(backend, manifest, fast=True, threads=1)
    processor.warmup()
    first = open_source(a.source).read()
    if first is None:
        raise RuntimeInputError(f"source {a.source!r} gave no frame")

    def make_pipeline(server):
        return Pipeline(open_source(a.source, loop=True), processor, [server], max_frames=a.frames,
                        stabilizer=Stabilizer())

    print(f"{manifest.model} {manifest.input_hw[0]}x{manifest.input_hw[1]} {manifest.precision} on {backend.name}, "
          f"{a.frames} frames of {a.source} per run, {a.rounds} rounds; viewers: {a.viewers} "
          f"({'threads here' if a.in_process else 'threads of a separate process'})", flush=True)
    _round(make_pipeline, 0, a.in_process, first)  # warm-up (caches, thread pools): not counted
    runs: dict[int, list[dict]] = {0: [], a.viewers: []}
    for r in range(a.rounds):
        for n in (0, a.viewers) if r % 2 == 0 else (a.viewers, 0):
            res = _round(make_pipeline, n, a.in_process, first)
            runs[n].append(res)
            extra = f", each viewer {res['viewer_fps']:.1f} frames/s" if n else ""
            print(f"  round {r + 1}, {n:2d} viewers: {res['fps']:7.1f} FPS{extra}", flush=True)
    backend.close()
    base = statistics.median(x["fps"] for x in runs[0])
    loaded = statistics.median(x["fps"] for x in runs[a.viewers])
    ratio = loaded / base if base else 0.0
    failed = sum(x.get("viewer_failed", 0) for x in runs[a.viewers])
    print(f"median: {base:.1f} FPS without viewers, {loaded:.1f} FPS with {a.viewers} viewers: ratio {ratio:.3f} "
          f"({(1 - ratio) * 100:+.1f} % slower); viewers received "
          f"{statistics.median(x['viewer_fps'] for x in runs[a.viewers]):.1f} frames/s each"
          + (f"; {failed} viewer connection(s) failed" if failed else ""))
    print(f"target (at most {(1 - TARGET) * 100:.0f} % slower): {'met' if ratio >= TARGET else 'MISSED'}")
    return 0


cli = entry(main)

if __name__ == "__main__":
    cli()

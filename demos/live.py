"""Live colonoscopy demo: every frame back with the polyp outlined, with honest latency figures.

Usage::

    python -m demos.live --source ../shared/data/cvc-clinicdb-clips/seq01/images --out seq01.mp4
    python -m demos.live --source 0 --serve 127.0.0.1:8080            # a camera, viewed in a browser
    python -m demos.live --source clip.mp4 --onnx model.onnx --backend ort --report stats.json
    python -m demos.live --source rtsp://scope.local/stream --engine msnet-fp16.engine   # GPU box

Defaults: the trained edge model (``msnet_effl0`` with the shipped ``msnet_effl0-kvasir`` checkpoint), exported to
ONNX on first use and cached in ``~/.cache/polypseg/onnx``; INT8 on the fastest CPU backend installed (OpenVINO on
x86, else ONNX Runtime), TensorRT when an engine is given on a GPU machine.

Exit status: 0 = the source was processed to its end (or --max-frames); 2 = the source failed mid-stream (the report
says why; the output written so far is intact); 1 = bad input (one line on stderr), or the video could not be written
in full (the report says how many frames the file really holds); 130 / 143 = stopped by SIGINT / SIGTERM (the video
and the report are finalised and say so).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from common.cli import entry
from common.io import check_destination
from common.paths import cache_root
from runtime.backends import default_backend, open_backend, parse_streams
from runtime.errors import BackendUnavailableError, EngineError, RuntimeInputError
from runtime.manifest import Manifest, manifest_path, write_json_atomic
from runtime.pipeline import Pipeline, VideoSink, create_processor
from runtime.video import VIDEO_SUFFIXES, VideoWriteError, open_source

DEFAULT_MODEL = "msnet_effl0"


def resolve_model(args: argparse.Namespace, backend: str) -> Path:
    """Path of the model file to run: --engine, --onnx, or an ONNX exported (and cached) from --model."""
    if args.input_size and (args.engine or args.onnx):
        raise RuntimeInputError("--input-size applies to --model exports; an ONNX or engine keeps the size it was "
                                "exported at (re-export: python -m export.onnx --input-size H W)")
    if args.engine:
        return Path(args.engine)
    if args.onnx:
        p = Path(args.onnx)
        if not p.is_file():
            raise RuntimeInputError(f"ONNX file {str(p)!r} does not exist")
        Manifest.load(p)  # refuse an ONNX without manifest now, with one line
        return p
    try:
        from export.cache import cached_export
    except ImportError as e:
        raise RuntimeInputError(
            f"--model needs the export tools ({e.name} missing): pip install 'polypseg[export]', or pass --onnx PATH"
        ) from None
    # TensorRT takes the symmetric graph; the CPU backends run the full-graph uint8 one fastest
    flavour = "qdq-s8" if backend == "trt" else "qdq-u8"

    def log(*a):
        print(*a, file=sys.stderr)

    return cached_export(cache_root() / "onnx", args.model, checkpoint=args.checkpoint, precision=args.precision,
                         int8_flavour=flavour, input_hw=args.input_size, calib_data=args.calib_data,
                         calib_count=args.calib_count, parity_gate=args.parity_gate, progress=sys.stderr.isatty(),
                         log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demos.live", description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, help="camera index, video file, frame folder or stream URL")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name (default {DEFAULT_MODEL})")
    g.add_argument("--onnx", help="an exported ONNX (its manifest must sit beside it)")
    g.add_argument("--engine", help="a TensorRT engine (GPU machines)")
    p.add_argument("--checkpoint", help="checkpoint for --model (default: the shipped <model>-kvasir)")
    p.add_argument("--backend", choices=("auto", "ort", "openvino", "trt"), default="auto")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="int8", help="for --model exports")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network input size of --model exports (default: the model's; smaller is faster, check "
                        "the accuracy with python -m export.compare --input-size H W)")
    p.add_argument("--calib-data", help="INT8 calibration frames for --model exports (default: the training data)")
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--no-parity-gate", dest="parity_gate", action="store_false",
                   help="--model: keep an export that misses its parity tolerance against PyTorch (recorded in its "
                        "manifest)")
    p.add_argument("--out", help="write the annotated video here (.mp4)")
    p.add_argument("--show", action="store_true", help="open a window (needs a display and GUI-enabled OpenCV)")
    p.add_argument("--serve", metavar="HOST:PORT", help="stream the annotated video and statistics to a web page")
    p.add_argument("--token", help="access token for --serve (required off loopback; generated when absent)")
    p.add_argument("--report", help="write the JSON statistics here")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--streams", default=1, type=parse_streams, metavar="auto|N",
                   help="frames in inference at once on the CPU backends (default 1: lowest latency; N > 1 trades "
                        "per-frame latency for throughput; auto: 2 when one inference exceeds a 25 FPS frame period)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames")
    p.add_argument("--loop", action="store_true", help="loop a file or folder (benchmarks)")
    p.add_argument("--no-fast", dest="fast", action="store_false", help="use the OpenCV/NumPy reference pre/post")
    p.add_argument("--deadline-ms", default="auto", metavar="MS|auto|off",
                   help="live sources: show every camera frame with the newest mask, never one older than this "
                        "(auto: two frame periods; off: show only inferred frames, each with its own mask)")
    p.add_argument("--fallback-onnx", metavar="PATH",
                   help="a lighter exported model inference switches to while the primary cannot keep the deadline "
                        "(it switches back when the primary can)")
    p.add_argument("--stabilizer", choices=("on", "off"), default="on",
                   help="temporal smoothing of the outline (runtime.stabilize; default on: on the CVC clips it cuts "
                        "flicker beyond motion by more than half at the same detection rate, see export.clinical)")
    p.add_argument("--quiet", action="store_true")
    return p


def _window_sink():
    import cv2

    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        print("warning: --show: no display here (DISPLAY unset); use --serve HOST:PORT instead", file=sys.stderr)
        return None

    def show(frame, info):
        cv2.imshow("polypseg", frame)
        cv2.waitKey(1)

    try:
        cv2.namedWindow("polypseg")
    except cv2.error:
        print("warning: --show: this OpenCV has no GUI support (opencv-python-headless); install opencv-python",
              file=sys.stderr)
        return None
    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = video = None
    # destinations first: a run must not end, after minutes, on a report it cannot write
    for flag, path in (("--out", args.out), ("--report", args.report)):
        if path and (why := check_destination(path, (".json",) if flag == "--report" else ())):
            raise RuntimeInputError(f"{flag}: {why}")
    if args.out and Path(args.out).suffix.lower() not in VIDEO_SUFFIXES:
        raise RuntimeInputError(f"--out must end in {', '.join(VIDEO_SUFFIXES)}, got {args.out!r}")
    try:
        backend_name = args.backend
        if backend_name == "auto":
            backend_name = "trt" if args.engine else default_backend()
        if args.engine and backend_name != "trt":
            raise RuntimeInputError("--engine runs on the TensorRT backend: drop --backend or pass --backend trt")
        source = open_source(args.source, loop=args.loop)
        model_path = resolve_model(args, backend_name)
        manifest = Manifest.load(manifest_path(model_path))
        manifest.check_matches(model_path)
        if manifest.plugins and backend_name != "trt":
            ops = ", ".join(e["name"] if isinstance(e, dict) else str(e) for e in manifest.plugins)
            raise RuntimeInputError(f"{model_path.name} is a TensorRT deploy graph with plugin nodes ({ops}); the "
                                    f"{backend_name} backend runs the reference graph: export it without --plugins")
        backend = open_backend(backend_name, model_path, threads=args.threads, streams=args.streams,
                               log=lambda m: None if args.quiet else print(m, file=sys.stderr, flush=True))
        processor = create_processor(backend, manifest, fast=args.fast, threads=1)
        processor.warmup()
        budget_ms = None
        if args.deadline_ms not in ("auto", "off"):
            try:
                budget_ms = float(args.deadline_ms)
            except ValueError:
                budget_ms = -1.0
            if not budget_ms > 0:
                raise RuntimeInputError(f"--deadline-ms must be a positive number, auto or off, got "
                                        f"{args.deadline_ms!r}")
        fallback_proc = None
        if args.fallback_onnx:
            fb_path = Path(args.fallback_onnx)
            if not fb_path.is_file():
                raise RuntimeInputError(f"--fallback-onnx {str(fb_path)!r} does not exist")
            fb_manifest = Manifest.load(manifest_path(fb_path))
            fb_manifest.check_matches(fb_path)
            fb_backend = open_backend("ort" if backend_name == "trt" else backend_name, fb_path, threads=args.threads)
            fallback_proc = create_processor(fb_backend, fb_manifest, fast=args.fast, threads=1)
            fallback_proc.warmup()
        sinks = []
        if args.out:
            video = VideoSink(args.out, source.fps)
            sinks.append(video)
        if args.serve:
            from runtime.serve import FrameServer, parse_hostport

            host, port = parse_hostport(args.serve)
            server = FrameServer(host, port, args.token)
            # a token the user chose is theirs already: never echoed; a generated one is shown once, here only
            shown = getattr(server, "redacted_url", server.url) if args.token else server.url
            print(f"serving on {shown}" + ("  (token required: keep this URL private)" if server.token else ""),
                  flush=True)
            sinks.append(server)
        if args.show:
            win = _window_sink()
            if win:
                sinks.append(win)
    except (RuntimeInputError, BackendUnavailableError, EngineError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    stabilizer = None
    if args.stabilizer == "on":
        from runtime.stabilize import Stabilizer

        stabilizer = Stabilizer()
    deadline = fallback = None
    if source.live and args.deadline_ms != "off":
        from runtime.deadline import Deadline, DeadlinePolicy

        deadline = Deadline(DeadlinePolicy(budget_ms=budget_ms), fps=source.fps, has_fallback=fallback_proc is not None)
        fallback = fallback_proc
    pipe = Pipeline(source, processor, sinks, max_frames=args.max_frames, stabilizer=stabilizer, deadline=deadline,
                    fallback=fallback)
    signal.signal(signal.SIGTERM, lambda *a: pipe.stop("SIGTERM"))
    if not args.quiet:
        print(f"running {manifest.model} ({manifest.precision}{'/' + manifest.quant_flavour if manifest.quant_flavour else ''}"
              f", {manifest.input_hw[0]}x{manifest.input_hw[1]}) on {backend.name}"
              f"{f' ({backend.streams} streams)' if backend.streams > 1 else ''} — source {source.name}"
              f"{' (live)' if source.live else ''}", flush=True)
    report = pipe.run()
    backend.close()
    failed_output = False
    if video:
        try:
            report.outputs["video"] = video.close()
        except VideoWriteError as e:  # the report says what the file really holds; the run fails
            report.error = report.error or str(e)
            failed_output = True
        report.outputs["video_frames"] = str(video.writer.held)
        if video.writer.resized:
            report.outputs["video_resized_frames"] = str(video.writer.resized)
    if server:
        report.outputs["serve"] = getattr(server, "redacted_url", server.url)  # never the token itself
        server.close()
    report.model = {"name": manifest.model, "precision": manifest.precision, "flavour": manifest.quant_flavour,
                    "input_hw": list(manifest.input_hw), "file": str(model_path), "backend": backend.name,
                    "streams": backend.streams, "fast_path": getattr(processor, "fast", True),
                    "stabilizer": pipe.stabilizer.cfg.to_dict() if pipe.stabilizer else None}
    if args.report:
        write_json_atomic(args.report, report.__dict__)
        report.outputs["report"] = args.report
    e2e = report.latency_ms.get("end_to_end", {})
    if not args.quiet or report.error:
        print(f"{report.frames} frames in {report.seconds:.1f} s: {report.fps:.1f} FPS, end-to-end p50 "
              f"{e2e.get('p50', float('nan')):.1f} ms / p99 {e2e.get('p99', float('nan')):.1f} ms, dropped "
              f"{report.dropped}; ended by {report.ended_by}" + (f": {report.error}" if report.error else ""))
        if report.deadline:
            d = report.deadline
            print(f"deadline {d['budget_ms']:.0f} ms: {d['stale_fraction']:.0%} of {d['displayed']} frames shown "
                  f"without an outline (mask too old), {d['frames_per_mask'] or 0:.1f} frames per mask, "
                  f"{len(d['events'])} level change(s), ending on the {d['level']} model")
        for k, v in report.outputs.items():
            print(f"{k}: {v}")
    if failed_output:
        return 1
    if report.ended_by in ("SIGINT", "SIGTERM"):
        return 128 + int(getattr(signal, report.ended_by))
    return 2 if report.error else 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

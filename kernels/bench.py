"""Pre- plus post-processing of one frame: the compiled hot path against the OpenCV/NumPy reference chain.

Usage::

    python -m kernels.bench [--frame ../shared/data/colonoscopy-1080p-frames/0001.png] [--input-size 256 256]
                            [--threads 1] [--rounds 50]

Both paths do the same work per frame: BGR uint8 frame → normalised NCHW float32 network input, and logits →
annotated frame (resize to the frame, sigmoid/threshold, translucent fill, outline). The logits are a real-looking
blob covering ~15 % of the frame. Rounds alternate between the two paths; medians are reported with the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2
import numpy as np

from common.cli import entry

from . import ops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n")[0])
    p.add_argument("--frame", default="../shared/data/colonoscopy-1080p-frames/0001.png")
    p.add_argument("--input-size", type=int, nargs=2, default=(256, 256))
    p.add_argument("--threads", type=int, default=1, help="threads of the compiled path")
    p.add_argument("--rounds", type=int, default=50)
    a = p.parse_args(argv)
    if not ops.HAS_EXT:
        print("error: the C++ extension is not built (pip install -e .)", file=sys.stderr)
        return 1
    from kernels.frame_reference import overlay_reference, preprocess_reference

    bgr = cv2.imread(a.frame)
    if bgr is None:
        print(f"error: cannot read {a.frame}", file=sys.stderr)
        return 1
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    h, w = a.input_size
    hl, wl = max(1, h // 4), max(1, w // 4)  # the logit map of a stride-4 head
    yy, xx = np.mgrid[0:hl, 0:wl]
    logits = (8 - 30 * (((yy - hl / 2.5) / (hl / 2.4)) ** 2 + ((xx - wl / 2.2) / (wl / 2.4)) ** 2)).astype(np.float32)
    x_out = np.empty((1, 3, h, w), np.float32)

    def fast():
        ops.preprocess(bgr, (h, w), mean, std, out=x_out, threads=a.threads)
        frame = bgr.copy()
        ops.overlay(frame, logits, 0.5, threads=a.threads)

    def reference():
        preprocess_reference(bgr, (h, w), mean, std)
        overlay_reference(bgr, logits, 0.5)

    times = {"compiled": [], "reference": []}
    for f in (fast, reference):
        f()
    for _ in range(a.rounds):
        for name, f in (("compiled", fast), ("reference", reference)):
            t = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t) * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"{bgr.shape[1]}x{bgr.shape[0]} frame → {w}x{h} input and back, {a.rounds} alternating rounds, "
          f"compiled path on {a.threads} thread(s), polyp blob {100 * float((logits > 0).mean()):.0f} % of the frame")
    for k in ("reference", "compiled"):
        print(f"  {k:<10} pre+post median {med[k]:7.2f} ms  p90 {np.percentile(times[k], 90):7.2f} ms")
    print(f"  speed-up {med['reference'] / med['compiled']:.1f}×")
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()

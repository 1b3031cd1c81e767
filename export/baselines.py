"""The naive per-frame loop a seed repository would run, as the speed baseline of ``runtime.bench``.

Per frame, sequentially: OpenCV read → resize → NumPy normalise → PyTorch eager float32 → sigmoid → resize →
overlay (NumPy blend + OpenCV contours). No threads, no compiled pre/post-processing, no graph optimisation.
"""

from __future__ import annotations

import time
from typing import Sequence

import cv2
import numpy as np


def naive_loop(model, frames: Sequence, input_hw: Sequence[int], mean, std, threads: int | None = None) -> dict:
    """Run the naive loop over ``frames`` (paths or a callable returning the next frame); returns timings."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model.eval()
    lat = []
    t_start = time.perf_counter()
    with torch.no_grad():
        for f in frames:
            t0 = time.perf_counter()
            bgr = cv2.imread(str(f)) if not isinstance(f, np.ndarray) else f.copy()
            rgb = cv2.cvtColor(cv2.resize(bgr, (input_hw[1], input_hw[0])), cv2.COLOR_BGR2RGB)
            x = (rgb.astype(np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
            logits = model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])
            prob = torch.sigmoid(logits)[0, 0].numpy()
            prob = cv2.resize(prob, (bgr.shape[1], bgr.shape[0]))
            mask = (prob > 0.5).astype(np.uint8)
            out = bgr.copy()
            out[mask > 0] = (0.6 * out[mask > 0] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
            cnts, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, cnts, -1, (0, 255, 255), 2)
            lat.append((time.perf_counter() - t0) * 1e3)
    secs = time.perf_counter() - t_start
    return {"frames": len(lat), "seconds": secs, "fps": len(lat) / secs, "latency_ms": lat}

"""Helpers shared by the fault tests: signalling a running command, and the frames a written video really holds,
decoded one by one (not the container's own count, which a half-written file can misstate)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2


def decoded_frames(path: str | Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def signal_and_wait(p: subprocess.Popen, sig: int, timeout: float = 60) -> str:
    """Send ``sig`` to a running command and wait for it; never leave it running when the signal is not honoured.
    Returns what it printed on stderr."""
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return err or ""

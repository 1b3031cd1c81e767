"""Checks on written videos shared by the tests: the frames a file really holds, decoded one by one (not the
container's own count, which a half-written file can misstate)."""

from __future__ import annotations

from pathlib import Path

import cv2


def decoded_frames(path: str | Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n

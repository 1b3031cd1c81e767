"""A deadline the live pipeline keeps: every displayed frame carries its own age and the age of the mask drawn on it,
and a mask older than the budget is never drawn on a newer scene.

With a :class:`Deadline`, a live source is shown at the camera's rate (every captured frame, not only the inferred
ones) with the newest mask. Per displayed frame:

* ``frame_age_ms`` — capture → display of the frame itself;
* ``mask_age_ms`` — display time minus the capture time of the frame the mask was computed on;
* when ``mask_age_ms`` exceeds ``budget_ms`` (default: two frame periods of the source) the outline is **not** drawn;
  a red border and ``NO FRESH MASK (… ms)`` say so on the frame.

When masks stay stale for ``sustain_s``, the pipeline degrades, in this declared order:

1. **skip frames** — always on in this mode: inference takes the newest captured frame whenever it is free, the
   display never waits for it (the share of frames with their own mask is reported);
2. **fallback model** — when one is configured (a lighter precision or model, e.g. ``--fallback-onnx``), inference
   switches to it;
3. **stale guard** — whatever the level, a stale mask is not drawn (the warning is shown instead).

It recovers by itself: after ``retry_s`` on the fallback with fresh masks it tries the primary model again; if the
primary falls behind again, the next try waits twice as long (at most ``max_retry_s``). Every change is an event in
the report (time, from, to, why) and the current level is in each frame's info (web page, stats).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .errors import RuntimeInputError

__all__ = ["Deadline", "DeadlinePolicy", "LEVELS", "draw_stale_warning"]

LEVELS = ("primary", "fallback")


@dataclass(frozen=True)
class DeadlinePolicy:
    budget_ms: float | None = None   # None: two frame periods of the source
    sustain_s: float = 2.0           # stale this long → degrade
    retry_s: float = 5.0             # fresh this long on the fallback → try the primary again
    max_retry_s: float = 60.0

    def check(self) -> DeadlinePolicy:
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise RuntimeInputError(f"--deadline-ms must be > 0, got {self.budget_ms}")
        if not (self.sustain_s > 0 and self.retry_s > 0 and self.max_retry_s >= self.retry_s):
            raise RuntimeInputError("deadline: sustain_s and retry_s must be > 0 and max_retry_s >= retry_s")
        return self


@dataclass
class _Stats:
    displayed: int = 0
    stale: int = 0
    masks: int = 0
    mask_age_ms: list[float] = field(default_factory=list)
    frame_age_ms: list[float] = field(default_factory=list)
    seconds_in: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in LEVELS})


class Deadline:
    """The freshness check and the degrade/recover state machine (no threads: the render loop drives it)."""

    def __init__(self, policy: DeadlinePolicy | None = None, fps: float = 0.0, has_fallback: bool = False) -> None:
        self.policy = (policy or DeadlinePolicy()).check()
        period = 1000.0 / fps if fps and 0 < fps < 1000 else 1000.0 / 30
        self.budget_ms = float(self.policy.budget_ms or 2 * period)
        self.has_fallback = has_fallback
        self.level = 0
        self.events: list[dict[str, Any]] = []
        self.stats = _Stats()
        self._t0 = time.perf_counter()
        self._last = self._t0
        self._stale_since: float | None = None
        self._fresh_since: float | None = None
        self._retry_s = self.policy.retry_s
        self._primary_since = self._t0

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]

    def mask_new(self) -> None:
        self.stats.masks += 1

    def frame(self, now: float, t_capture: float, t_mask: float | None) -> tuple[bool, float]:
        """Account one displayed frame: (stale?, mask age in ms); may change the level (see :meth:`_transition`)."""
        s = self.stats
        s.seconds_in[self.level_name] += now - self._last
        self._last = now
        age = math.inf if t_mask is None else (now - t_mask) * 1e3
        stale = age > self.budget_ms
        s.displayed += 1
        s.stale += stale
        if math.isfinite(age):
            s.mask_age_ms.append(age)
        s.frame_age_ms.append((now - t_capture) * 1e3)
        self._transition(now, stale, age)
        return stale, age

    def _event(self, now: float, to: int, why: str) -> None:
        self.events.append({"t_s": round(now - self._t0, 3), "from": LEVELS[self.level], "to": LEVELS[to],
                            "why": why})
        self.level = to
        self._stale_since = self._fresh_since = None

    def _transition(self, now: float, stale: bool, age: float) -> None:
        p = self.policy
        if self.level == 0:
            if not stale:
                self._stale_since = None
                if now - self._primary_since > 2 * p.max_retry_s:
                    self._retry_s = p.retry_s  # the primary has kept up for long: forget earlier failures
                return
            self._stale_since = self._stale_since or now
            if self.has_fallback and now - self._stale_since >= p.sustain_s:
                self._event(now, 1, f"masks older than {self.budget_ms:.0f} ms for {p.sustain_s:g} s "
                                    f"(last {age:.0f} ms)")
        else:
            if stale:
                self._fresh_since = None
                return
            self._fresh_since = self._fresh_since or now
            if now - self._fresh_since >= self._retry_s:
                self._event(now, 0, f"fresh masks for {self._retry_s:g} s on the fallback: trying the primary again")
                self._primary_since = now
                self._retry_s = min(self._retry_s * 2, p.max_retry_s)

    def report(self) -> dict[str, Any]:
        from .pipeline_steps import latency_stats

        s = self.stats
        return {"budget_ms": self.budget_ms, "displayed": s.displayed, "stale_frames": s.stale,
                "stale_fraction": s.stale / s.displayed if s.displayed else 0.0, "masks": s.masks,
                "frames_per_mask": s.displayed / s.masks if s.masks else None, "level": self.level_name,
                "fallback_configured": self.has_fallback, "events": self.events,
                "seconds_in": {k: round(v, 3) for k, v in s.seconds_in.items()},
                "mask_age_ms": latency_stats(s.mask_age_ms), "frame_age_ms": latency_stats(s.frame_age_ms)}


def draw_stale_warning(frame: np.ndarray, age_ms: float) -> None:
    """A red border and ``NO FRESH MASK (age)`` on ``frame`` (in place): the outline is withheld, visibly."""
    h, w = frame.shape[:2]
    t = max(2, min(h, w) // 100)
    cv2.rectangle(frame, (0, 0), (w - 1, h - 1), (0, 0, 255), 2 * t)
    text = "NO FRESH MASK" + ("" if not math.isfinite(age_ms) else f" ({age_ms:.0f} ms)")
    scale = max(0.5, w / 1400)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    cv2.rectangle(frame, (2 * t, 2 * t), (2 * t + tw + 12, 2 * t + th + 14), (0, 0, 255), -1)
    cv2.putText(frame, text, (2 * t + 6, 2 * t + th + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2,
                cv2.LINE_AA)

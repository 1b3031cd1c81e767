"""Running the CUDA kernel sources on the CPU under several launch schedules (tests only).

The emulator in ``kernels/cuda`` (``compat.h``, ``fiber_emulator.h``) executes every CUDA thread of a launch on one
OS thread. The *schedule* decides in which order: blocks and, between two barriers, the threads of a block run
forward, reverse, alternating forward/reverse from one barrier phase to the next, or in a seeded random shuffle
(new in every phase and block). A correct kernel gives bit-identical results under every schedule; a race (a
missing ``__syncthreads``, two threads writing one element) gives different results, and conflicting shared-memory
accesses between two barriers are reported as errors by the emulator's race checker.

``under_schedules(fn)`` runs ``fn`` (which launches emulated kernels and returns arrays) once per schedule of
``SCHEDULES`` and requires identical results.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import ops

__all__ = ["SCHEDULES", "padded", "schedule", "under_schedules"]

# (order, seed): both directions, the historical alternating order and seeded shuffles.
SCHEDULES: tuple[tuple[str, int], ...] = (("alternate", 0), ("forward", 0), ("reverse", 0), ("random", 1),
                                          ("random", 7))


@contextlib.contextmanager
def schedule(order: str, seed: int = 0, race_check: bool = True) -> Iterator[None]:
    """Every emulated launch inside the block runs with this schedule (the previous one is restored after)."""
    previous = ops._ext.emu_schedule(order, seed, race_check)
    try:
        yield
    finally:
        ops._ext.emu_schedule(*previous)


def _as_tuple(result: Any) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def under_schedules(fn: Callable[[], Any], schedules: Sequence[tuple[str, int]] = SCHEDULES,
                    race_check: bool = True) -> Any:
    """``fn()`` under every schedule; asserts bit-identical results (NaN equal to NaN) and returns the first."""
    first = None
    for order, seed in schedules:
        with schedule(order, seed, race_check):
            got = fn()
        if first is None:
            first = got
            continue
        for i, (a, b) in enumerate(zip(_as_tuple(first), _as_tuple(got))):
            a, b = np.asarray(a), np.asarray(b)
            if not (a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()):
                bad = np.argwhere((a != b) & ~(np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a != b) \
                    if a.shape == b.shape else "shapes differ"
                raise AssertionError(f"result {i} differs between schedule {schedules[0]} and ({order!r}, {seed}): "
                                     f"a race between threads or blocks (first differing indices {bad[:3]!r})")
    return first


def padded(a: np.ndarray, pad: int = 64) -> tuple[np.ndarray, Callable[[], None]]:
    """A C-contiguous copy of ``a`` inside a larger buffer filled with NaN (floats) or 0xA5 (integers), and a check that
    the guard zones before and after it are untouched. Out-of-bounds writes of a kernel then fail the check, and
    out-of-bounds reads of float inputs bring NaN into the result."""
    buf = np.empty(a.size + 2 * pad, a.dtype)
    buf[...] = np.nan if a.dtype.kind == "f" else 0xA5
    view = buf[pad:pad + a.size].reshape(a.shape)
    view[...] = a
    guard = np.concatenate([buf[:pad], buf[pad + a.size:]]).copy()

    def check() -> None:
        now = np.concatenate([buf[:pad], buf[pad + a.size:]])
        same = np.array_equal(now, guard, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(now, guard)
        assert same, "a kernel wrote outside its output (guard zone changed)"

    return view, check

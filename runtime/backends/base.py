"""The one backend contract: a model file in, ``infer(x [B, C, H, W]) → logits`` out, used as a context manager."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import RuntimeInputError

__all__ = ["Backend", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str for a dynamic dimension
    dtype: str


class Backend(abc.ABC):
    """Runs one exported model on NumPy arrays.

    Subclasses implement ``_open``, ``_run`` and ``input_spec``. ``infer`` validates the input once against the
    model's input spec (shape, dtype) with a one-line :class:`RuntimeInputError`, then calls ``_run``; the
    latency of the last call is in ``last_latency_ms``.
    """

    name = "base"
    precision = "fp32"
    #: concurrent inference streams this backend was opened with (see :meth:`lanes`)
    streams = 1

    def __init__(self) -> None:
        self._active = False
        self.last_latency_ms = float("nan")

    def __enter__(self) -> Backend:
        if not self._active:
            self._open()
            self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            self._close()
            self._active = False

    def open(self) -> Backend:
        return self.__enter__()

    def close(self) -> None:
        self.__exit__()

    @abc.abstractmethod
    def input_spec(self) -> TensorSpec: ...

    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        pass

    def check_input(self, x: np.ndarray) -> None:
        spec = self.input_spec()
        if not isinstance(x, np.ndarray):
            raise RuntimeInputError(f"{self.name}: input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.dtype(spec.dtype):
            raise RuntimeInputError(f"{self.name}: input dtype must be {spec.dtype}, got {x.dtype}")
        if x.ndim != len(spec.shape) or any(
            isinstance(d, int) and d != s for d, s in zip(spec.shape, x.shape)
        ):
            raise RuntimeInputError(f"{self.name}: input shape must be {spec.shape}, got {tuple(x.shape)}")

    def lanes(self) -> list[Callable[[np.ndarray], np.ndarray]]:
        """One ``run(x) → logits`` per inference stream: different lanes may run at the same time from different
        threads (each owns its request/buffers); one lane must not be called from two threads at once. Backends
        opened with one stream have one lane, :meth:`infer` itself."""
        if not self._active:
            self.open()
        return [lambda x: self.infer(x, check=False)]

    def infer(self, x: np.ndarray, *, check: bool = True) -> np.ndarray:
        """Logits for a normalised NCHW batch."""
        if not self._active:
            self.open()
        if check:
            self.check_input(x)
        t = time.perf_counter()
        y = self._run(x)
        self.last_latency_ms = (time.perf_counter() - t) * 1e3
        return y

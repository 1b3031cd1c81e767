"""The embedded executor of :mod:`runtime.batch`: N worker processes on this machine, each with its own backend
(opened once per process, ``threads`` inference threads each).

A worker process that dies (killed, out of memory, a crash in a backend) breaks the pool: the videos that were
running in it (found by their ``OUT/.partial/<name>.<pid>.running`` markers) are retried once in a fresh pool and then
recorded as failed; the videos that were only queued are resubmitted without penalty.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

from common.io import write_json_atomic

from .batch_job import PARTIAL, BatchSettings, BatchWorker, VideoTask
from .errors import RuntimeInputError

__all__ = ["LocalExecutor", "MAX_ATTEMPTS"]

#: attempts of a video whose worker process died while running it
MAX_ATTEMPTS = 2

_WORKER: BatchWorker | None = None
_INIT_ERROR = ""


def _init(model_path: str, backend: str, threads: int, fast: bool) -> None:
    global _WORKER, _INIT_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the pool
    try:
        _WORKER = BatchWorker(model_path, backend, threads, fast)
    except Exception as e:  # noqa: BLE001 - reported by the first task, as one line in the driver
        _INIT_ERROR = " ".join(str(e).split()) or type(e).__name__


def _process(task: VideoTask, out: str, settings: BatchSettings) -> dict[str, Any]:
    if _WORKER is None:
        raise RuntimeInputError(f"a worker could not open the model: {_INIT_ERROR}")
    marker = Path(out) / PARTIAL / f"{task.name}.{os.getpid()}.running"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        return _WORKER.process(task, out, settings)
    finally:
        marker.unlink(missing_ok=True)


class LocalExecutor:
    def __init__(self, model_path: Path, backend: str, workers: int, threads: int, fast: bool = True) -> None:
        self.args = (str(model_path), backend, threads, fast)
        self.workers = workers

    def run(self, tasks: list[VideoTask], out: str, settings: BatchSettings,
            on_result: Callable[[VideoTask, dict[str, Any]], None]) -> None:
        queue = list(tasks)
        attempts: dict[str, int] = {}
        while queue:
            queue = self._run_pool(queue, out, settings, on_result, attempts)

    def _run_pool(self, tasks, out, settings, on_result, attempts) -> list[VideoTask]:
        """Run ``tasks`` in one pool; returns the tasks to run again when the pool broke."""
        ex = ProcessPoolExecutor(min(self.workers, len(tasks)), mp_context=mp.get_context("spawn"),
                                 initializer=_init, initargs=self.args)
        futures = {ex.submit(_process, t, out, settings): t for t in tasks}
        retry: list[VideoTask] = []
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    t = futures[f]
                    try:
                        on_result(t, f.result())
                    except BrokenProcessPool:
                        retry.append(t)
            ex.shutdown(wait=True)
        except BaseException:
            _terminate(ex)
            raise
        if not retry:
            return []
        running = {p.name.rsplit(".", 2)[0] for p in (Path(out) / PARTIAL).glob("*.running")}
        again = []
        for t in retry:
            if t.name in running:
                attempts[t.name] = attempts.get(t.name, 0) + 1
                if attempts[t.name] >= MAX_ATTEMPTS:
                    from .batch_job import FORMAT, VERSION

                    r = {"format": FORMAT, "version": VERSION, "name": t.name, "source": t.source,
                         "input_sha256": t.input_sha256, "key": t.key, "status": "failed",
                         "error": f"the worker process died while processing it ({attempts[t.name]} attempts)"}
                    write_json_atomic(Path(out) / f"{t.name}.json", r)
                    on_result(t, r)
                    continue
            again.append(t)
        for p in (Path(out) / PARTIAL).glob("*.running"):
            p.unlink(missing_ok=True)
        return again


def _terminate(ex: ProcessPoolExecutor) -> None:
    """Stop the workers now (Ctrl-C, SIGTERM): queued videos are cancelled, running ones abandoned (their temporary
    files are removed by the job)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(timeout=5)

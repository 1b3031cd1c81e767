"""The Ray executor of :mod:`runtime.batch`: one actor per worker, each with its own backend (the model is loaded
once per actor), the same per-video code as the local processes (:class:`runtime.batch_job.BatchWorker`).

Ray does placement (``num_cpus`` = the worker's threads, ``num_gpus=1`` for TensorRT engines), restarts an actor that
dies (``max_restarts``) and retries the video it was running (``max_task_retries``); a retried video rewrites its
outputs atomically, so each result exists exactly once. Videos and the output folder are paths every node must see
(shared storage); the job copies its model into ``OUT/.model/`` so that the nodes need not see the driver's file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from common.io import sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic

from .batch_job import FORMAT, VERSION, BatchSettings, BatchWorker, VideoTask
from .errors import BackendUnavailableError, RuntimeInputError
from .manifest import manifest_path

__all__ = ["ACTOR_RESTARTS", "TASK_RETRIES", "RayExecutor", "VideoActor"]

#: restarts of a dead actor, and retries of the video it was running, before the video is recorded as failed
ACTOR_RESTARTS = 4
TASK_RETRIES = 2


class VideoActor:
    """A Ray actor around :class:`BatchWorker`: opens the job's copy of the model (in the output folder, which every
    node sees) once."""

    def __init__(self, model_path: str, backend: str, threads: int, fast: bool) -> None:
        self.worker = BatchWorker(model_path, backend, threads, fast)

    def describe(self) -> dict[str, Any]:
        return {**self.worker.describe(), "pid": os.getpid()}

    def process(self, task: VideoTask, out: str, settings: BatchSettings) -> dict[str, Any]:
        marker = Path(out) / ".partial" / f"{task.name}.{os.getpid()}.running"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        try:
            return self.worker.process(task, out, settings)
        finally:
            marker.unlink(missing_ok=True)


def connect(address: str, cpus: int | None = None):
    """``ray.init`` for ``address`` ('' = a new local cluster with ``cpus`` CPUs, 'auto' = the running one)."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("--ray needs Ray: pip install 'polypseg[ray]'") from None
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # a local cluster keeps Ray's token authentication; its notice about it is not the user's business
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=cpus or os.cpu_count(), object_store_memory=256 << 20, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
        raise RuntimeInputError(f"cannot start or reach {where}: {' '.join(str(e).split())[:300]}") from None
    return ray


class RayExecutor:
    def __init__(self, address: str, model_path: Path, backend: str, workers: int, threads: int, fast: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.address, self.model_path, self.backend = address, Path(model_path), backend
        self.workers, self.threads, self.fast, self.log = workers, threads, fast, log

    def actor_options(self) -> dict[str, Any]:
        """Resources and fault tolerance of one worker actor (a TensorRT engine takes one GPU)."""
        gpu = self.backend == "trt"
        return {"num_cpus": self.threads, "num_gpus": 1 if gpu else 0, "max_restarts": ACTOR_RESTARTS,
                "max_task_retries": TASK_RETRIES, "max_concurrency": 1}

    def _share_model(self, out: Path) -> Path:
        """The model and its manifest copied into ``OUT/.model/<sha>/`` (shared storage, like the videos and the
        results): every node opens the same bytes, and restarted actors find them again."""
        data = self.model_path.read_bytes()
        dest = out / ".model" / sha256_bytes(data)[:16] / self.model_path.name
        if not (dest.is_file() and sha256_file(dest) == sha256_bytes(data)):
            write_bytes_atomic(manifest_path(dest), manifest_path(self.model_path).read_bytes())
            write_bytes_atomic(dest, data)
        return dest

    def _check_resources(self, ray) -> None:
        res = ray.cluster_resources()
        opts = self.actor_options()
        if opts["num_gpus"] and res.get("GPU", 0) < 1:
            raise RuntimeInputError("the Ray cluster has no GPU for the TensorRT engine: add GPU nodes, or pass an "
                                    "ONNX (--onnx) for CPU workers")
        if res.get("CPU", 0) < opts["num_cpus"]:
            raise RuntimeInputError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs, fewer than one worker's "
                                    f"{opts['num_cpus']} threads: lower --threads")

    def run(self, tasks: list[VideoTask], out: str, settings: BatchSettings,
            on_result: Callable[[VideoTask, dict[str, Any]], None]) -> None:
        ray = connect(self.address, cpus=self.workers * self.threads if not self.address else None)
        from ray.exceptions import RayError

        self._check_resources(ray)
        model = self._share_model(Path(out))
        Actor = ray.remote(VideoActor).options(**self.actor_options())  # noqa: N806
        n = min(self.workers, len(tasks))
        actors = [Actor.remote(str(model), self.backend, self.threads, self.fast) for _ in range(n)]
        try:
            try:
                info = ray.get([a.describe.remote() for a in actors])
            except RayError as e:
                raise RuntimeInputError(f"a Ray worker could not open the model: {_cause(e)}") from None
            self.log(f"ray: {len(actors)} actor(s) ready (pids {', '.join(str(i['pid']) for i in info)})")
            queue = list(reversed(tasks))
            idle = list(actors)
            inflight: dict[Any, tuple[VideoTask, Any]] = {}
            while queue or inflight:
                while idle and queue:
                    a, t = idle.pop(), queue.pop()
                    inflight[a.process.remote(t, out, settings)] = (t, a)
                done, _ = ray.wait(list(inflight), num_returns=1)
                for r in done:
                    t, a = inflight.pop(r)
                    idle.append(a)
                    try:
                        result = ray.get(r)
                    except RayError as e:  # the actor died more often than Ray retries
                        result = {"format": FORMAT, "version": VERSION, "name": t.name, "source": t.source,
                                  "input_sha256": t.input_sha256, "key": t.key, "status": "failed",
                                  "error": f"the Ray worker failed: {_cause(e)}"}
                        write_json_atomic(Path(out) / f"{t.name}.json", result)
                    on_result(t, result)
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001,S110 - already gone
                    pass
            if not self.address:
                ray.shutdown()


def _cause(e: BaseException) -> str:
    text = " ".join(str(e).split())
    for line in str(e).splitlines()[::-1]:  # the last line of a remote traceback is the error itself
        if line.strip() and not line.startswith(" "):
            text = line.strip()
            break
    return text[:300]

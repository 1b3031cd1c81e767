"""ONNX Runtime backend: CPU, or CUDA when a device and the GPU build are really there."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, RuntimeInputError
from .base import Backend, TensorSpec

__all__ = ["OrtBackend"]

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtBackend(Backend):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file.
        device: ``"cpu"`` or ``"cuda"``. onnxruntime-gpu silently falls back to the CPU when CUDA cannot load, so
            the providers actually in use are checked after the session is created.
        threads: intra-op threads (default: all cores).
        streams: concurrent ``run`` calls (:meth:`lanes`); the threads are divided among them.
    """

    name = "ort"

    def __init__(self, model_path: str | os.PathLike[str], device: str = "cpu", threads: int | None = None,
                 streams: int = 1, profile: bool = False) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise RuntimeInputError(f"model file {str(self.model_path)!r} does not exist")
        if device not in ("cpu", "cuda"):
            raise RuntimeInputError(f"ort device must be 'cpu' or 'cuda', got {device!r}")
        if int(streams) < 1:
            raise RuntimeInputError(f"ort: streams must be >= 1, got {streams}")
        self.device, self.threads, self.streams = device, threads, int(streams)
        self.profile = profile
        self.name = f"ort-{device}"
        self._sess = None

    def _open(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = self.threads or ((os.cpu_count() or 1) if self.streams > 1 else 0)
        if threads:
            so.intra_op_num_threads = max(1, threads // self.streams)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if self.profile:
            import tempfile

            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="polypseg-ort-prof-"), "ort")
        providers = [_PROVIDERS[self.device]] + (["CPUExecutionProvider"] if self.device != "cpu" else [])
        try:
            self._sess = ort.InferenceSession(str(self.model_path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            first = str(e).strip().splitlines()[0][:300]
            raise RuntimeInputError(f"ONNX Runtime cannot load {str(self.model_path)!r}: {first}") from None
        if self.device == "cuda" and _PROVIDERS["cuda"] not in self._sess.get_providers():
            raise BackendUnavailableError(
                "ONNX Runtime CUDA provider did not load (no GPU, or CUDA/cuDNN libraries missing); use device='cpu'"
            )
        i = self._sess.get_inputs()[0]
        self._in = TensorSpec(i.name, tuple(i.shape), _ORT_TYPES.get(i.type, i.type))
        self._out = self._sess.get_outputs()[0].name

    def input_spec(self) -> TensorSpec:
        if self._sess is None:
            self.open()
        return self._in

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run([self._out], {self._in.name: x})[0]

    def layer_profile(self, skip_runs: int = 0) -> list[dict]:
        """Per node, averaged over the runs since the session opened (minus the first ``skip_runs``): name, type
        (the op ONNX Runtime executed, e.g. QLinearConv after Q/DQ fusion), kernel (its provider), ms. Ends the
        profiling session (needs ``profile=True``)."""
        import json
        import shutil

        if not self.profile:
            raise RuntimeInputError("ort: open the backend with profile=True to profile layers")
        path = self._sess.end_profiling()
        events = json.loads(open(path).read())
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        t0 = runs[skip_runs]["ts"] if len(runs) > skip_runs else 0
        per: dict[str, dict] = {}
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < t0:
                continue
            name = e["name"][: -len("_kernel_time")]
            d = per.setdefault(name, {"name": name, "type": e["args"].get("op_name", "?"),
                                      "kernel": e["args"].get("provider", "?"), "ms": 0.0})
            d["ms"] += e["dur"] / 1e3
        n = max(1, len(runs) - skip_runs)
        for d in per.values():
            d["ms"] /= n
        self.profile = False
        return list(per.values())

    def lanes(self):
        if not self._active:
            self.open()
        # InferenceSession.run is thread-safe and releases the GIL
        return [self._run] * self.streams if self.streams > 1 else super().lanes()

    def _close(self) -> None:
        self._sess = None


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}

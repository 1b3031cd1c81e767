"""OpenVINO backend (x86 CPUs): reads the same ONNX files; runs symmetric Q/DQ INT8 graphs with int8 kernels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, RuntimeInputError
from .base import Backend, TensorSpec

__all__ = ["OpenVinoBackend", "openvino_available"]


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _manifest_precision(model_path: Path) -> str:
    from ..manifest import Manifest

    try:
        return Manifest.load(model_path).precision
    except Exception:  # noqa: BLE001 - no or unreadable manifest: treat as float
        return "fp32"


class OpenVinoBackend(Backend):
    """Runs an ONNX file with OpenVINO on the CPU.

    Args:
        model_path: the ``.onnx`` file.
        threads: inference threads (default: all cores).
        inference_precision: precision of the layers the graph leaves in float. ``"auto"`` (default): for an INT8
            graph (manifest precision ``int8``) OpenVINO's own choice — bf16 on CPUs with native bf16 (AVX-512 BF16,
            AMX), which takes msnet from 0.44× to 0.30× of ONNX Runtime FP32 here at unchanged Kvasir accuracy
            (see export.compare) — and ``"f32"`` for FP32/FP16 graphs, so they stay exact. ``"f32"``/``"bf16"``
            force one; ``None`` leaves it to OpenVINO.
        streams: concurrent inference requests. 1 (default): OpenVINO's latency mode, one request using every
            thread. N > 1: throughput mode with N streams sharing the threads, one request per stream
            (:meth:`lanes`): more frames per second when one request does not scale over the cores, at a
            higher per-frame latency (each request gets a share of the threads).
    """

    name = "openvino"

    def __init__(
        self, model_path: str | os.PathLike[str], threads: int | None = None, inference_precision: str | None = "auto",
        streams: int = 1, perf_count: bool = False,
    ) -> None:
        super().__init__()
        if not openvino_available():
            raise BackendUnavailableError("OpenVINO is not installed: pip install openvino (x86-64 CPUs)")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise RuntimeInputError(f"model file {str(self.model_path)!r} does not exist")
        if inference_precision == "auto":
            inference_precision = None if _manifest_precision(self.model_path) == "int8" else "f32"
        if int(streams) < 1:
            raise RuntimeInputError(f"openvino: streams must be >= 1, got {streams}")
        self.threads, self.inference_precision, self.streams = threads, inference_precision, int(streams)
        self.perf_count = perf_count
        self._req = None
        self._reqs: list = []

    def _open(self) -> None:
        import openvino as ov

        core = ov.Core()
        cfg: dict[str, object] = ({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1} if self.streams == 1 else
                                  {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams})
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = self.threads
            if self.threads < (os.cpu_count() or 1) and os.environ.get("POLYPSEG_OV_PIN", "0") != "1":
                # a share of the cores (parallel batch workers, --threads): OpenVINO would pin its threads to the
                # first cores, so that two 1-thread processes share core 0 while core 1 idles
                cfg["ENABLE_CPU_PINNING"] = False
        if self.inference_precision:
            cfg["INFERENCE_PRECISION_HINT"] = self.inference_precision
        if self.perf_count:
            cfg["PERF_COUNT"] = "YES"
        try:
            compiled = core.compile_model(str(self.model_path), "CPU", cfg)
        except Exception as e:  # noqa: BLE001
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise RuntimeInputError(f"OpenVINO cannot load {str(self.model_path)!r}: {first}") from None
        self._compiled = compiled
        self._reqs = [compiled.create_infer_request() for _ in range(self.streams)]
        self._req = self._reqs[0]
        inp = compiled.inputs[0]
        shape = tuple(d.get_length() if d.is_static else "?" for d in inp.get_partial_shape())
        self._in = TensorSpec(inp.get_any_name(), shape, str(inp.get_element_type().to_dtype()))
        self._out = compiled.outputs[0]

    def input_spec(self) -> TensorSpec:
        if self._req is None:
            self.open()
        return self._in

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._run_on(self._req, x)

    def _run_on(self, req, x: np.ndarray) -> np.ndarray:
        res = req.infer({0: x}, share_inputs=True)  # releases the GIL while OpenVINO runs
        return np.asarray(res[self._out])

    def layer_profile(self) -> list[dict]:
        """Per executed layer of the last inference (needs ``perf_count=True``): name, type, kernel, ms."""
        if not self.perf_count:
            raise RuntimeInputError("openvino: open the backend with perf_count=True to profile layers")
        return [{"name": p.node_name, "type": p.node_type, "kernel": p.exec_type,
                 "ms": p.real_time.total_seconds() * 1e3} for p in self._req.profiling_info
                if p.status == p.Status.EXECUTED]

    def lanes(self):
        if not self._active:
            self.open()
        if self.streams == 1:
            return super().lanes()
        return [lambda x, r=r: self._run_on(r, x) for r in self._reqs]

    def _close(self) -> None:
        self._req = None
        self._reqs = []
        self._compiled = None

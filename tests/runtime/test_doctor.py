"""runtime.doctor and runtime.machine, run for real on this machine (no GPU, no NVIDIA driver on the development
machines; the assertions that depend on that are conditional, so the file also passes on a GPU box).

* the table says why there is no GPU, and shows the plugin library's SASS/PTX exactly as kernels.fatbin reads them
  and our three creators;
* ``--model`` with a real ONNX export: ONNX Runtime and OpenVINO can run it (exit 0); the deploy graph with plugin
  nodes needs TensorRT + a GPU (exit 2 here); an engine is checked against the machine (exit 2 without a GPU);
* usage errors are one line on stderr with exit 1; ``--json`` parses; ``--require`` turns a gap into exit 2;
* the GPU status classification for cudaErrorInsufficientDriver / cudaErrorNoDevice / missing cuda-python.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from kernels.fatbin import device_code
from kernels.plugin_library import PLUGINS, find_plugin_library
from runtime.doctor import report
from runtime.machine import MachineFacts, classify_cuda_status, machine_facts, probe_plugin_library

ROOT = Path(__file__).resolve().parents[2]
NO_DRIVER = ctypes.util.find_library("cuda") is None


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.doctor", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def facts() -> MachineFacts:
    return machine_facts()


def _export(tmp_path_factory, plugins: bool) -> Path:
    """A small msnet_effl0 export (64×64, one parity frame: a few seconds); ``plugins``: the TensorRT deploy graph."""
    from export.onnx import export_onnx

    path = tmp_path_factory.mktemp("doctor") / ("deploy.onnx" if plugins else "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx("msnet_effl0", path, precision="fp32", input_hw=(64, 64), plugins=plugins, parity_frames=1,
                    progress=False, log=lambda *a: None)
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return _export(tmp_path_factory, plugins=False)


@pytest.fixture(scope="module")
def deploy_model(tmp_path_factory) -> Path:
    return _export(tmp_path_factory, plugins=True)


def _line(out: str, label: str) -> str:
    """The value of the table row ``label``."""
    return next(line for line in out.splitlines() if line.startswith(label + " "))[len(label):].strip()


# --------------------------------------------------------------------------------------------- the table
def test_doctor_reports_this_machine(tmp_path, facts):
    out_json = tmp_path / "doctor.json"
    r = doctor("--json", str(out_json))
    assert r.returncode == 0, r.stderr
    gpu = _line(r.stdout, "GPU")
    if facts.gpu_count == 0:
        assert gpu.startswith("none: ") and facts.gpu_status in gpu
        if NO_DRIVER:
            assert "no NVIDIA driver" in gpu
    data = json.loads(out_json.read_text())
    assert data["exit_code"] == 0 and data["model"] is None and data["required"] == {}
    assert data["facts"]["gpu_count"] == facts.gpu_count
    lib = find_plugin_library()
    if lib is None:
        assert "plugin library" in r.stdout and "not found" in r.stdout
        return
    code = device_code(lib)
    assert _line(r.stdout, "  SASS") == ", ".join(code.sass)
    assert _line(r.stdout, "  PTX") == ", ".join(code.ptx)
    assert data["facts"]["plugin_library"]["sass"] == list(code.sass)
    if data["facts"]["plugin_library"]["loads"]:
        assert _line(r.stdout, "  creators") == ", ".join(PLUGINS)


def test_machine_facts_is_fast_and_torch_free():
    code = ("import sys, time; t = time.perf_counter(); from runtime.machine import machine_facts; "
            "import runtime.doctor; f = machine_facts(); print(time.perf_counter() - t); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1]) < 3.0


# --------------------------------------------------------------------------------------------- --model
def test_onnx_model_runs_on_the_cpu_backends(onnx_model, tmp_path):
    out_json = tmp_path / "m.json"
    r = doctor("--model", str(onnx_model), "--json", str(out_json))
    assert r.returncode == 0, r.stdout + r.stderr
    backends = json.loads(out_json.read_text())["model"]["backends"]
    assert backends["onnxruntime"] == "" and backends["openvino"] == ""
    assert "runs here on onnxruntime, openvino" in r.stdout


def test_deploy_graph_needs_tensorrt_and_a_gpu(deploy_model, facts):
    r = doctor("--model", str(deploy_model))
    assert "TensorRT plugin nodes" in r.stdout and "TensorRT only" in r.stdout
    if facts.gpu_count == 0 or not facts.tensorrt:
        assert r.returncode == 2, r.stdout + r.stderr
        assert "no backend on this machine runs it" in r.stdout
    if facts.gpu_count == 0:
        assert "needs a GPU" in r.stdout


def test_engine_is_checked_against_the_machine(tmp_path, facts):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really a plan")
    manifest = {"format": "polypseg-manifest", "version": 1, "model": "msnet_effl0", "input_hw": [64, 64],
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "precision": "fp16",
                "engine": {"flavour": "tensorrt", "tensorrt_version": "10.3.0", "compute_capability": "8.7",
                           "gpu": "Orin", "cuda_version": "12.6", "plugin_libs": {},
                           "engine_sha256": hashlib.sha256(engine.read_bytes()).hexdigest()}}
    (tmp_path / "m.engine.manifest.json").write_text(json.dumps(manifest))
    out_json = tmp_path / "e.json"
    r = doctor("--model", str(engine), "--json", str(out_json))
    verdict = json.loads(out_json.read_text())["model"]
    assert verdict["kind"] == "engine"
    if facts.gpu_count == 0:
        assert r.returncode == 2 and "cannot run here" in r.stdout and verdict["problems"], r.stdout + r.stderr


def test_missing_model_and_bad_manifest_are_one_line_errors(tmp_path, onnx_model):
    r = doctor("--model", str(tmp_path / "absent.onnx"))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "absent.onnx" in r.stderr
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(onnx_model.read_bytes())
    (tmp_path / "copy.manifest.json").write_text("{ not json")
    r = doctor("--model", str(copy))
    assert r.returncode == 1 and r.stderr.startswith("error: manifest ") and r.stderr.count("\n") == 1


def test_require(facts):
    r = doctor("--require", "gpu", "--require", "ort")
    assert "require ort: ok" in r.stdout
    assert ("require gpu: ok" in r.stdout) == (facts.gpu_count > 0)
    assert r.returncode == (0 if facts.gpu_count > 0 else 2)
    r = doctor("--require", "cuda")
    assert r.returncode == 2 and "invalid choice" in r.stderr  # argparse's usage error


# --------------------------------------------------------------------------------------------- machine.py units
class DynamicLibNotFoundError(RuntimeError):
    """Stands in for cuda.pathfinder's exception of the same name (matched by name)."""


@pytest.mark.parametrize("kwargs, expected", [
    ({"error": 0}, "ok"),
    ({"error": 35}, "no NVIDIA driver"),
    ({"error": 35, "driver_cuda": 12060, "runtime_cuda": 13000}, "NVIDIA driver too old: it supports CUDA 12.6, "
                                                                 "cuda-python's runtime is CUDA 13.0"),
    ({"error": 100, "driver_cuda": 13000}, "no CUDA-capable device"),
    ({"error": 999, "error_name": "cudaErrorUnknown"}, "CUDA error 999 (cudaErrorUnknown)"),
    ({"exc": ImportError("No module named 'cuda'")}, "cuda-python is not installed"),
    ({"exc": DynamicLibNotFoundError('"cuda" is an NVIDIA driver library')}, "no NVIDIA driver"),
    ({"exc": OSError("boom\nsecond line")}, "cannot query the GPU: OSError: boom"),
])
def test_classify_cuda_status(kwargs, expected):
    status = classify_cuda_status(**kwargs)
    assert status.startswith(expected) and "\n" not in status


def test_this_machine_status_is_classified(facts):
    assert (facts.gpu_status == "ok") == (facts.gpu_count > 0)
    if NO_DRIVER:
        assert facts.gpu_status.startswith(("no NVIDIA driver", "cuda-python is not installed"))


def test_gpu_providers_are_listed_but_not_usable_without_a_gpu():
    f = MachineFacts(onnxruntime="1.20", onnxruntime_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                "CPUExecutionProvider"), gpu_status="no GPU")
    assert f.onnxruntime_usable == ("CPUExecutionProvider",)
    ort = next(line for line in report(f) if line.startswith("ONNX Runtime"))
    assert "listed but cannot load without a GPU: TensorrtExecutionProvider, CUDAExecutionProvider" in ort


def test_plugin_probe_never_raises(tmp_path):
    bogus = tmp_path / "libbogus.so"
    bogus.write_text("not a library")
    t = time.perf_counter()
    lib = probe_plugin_library(bogus, tensorrt_lean=machine_facts().tensorrt_lean)
    assert time.perf_counter() - t < 3
    assert lib.path == str(bogus.resolve()) and "not an ELF file" in lib.device_code_error
    assert lib.loads is False or lib.registry == ""  # refused by the registry, or no registry to ask
    assert lib.creators == ()

"""The TensorRT side, run as far as it goes without a GPU, with real objects: the compiled CUDA hot-path library
called with real cuda-python handles, real TensorRT-RTX engines and their manifests, real plugin registries
(tensorrt_lean), and the engine/machine comparison on real manifests. Each test here stands for a defect found by
reading the never-run GPU code (issue #13, part 6) or a refusal the runtime owes a user on the target."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from runtime.backends.tensorrt import capture_graph, io_shapes, load_plugin_libraries, release_handles
from runtime.cuda import device_status
from runtime.engine_check import engine_problems
from runtime.errors import EngineError, RuntimeInputError
from runtime.gpu import find_cuda_hotpath, launch_overlay, launch_preprocess, load_cuda_hotpath
from runtime.machine import MachineFacts, PluginLibraryFacts, classify_cuda_status
from runtime.manifest import Manifest, manifest_path

ROOT = Path(__file__).resolve().parents[2]
cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")


# --------------------------------------------------------------------------------------------- hot path ABI
def _hotpath():
    p = find_cuda_hotpath()
    if p is None:
        if shutil.which("nvcc"):
            pytest.fail("nvcc is on the PATH but the CUDA hot-path library was not built by the install")
        pytest.skip("no nvcc: the CUDA hot-path library is not built")
    return load_cuda_hotpath(p)


def test_launchers_take_cuda_python_streams():
    """runtime/gpu.py passed cuda-python ``cudaStream_t`` objects to ctypes functions declared ``c_void_p``:
    ``ctypes.ArgumentError`` on the first frame. The launch helpers pass the handle's value; without a driver the
    real launcher then runs and reports CUDA's own error (35), which proves every argument got through."""
    lib = _hotpath()
    stream = cudart.cudaStream_t()
    mean = (ctypes.c_float * 3)(0.485, 0.456, 0.406)
    with pytest.raises(ctypes.ArgumentError):
        lib.polypseg_cuda_preprocess(0, 8, 8, 24, 4, 4, mean, mean, 0, 0, stream)  # the defect, reproduced
    with pytest.raises(RuntimeError, match="preprocess kernel failed .*cudaErrorInsufficientDriver"):
        launch_preprocess(lib, 0, 8, 8, 24, 4, 4, mean, mean, 0, False, stream)
    rgb = (ctypes.c_ubyte * 3)(0, 255, 0)
    with pytest.raises(RuntimeError, match="overlay kernel failed .*cudaErrorInsufficientDriver"):
        launch_overlay(lib, 0, 8, 8, 24, 0, 4, 4, 0.0, rgb, 102, rgb, 0, stream)


# --------------------------------------------------------------------------------------------- device status
def test_no_device_reason_is_specific():
    n, why = device_status()
    if n:
        pytest.skip("this machine has a CUDA device")
    assert "driver" in why or "no CUDA-capable device" in why, why
    from runtime.cuda import require_device
    from runtime.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=f"no CUDA device \\({why[:20]}"):
        require_device()
    assert "cuda-python is not installed" in classify_cuda_status(exc=ImportError("cuda"))
    assert "too old" in classify_cuda_status(35, driver_cuda=12060, runtime_cuda=13000)


# --------------------------------------------------------------------------------------------- CUDA graph capture
class RecordingCudart:
    """cuda-python's runtime with the capture calls answering success (no device here), every call recorded; the
    enums and error codes are the real ones."""

    def __init__(self):
        self.calls: list[str] = []
        self.cudaStreamCaptureMode = cudart.cudaStreamCaptureMode
        ok = cudart.cudaError_t.cudaSuccess
        for name, ret in {"cudaStreamSynchronize": (ok,), "cudaStreamBeginCapture": (ok,),
                          "cudaStreamEndCapture": (ok, cudart.cudaGraph_t()),
                          "cudaGraphInstantiate": (ok, cudart.cudaGraphExec_t()), "cudaGraphDestroy": (ok,),
                          "cudaGraphExecDestroy": (ok,), "cudaStreamDestroy": (ok,), "cudaFree": (ok,),
                          "cudaFreeHost": (ok,)}.items():
            setattr(self, name, self._rec(name, ret))

    def _rec(self, name, ret):
        def f(*args):
            self.calls.append(name)
            return ret
        return f


def test_capture_of_a_failing_enqueue_yields_no_graph():
    """execute_async_v3 returning False while capturing used to become a graph that replays wrong logits."""
    cu = RecordingCudart()
    answers = iter([True, False])
    assert capture_graph(cu, cudart.cudaStream_t(), lambda s: next(answers)) is None
    assert cu.calls == ["cudaStreamSynchronize", "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphDestroy"]


def test_capture_ends_even_when_enqueue_raises():
    """A raise between begin and end capture used to leave the stream capturing (every later call on it fails)."""
    cu = RecordingCudart()

    def enqueue(s, n=[0]):
        n[0] += 1
        if n[0] == 2:
            raise RuntimeError("boom")
        return True

    with pytest.raises(RuntimeError, match="boom"):
        capture_graph(cu, cudart.cudaStream_t(), enqueue)
    assert "cudaStreamEndCapture" in cu.calls and "cudaGraphInstantiate" not in cu.calls


def test_failing_warm_up_is_an_error_and_success_gives_a_graph():
    cu = RecordingCudart()
    with pytest.raises(EngineError, match="warm-up"):
        capture_graph(cu, cudart.cudaStream_t(), lambda s: False)
    got = capture_graph(RecordingCudart(), cudart.cudaStream_t(), lambda s: True)
    assert got is not None and isinstance(got[1], cudart.cudaGraphExec_t)


def test_capture_with_the_real_runtime_and_no_device_reports_cuda_error():
    with pytest.raises(RuntimeError, match="cudaErrorInsufficientDriver|cudaErrorNoDevice"):
        capture_graph(cudart, cudart.cudaStream_t(), lambda s: True)


def test_every_handle_is_released():
    """Stream, graph and graph exec were never destroyed."""
    cu = RecordingCudart()
    release_handles(cu, graph_exec=cudart.cudaGraphExec_t(), graph=cudart.cudaGraph_t(), bufs=[(1, None, 2)],
                    stream=cudart.cudaStream_t())
    assert cu.calls == ["cudaGraphExecDestroy", "cudaGraphDestroy", "cudaFree", "cudaFreeHost", "cudaStreamDestroy"]


# --------------------------------------------------------------------------------------------- plugin loading
def test_plugin_loading_is_all_or_nothing():
    """A list whose second library fails leaves nothing registered: the registry is process-wide, and a library whose
    creators are already registered is refused (TensorRT answers None)."""
    trt = pytest.importorskip("tensorrt_lean")
    from kernels.plugin_library import find_plugin_library

    lib = find_plugin_library()
    if lib is None:
        pytest.skip("plugin library not built")
    reg = trt.get_plugin_registry()
    with pytest.raises(EngineError, match="could not load the plugin library"):
        load_plugin_libraries(reg, [lib, find_cuda_hotpath() or Path(sys.executable)])
    handles = load_plugin_libraries(reg, [lib])  # the first one was unregistered again
    with pytest.raises(EngineError, match="already registered in this process"):
        load_plugin_libraries(reg, [lib])
    for h in handles:
        reg.deregister_library(h)


def test_a_library_tensorrt_cannot_load_is_an_error_naming_it():
    """load_library answers None for a library it cannot load; that None used to be ignored until deserialising
    failed with "plugin not found"."""
    trt = pytest.importorskip("tensorrt_lean")
    lib = find_cuda_hotpath() or Path(sys.executable)
    with pytest.raises(EngineError, match=f"could not load the plugin library {lib}"):
        load_plugin_libraries(trt.get_plugin_registry(), [lib])


# --------------------------------------------------------------------------------------------- real RTX engines
def _run(*args, cache):
    import os

    env = {**os.environ, "POLYPSEG_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "export.trt", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def rtx_engines(tmp_path_factory):
    """`python -m export.trt --model msnet_effl0 --fp16 --target rtx` on this CPU-only machine: built, then a cache
    hit, then a miss for another checkpoint (the issue's definition of done, at the model's native 256×256)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    import torch

    tmp = tmp_path_factory.mktemp("rtx")
    cache = tmp / "cache"
    out = tmp / "effl0.engine"
    first = _run("--model", "msnet_effl0", "--fp16", "--target", "rtx", "--out", str(out), cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    m1 = Manifest.load(manifest_path(out))
    again = _run("--model", "msnet_effl0", "--fp16", "--target", "rtx", "--out", str(out), "--no-progress",
                 cache=cache)
    assert again.returncode == 0, again.stderr[-3000:]
    from training.checkpoint import WEIGHTS_DIR

    ck = torch.load(WEIGHTS_DIR / "msnet_effl0-kvasir.pt", map_location="cpu", weights_only=True)
    sd = ck["state_dict"]
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim == 4)
    sd[key] = sd[key] * 1.01
    other = tmp / "tweaked.pt"
    torch.save(ck, other)
    out2 = tmp / "tweaked.engine"
    third = _run("--model", "msnet_effl0", "--fp16", "--target", "rtx", "--checkpoint", str(other), "--out",
                 str(out2), "--no-progress", cache=cache)
    assert third.returncode == 0, third.stderr[-3000:]
    dyn = tmp / "dyn.engine"
    fourth = _run("--model", "msnet_effl0", "--fp32", "--target", "rtx", "--dynamic-batch", "--input-size", "64",
                  "64", "--out", str(dyn), "--no-progress", cache=cache)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    return {"first": first, "again": again, "third": third, "m1": m1, "out": out, "out2": out2, "dyn": dyn}


def test_rtx_engine_is_built_cached_and_recorded(rtx_engines):
    first, again, third = rtx_engines["first"], rtx_engines["again"], rtx_engines["third"]
    out = rtx_engines["out"]
    assert "Building engine" in first.stdout, "build phases are reported (progress monitor)"
    assert "engine cache hit" not in first.stdout + first.stderr
    assert "engine cache hit" in again.stdout + again.stderr
    assert "engine cache hit" not in third.stdout + third.stderr, "another checkpoint must not reuse the engine"
    m = Manifest.load(manifest_path(out))
    e = m.engine
    import tensorrt_rtx

    assert (e["flavour"], e["tensorrt_version"], e["compute_capability"]) == ("tensorrt-rtx", tensorrt_rtx.__version__,
                                                                              "any")
    assert e["cuda_version"] == "13" and e["onnx_sha256"] == m.onnx_sha256 and len(e["weights_sha256"]) == 64
    assert e["engine_sha256"] and e["engine_bytes"] == out.stat().st_size
    assert e["io"] == [{"name": "input", "mode": "input", "shape": [1, 3, 256, 256], "dtype": "float32"},
                       {"name": "logits", "mode": "output", "shape": [1, 1, 256, 256], "dtype": "float32"}]
    assert "--target rtx" in e["rebuild"]
    m.check_matches(out)
    m2 = Manifest.load(manifest_path(rtx_engines["out2"]))
    assert m2.engine["cache_key"] != e["cache_key"] and m2.engine["weights_sha256"] != e["weights_sha256"]


def test_dynamic_batch_engine_runs_the_batch_it_is_given(rtx_engines):
    """`--dynamic-batch` engines were opened at the profile's maximum (8): one frame was refused, or copied into 8
    slots (8× the work). The I/O TensorRT-RTX recorded for the engine, at batch 1, 8 and 9."""
    io = Manifest.load(manifest_path(rtx_engines["dyn"])).engine["io"]
    assert io[0]["shape"][0] == -1 and io[0]["profile"]["max"][0] == 8
    assert io_shapes(io, 1) == {"input": (1, 3, 64, 64), "logits": (1, 1, 64, 64)}
    assert io_shapes(io, 8)["logits"] == (8, 1, 64, 64)
    with pytest.raises(EngineError, match="batches of 1…8, not 9"):
        io_shapes(io, 9)
    with pytest.raises(RuntimeInputError):
        io_shapes(io, 0)


def test_rtx_refuses_plugins_in_one_line(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    r = _run("--model", "msnet_effl0", "--fp16", "--target", "rtx", "--plugins", "--out", str(tmp_path / "x.engine"),
             cache=tmp_path / "c")
    assert r.returncode == 1 and "TensorRT-RTX cannot host custom plugins" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not list(tmp_path.glob("*.engine"))


# --------------------------------------------------------------------------------------------- engine vs machine
def _gpu(**kw) -> MachineFacts:
    base = dict(gpu_count=1, gpu_status="ok", gpu_name="RTX 4090", compute_capability="8.9",
                driver_cuda_version="13.0", tensorrt_rtx=None, tensorrt=None)
    return MachineFacts(**{**base, **kw})


def test_rtx_engine_against_machines(rtx_engines):
    import tensorrt_rtx

    m = rtx_engines["m1"]
    v = tensorrt_rtx.__version__
    assert engine_problems(m, _gpu(tensorrt_rtx=v)) == []
    cases = {
        "TensorRT only (Jetson)": (_gpu(tensorrt="10.3.0.30", compute_capability="8.7"),
                                   f"is a TensorRT-RTX {v} engine but TensorRT-RTX is not installed (this machine has "
                                   "TensorRT 10.3.0.30"),
        "other RTX build": (_gpu(tensorrt_rtx="1.7.0.60"), f"built with TensorRT-RTX {v}, this machine has "
                                                           "TensorRT-RTX 1.7.0.60"),
        "Orin": (_gpu(tensorrt_rtx=v, compute_capability="8.7", gpu_name="Orin"), "this GPU (Orin) is 8.7"),
        "Turing": (_gpu(tensorrt_rtx=v, compute_capability="7.5", gpu_name="T4"),
                   "this GPU (T4) is 7.5: rebuild it for this GPU: python -m export.trt --model msnet_effl0 --fp16 "
                   "--target rtx --compute-capability 7.5"),
        "old driver": (_gpu(tensorrt_rtx=v, driver_cuda_version="12.6"), "this driver supports CUDA up to 12.6"),
        "no GPU": (MachineFacts(gpu_count=0, gpu_status="no NVIDIA driver on this machine", tensorrt_rtx=v),
                   "needs an NVIDIA GPU, and no NVIDIA driver on this machine"),
    }
    for label, (facts, want) in cases.items():
        problems = engine_problems(m, facts, name="x.engine")
        assert problems and want in problems[0], (label, problems)
        assert all("\n" not in p for p in problems)


def test_tensorrt_deploy_engine_against_machines(tmp_path, rtx_engines):
    """A TensorRT (not RTX) engine of a deploy graph, as `export.trt --plugins` records it on a Jetson Orin: its
    provenance is made by the real code from a real deploy-graph manifest and the real plugin library."""
    from export.trt import BuildTarget, engine_provenance
    from kernels.plugin_library import find_plugin_library

    lib = find_plugin_library()
    if lib is None:
        pytest.skip("plugin library not built")
    m = Manifest.load(rtx_engines["out"].with_suffix(".onnx"))
    m.plugins = [{"name": "MultiScaleSubtraction", "version": "1", "namespace": "polypseg", "count": 4}]
    target = BuildTarget("tensorrt", "tensorrt", None, "10.3.0.30", "8.7", "Orin", "12")
    m.engine = {**engine_provenance(m, target, [lib]), "rebuild": "python -m export.trt --model msnet_effl0 --fp16 "
                "--plugins --out x.engine"}
    assert m.engine["plugin_libs"][lib.name]["sass"][:3] == ["sm_75", "sm_80", "sm_86"]
    orin = MachineFacts(gpu_count=1, gpu_status="ok", gpu_name="Orin", compute_capability="8.7",
                        driver_cuda_version="12.6", tensorrt="10.3.0.30",
                        plugin_library=PluginLibraryFacts(path=str(lib), searched=()))
    assert engine_problems(m, orin) == []
    other_lib = tmp_path / lib.name
    other_lib.write_bytes(lib.read_bytes() + b"\0")
    cases = {
        "TensorRT 10.3.1": (replace(orin, tensorrt="10.3.1.10"), "this machine has TensorRT 10.3.1.10 (plans need the "
                                                                 "exact build"),
        "same minor, other build": (replace(orin, tensorrt="10.3.0.26"), "this machine has TensorRT 10.3.0.26"),
        "Ampere GPU": (replace(orin, compute_capability="8.6", gpu_name="A10"), "compute capability 8.7 (Orin), this "
                                                                              "GPU is 8.6 (A10)"),
        "plugin missing": (replace(orin, plugin_library=None), "needs the plugin library libpolypseg_trt_plugins.so and "
                                                               "it was not found (plugin not found)"),
        "RTX machine": (replace(orin, tensorrt=None, tensorrt_rtx="1.7.1.116"), "is a TensorRT 10.3.0.30 engine but "
                                                                                "TensorRT is not installed"),
    }
    for label, (facts, want) in cases.items():
        problems = engine_problems(m, facts, name="x.engine")
        assert problems and want in problems[0], (label, problems)
    hashed = engine_problems(m, orin, plugin_libs=[other_lib])
    assert len(hashed) == 1 and "was built with another libpolypseg_trt_plugins.so" in hashed[0]
    # a library without SASS for the GPU: an Orin engine whose plugin library lacks sm_87 (and PTX ≤ 8.7)
    m.engine["compute_capability"] = "7.2"
    xavier = replace(orin, compute_capability="7.2", gpu_name="Xavier")
    nok = engine_problems(m, xavier)
    assert len(nok) == 1 and "has no kernel image for this GPU (sm 7.2)" in nok[0], nok


def test_manifest_without_provenance_names_the_command(rtx_engines):
    m = Manifest.load(rtx_engines["out"].with_suffix(".onnx"))
    p = engine_problems(m, _gpu(tensorrt="11.4.0.106"))
    assert len(p) == 1 and "no engine provenance" in p[0] and "python -m export.trt --model msnet_effl0" in p[0]


# --------------------------------------------------------------------------------------------- device code
def test_both_native_libraries_carry_turing_to_hopper_and_ptx():
    """Architectures used to stop at 87/89/90 + PTX: T4, A10, A100 and RTX 30xx got no kernel image."""
    from kernels.fatbin import device_code
    from kernels.plugin_library import find_plugin_library

    libs = [p for p in (find_cuda_hotpath(), find_plugin_library()) if p is not None]
    if not libs:
        pytest.skip("no CUDA library built")
    for p in libs:
        code = device_code(p)
        assert {"sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"} <= set(code.sass), (p.name, code.sass)
        assert "compute_90" in code.ptx
        for cc in ("7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "12.0"):
            assert code.runs_on(cc)[0], (p.name, cc)


def test_manifest_json_is_plain(rtx_engines):
    d = json.loads(manifest_path(rtx_engines["out"]).read_text())
    assert d["engine"]["flavour"] == "tensorrt-rtx" and isinstance(d["engine"]["plugin_libs"], dict)

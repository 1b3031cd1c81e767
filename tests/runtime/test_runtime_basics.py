"""Runtime: torch-free imports, manifest handling, the backend contract over every backend that runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.backends import available_backends, create_backend, default_backend
from runtime.errors import RuntimeInputError
from runtime.manifest import Manifest, manifest_path

ROOT = Path(__file__).resolve().parents[2]


def test_runtime_never_imports_torch(tmp_path):
    """Importing every runtime module, probing the machine and running a model loads neither torch nor the training
    or export packages (the import-linter contract in pyproject.toml checks the same statically)."""
    code = (
        "import sys, importlib, pkgutil, numpy as np\n"
        "import runtime\n"
        "mods = [m.name for m in pkgutil.walk_packages(runtime.__path__, 'runtime.')]\n"
        "assert len(mods) > 15, mods\n"
        "for m in mods: importlib.import_module(m)  # every runtime module, not a chosen few\n"
        "from runtime.machine import machine_facts; machine_facts()\n"
        "from runtime.backends import create_backend, available_backends\n"
        "from runtime.backends import onnxruntime, openvino, tensorrt\n"
        "available_backends()\n"
        f"b = create_backend('ort', {str(tmp_path / 'tiny.onnx')!r}).open()\n"
        "b.infer(np.zeros((1, 3, 4, 4), np.float32))\n"
        "bad = [m for m in ('torch', 'training', 'export') if m in sys.modules]\n"
        "assert not bad, f'runtime imported {bad}'\n"
        "print('ok')\n"
    )
    _tiny_onnx(tmp_path / "tiny.onnx")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def _tiny_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["logits"], axes=[1], keepdims=1)], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))


@pytest.mark.parametrize("backend", [b for b in ("ort", "openvino") if b in available_backends()])
def test_backend_contract(backend, tmp_path):
    _tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    with create_backend(backend, tmp_path / "tiny.onnx", threads=1) as b:
        spec = b.input_spec()
        assert spec.shape == (1, 3, 4, 4) and spec.dtype == "float32"
        y = b.infer(x)
        assert np.allclose(y, x.mean(1, keepdims=True), atol=1e-6)
        assert b.last_latency_ms > 0
        with pytest.raises(RuntimeInputError, match=r"input shape must be \(1, 3, 4, 4\), got \(1, 3, 5, 4\)"):
            b.infer(np.zeros((1, 3, 5, 4), np.float32))
        with pytest.raises(RuntimeInputError, match="dtype must be float32, got float64"):
            b.infer(np.zeros((1, 3, 4, 4)))
    b.close()  # double exit is safe


def test_bad_model_files(tmp_path):
    with pytest.raises(RuntimeInputError, match="does not exist"):
        create_backend("ort", tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    with pytest.raises(RuntimeInputError, match="ONNX Runtime cannot load"):
        create_backend("ort", junk).open()
    with pytest.raises(RuntimeInputError, match="unknown backend 'tf'; valid: auto, ort"):
        create_backend("tf", junk)


def test_default_backend_is_fastest_cpu_one():
    avail = available_backends()
    assert "ort" in avail
    if "openvino" in avail:
        import platform

        if platform.machine() in ("x86_64", "AMD64"):
            assert default_backend() == "openvino"


def test_manifest_round_trip_and_errors(tmp_path):
    m = Manifest(model="msnet_effl0", input_hw=[288, 288], mean=[0.5] * 3, std=[0.25] * 3)
    m.save(manifest_path(tmp_path / "a.onnx"))
    assert Manifest.load(tmp_path / "a.onnx") == m
    with pytest.raises(RuntimeInputError, match="no manifest .* export it with"):
        Manifest.load(tmp_path / "b.onnx")
    (tmp_path / "c.manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RuntimeInputError, match="not a polypseg manifest"):
        Manifest.load(tmp_path / "c.onnx")
    assert manifest_path("x/y.engine").name == "y.engine.manifest.json"


def test_trt_backend_refuses_without_device(tmp_path):
    from runtime.cuda import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("GPU present")
    from runtime.errors import BackendUnavailableError

    eng = tmp_path / "m.engine"
    eng.write_bytes(b"\0" * 16)
    Manifest(model="msnet", input_hw=[352, 352], mean=[0] * 3, std=[1] * 3).save(manifest_path(eng))
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        create_backend("trt", eng).open()

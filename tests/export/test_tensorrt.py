"""TensorRT engines on a GPU machine: build (FP32/FP16/INT8 from the graph), run through the runtime's backend,
parity with PyTorch on real Kvasir-SEG frames. Skipped on machines without a CUDA device and TensorRT."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.trt, pytest.mark.slow]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_parity_with_pytorch(precision, kvasir, tmp_path):
    from export.compare import compare

    rows = compare("msnet_effl0", str(kvasir), split=str(kvasir / "splits" / "val.txt"), precisions=[precision],
                   limit=16, work_dir=tmp_path, calib_count=64)
    trt_rows = [r for r in rows if r["backend"] == "trt"]
    assert trt_rows, "the TensorRT row ran"
    r = trt_rows[0]
    assert r["nonfinite"] == 0
    assert r["dice_vs_torch"] > {"fp32": 0.999, "fp16": 0.99, "int8": 0.95}[precision]


def test_engine_build_cache_and_manifest(tmp_path):
    import subprocess
    import sys

    from runtime.manifest import Manifest, manifest_path

    out = tmp_path / "m.engine"
    args = [sys.executable, "-m", "export.trt", "--model", "msnet_effl0", "--fp16", "--out", str(out), "--no-progress"]
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    m = Manifest.load(manifest_path(out))
    assert m.engine["tensorrt_version"] and m.engine["compute_capability"] and m.engine["engine_sha256"]
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "engine cache hit" in again.stdout + again.stderr


def _engine(tmp_path, *extra):
    import subprocess
    import sys

    out = tmp_path / "m.engine"
    args = [sys.executable, "-m", "export.trt", "--model", "msnet_effl0", "--out", str(out), "--no-progress", *extra]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_gpu_hot_path_matches_the_cpu_hot_path(tmp_path, data_dir):
    """CUDA preprocess + engine + CUDA overlay (all on the device) against the CPU processor on real frames."""
    import cv2
    import numpy as np

    from runtime.backends import create_backend
    from runtime.gpu import GpuFrameProcessor
    from runtime.manifest import Manifest, manifest_path
    from runtime.pipeline import FrameProcessor

    eng = _engine(tmp_path, "--fp32")
    man = Manifest.load(manifest_path(eng))
    frames = sorted((data_dir / "cvc-clinicdb-clips" / "seq01" / "images").iterdir())[:4]
    with create_backend("trt", eng) as b:
        gpu, cpu = GpuFrameProcessor(b, man), FrameProcessor(b, man)
        for f in frames:
            bgr = cv2.imread(str(f))
            a, c = bgr.copy(), bgr.copy()
            fg_gpu = gpu.render(a, gpu.infer(gpu.preprocess(a)))
            fg_cpu = cpu.render(c, cpu.infer(cpu.preprocess(c)))
            assert abs(fg_gpu - fg_cpu) <= 0.01 * max(fg_cpu, 100)
            assert (np.abs(a.astype(int) - c.astype(int)) <= 2).mean() > 0.995
        gpu.close()


def test_plugin_engine_matches_the_reference_graph(tmp_path, kvasir):
    """`export.trt --plugins`: the deploy graph's plugin nodes run our IPluginV3 kernels; logits match ONNX Runtime on
    the reference graph."""
    import numpy as np

    from export.onnx import collect_frames, export_onnx
    from kernels.plugin_library import find_plugin_library
    from runtime.backends import create_backend
    from runtime.manifest import Manifest, manifest_path

    if find_plugin_library() is None:
        pytest.fail("TensorRT is installed but the plugin library was not built (set TENSORRT_INCLUDE_DIR for the install)")
    eng = _engine(tmp_path, "--fp16", "--plugins")
    man = Manifest.load(manifest_path(eng))
    assert man.plugins and man.engine["plugin_libs"]
    ref = tmp_path / "ref.onnx"
    export_onnx("msnet_effl0", ref, precision="fp16", progress=False, log=lambda *a: None)
    frames, _ = collect_frames(str(kvasir), str(kvasir / "splits" / "val.txt"), 8, man.input_hw, man.mean, man.std)
    with create_backend("trt", eng) as t, create_backend("ort", ref) as o:
        for x in frames:
            a, b = t.infer(x), o.infer(x)
            assert ((a > 0) == (b > 0)).mean() > 0.99

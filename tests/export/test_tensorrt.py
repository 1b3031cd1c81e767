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

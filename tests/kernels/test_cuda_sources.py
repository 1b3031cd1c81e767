"""CUDA sources: compiled by nvcc for the targets (warnings as errors, resource report kept), and the very same
kernel source executed on the CPU by the grid emulator (kernels/cuda/compat.h) against the reference chain."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from kernels import ops
from kernels.frame_reference import overlay_reference, preprocess_reference

ROOT = Path(__file__).resolve().parents[2]
CU_FILES = sorted((ROOT / "kernels").rglob("*.cu"))
ARCHS = ["-gencode", "arch=compute_87,code=sm_87", "-gencode", "arch=compute_89,code=sm_89",
         "-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_90,code=compute_90"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ONE_LEVEL = 1.0 / 255 / min(STD)


@pytest.mark.parametrize("cu", CU_FILES, ids=[p.name for p in CU_FILES])
def test_nvcc_compiles_for_orin_ada_hopper_and_ptx(cu, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    cmd = [nvcc, "-c", str(cu), "-o", str(tmp_path / "k.o"), "-std=c++17", "-O3", "--Werror", "all-warnings",
           "-Xcompiler", "-Wall,-Wextra,-Werror", *ARCHS, "-Xptxas", "-v"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    report = ROOT / "build" / "cuda-resources" / f"{cu.stem}.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(r.stderr)
    assert "spill stores" in r.stderr and "0 bytes spill stores" in r.stderr
    for arch in ("sm_87", "sm_89", "sm_90"):
        assert f"for '{arch}'" in r.stderr


needs_ext = pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")


@pytest.fixture(scope="module")
def frames(data_dir):
    return {"cvc": cv2.imread(str(data_dir / "cvc-clinicdb-clips" / "seq08" / "images" / "0160.png")),
            "1080p": cv2.imread(str(data_dir / "colonoscopy-1080p-frames" / "0005.png"))}


@needs_ext
@pytest.mark.parametrize("hw", [(288, 288), (37, 53), (1, 1), (8, 300)])
@pytest.mark.parametrize("src", ["cvc", "1080p"])
def test_cuda_preprocess_kernel_on_cpu(frames, src, hw):
    bgr = frames[src]
    out = np.full((1, 3, *hw), np.nan, np.float32)
    ops._ext.emu_preprocess(bgr, out, MEAN, STD)
    ref = preprocess_reference(bgr, hw, MEAN, STD)
    assert np.isfinite(out).all(), "every output element written (grid covers non-multiple sizes)"
    assert np.abs(out - ref).max() <= ONE_LEVEL + 1e-5
    fast = ops.preprocess(bgr, hw, MEAN, STD)
    assert np.abs(out - fast).max() < 1e-3, "GPU and CPU fast paths agree"
    out16 = np.zeros((1, 3, *hw), np.float16)
    ops._ext.emu_preprocess(bgr, out16, MEAN, STD)
    assert np.abs(out16.astype(np.float32) - out).max() <= 2e-3 * max(1.0, np.abs(out).max())


@needs_ext
@pytest.mark.parametrize("lhw", [(72, 72), (9, 5), (1, 1)])
@pytest.mark.parametrize("src", ["cvc", "1080p"])
def test_cuda_overlay_kernel_on_cpu(frames, src, lhw):
    bgr = frames[src]
    rng = np.random.default_rng(sum(lhw))
    logits = rng.standard_normal(lhw).astype(np.float32) * 6
    if min(lhw) > 4:
        logits = cv2.GaussianBlur(logits, (0, 0), 2) * 4
    got = bgr.copy()
    n = ops._ext.emu_overlay(got, logits, 0.0, (0, 255, 0), 102, (0, 255, 255))
    ref, mask = overlay_reference(bgr, logits, 0.5, (0, 255, 0), 102 / 256, (0, 255, 255))
    assert abs(int(n) - int(mask.sum())) <= 4
    assert (got != ref).any(-1).sum() <= 40, "same pixels annotated as the reference"

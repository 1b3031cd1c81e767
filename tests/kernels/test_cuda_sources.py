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
from kernels.emulation import SCHEDULES, padded, under_schedules
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


def _emu_preprocess(bgr, hw, dtype, mean=MEAN, std=STD):
    """The preprocess kernel through its GPU launcher (polypseg_cuda_preprocess) on the CPU, under every schedule,
    with guard zones around the source frame and the output."""
    src = padded(np.ascontiguousarray(bgr))[0]

    def run():
        out, check = padded(np.full((1, 3, *hw), np.nan, dtype))
        ops._ext.emu_preprocess(src, out, mean, std)
        check()
        return out.copy()

    return under_schedules(run)


def _emu_overlay(bgr, logits, thr, fill=(0, 255, 0), alpha256=102, outline=(0, 255, 255)):
    """The overlay kernel through its GPU launcher (polypseg_cuda_overlay) on the CPU, under every schedule. The
    frame is a view into a larger guard frame (a row stride wider than its rows, as a crop has); pixels outside the
    view must stay untouched."""
    lg = padded(np.ascontiguousarray(logits, np.float32))[0]
    H, W = bgr.shape[:2]

    def run():
        parent = np.full((H + 2, W + 5, 3), 0xA5, np.uint8)
        view = parent[1:H + 1, 2:W + 2]
        view[...] = bgr
        n = ops._ext.emu_overlay(view, lg, thr, fill, alpha256, outline)
        guard = parent.copy()
        guard[1:H + 1, 2:W + 2] = 0xA5
        assert (guard == 0xA5).all(), "the kernel wrote outside the frame"
        return view.copy(), np.array(n)

    # full HD frames (2 M threads) under two schedules only, to keep the suite fast; everything else under all
    got, n = under_schedules(run, SCHEDULES[1:4:2] if bgr.shape[0] * bgr.shape[1] > 500_000 else SCHEDULES)
    return got, int(n)


@needs_ext
@pytest.mark.parametrize("hw", [(288, 288), (37, 53), (1, 1), (8, 300)])
@pytest.mark.parametrize("src", ["cvc", "1080p"])
def test_cuda_preprocess_kernel_on_cpu(frames, src, hw):
    bgr = frames[src]
    out = _emu_preprocess(bgr, hw, np.float32)
    ref = preprocess_reference(bgr, hw, MEAN, STD)
    assert np.isfinite(out).all(), "every output element written (grid covers non-multiple sizes)"
    assert np.abs(out - ref).max() <= ONE_LEVEL + 1e-5
    fast = ops.preprocess(bgr, hw, MEAN, STD)
    # same arithmetic up to float rounding of the tap weights: far below one level (RGB order, mean and std per plane)
    assert np.abs(out - fast).max() < 1e-4, "GPU and CPU fast paths agree"
    out16 = _emu_preprocess(bgr, hw, np.float16)
    assert np.array_equal(out16, out.astype(np.float16)), "float16 output = the float32 result rounded to nearest even"


@needs_ext
@pytest.mark.parametrize("hw", [(19, 33), (101, 150)], ids=["down", "up"])
def test_cuda_preprocess_channel_order_and_normalisation_per_plane(hw):
    """A frame with different constant B, G, R values and means/stds that differ per channel: each output plane is
    exactly (v/255 − mean[c]) / std[c] of its own channel (an R/B swap of the pixels, the means or the stds shows);
    down- and upscaled (an output larger than the frame: the grid follows the output, not the frame)."""
    bgr = np.empty((45, 70, 3), np.uint8)
    bgr[...] = (30, 140, 250)  # B, G, R
    mean, std = (0.6, 0.3, 0.1), (0.2, 0.25, 0.5)
    out = _emu_preprocess(bgr, hw, np.float32, mean, std)
    want = [(250 / 255 - mean[0]) / std[0], (140 / 255 - mean[1]) / std[1], (30 / 255 - mean[2]) / std[2]]
    assert np.allclose(out[0], np.array(want)[:, None, None], atol=1e-5)
    assert np.allclose(ops.preprocess(bgr, hw, mean, std)[0], np.array(want)[:, None, None], atol=1e-5)


@needs_ext
@pytest.mark.parametrize("lhw", [(72, 72), (9, 5), (1, 1)])
@pytest.mark.parametrize("src", ["cvc", "1080p"])
def test_cuda_overlay_kernel_on_cpu(frames, src, lhw):
    bgr = frames[src]
    rng = np.random.default_rng(sum(lhw))
    logits = rng.standard_normal(lhw).astype(np.float32) * 6
    if min(lhw) > 4:
        logits = cv2.GaussianBlur(logits, (0, 0), 2) * 4
    got, n = _emu_overlay(bgr, logits, 0.0)
    ref, mask = overlay_reference(bgr, logits, 0.5, (0, 255, 0), 102 / 256, (0, 255, 255))
    assert abs(int(n) - int(mask.sum())) <= 4
    assert (got != ref).any(-1).sum() <= 40, "same pixels annotated as the reference"


def _dyadic_logits(h, w, seed):
    """Logits on a grid of 1/4 with many zeros, a block of foreground and background: with frame sizes 1, 2 or 4 times
    the logit size the bilinear weights are multiples of 1/8, so every resized logit is exact in float32 (the kernels,
    OpenCV and the reference agree bit for bit) and many frame pixels sit exactly at the threshold logit 0."""
    rng = np.random.default_rng(seed)
    lg = rng.integers(-3, 4, (h, w)).astype(np.float32) * np.float32(0.25)
    lg[h // 4:h // 4 + max(1, h // 2), w // 4:w // 4 + max(1, w // 2)] = 0.75
    lg[:, : max(1, w // 6)] = -0.5
    return lg


EXACT = [((13, 23), 4, "cvc"), ((3, 5), 4, "cvc"), ((9, 16), 2, "1080p"), ((20, 33), 1, "cvc"), ((1, 1), 4, "cvc"),
         ((40, 7), 2, "1080p")]


@needs_ext
@pytest.mark.parametrize("lhw,scale,src", EXACT, ids=[f"{h}x{w}-x{s}-{src}" for (h, w), s, src in EXACT])
def test_overlay_exact_with_pixels_at_the_threshold(frames, lhw, scale, src):
    """GPU kernel (through its launcher) and C++ path equal the reference bit for bit, including the pixels whose
    logit is exactly the threshold (probability exactly 0.5: background), on frames whose sizes leave partial
    blocks, given as views with a row stride wider than their rows."""
    h, w = lhw
    logits = _dyadic_logits(h, w, h * 100 + w)
    H, W = h * scale, w * scale
    frame = frames[src][7:7 + H, 11:11 + W]  # a view: row stride of the full frame
    fill, outline, a256 = (10, 128, 250), (255, 40, 0), 102
    ref, ref_mask = overlay_reference(np.ascontiguousarray(frame), logits, 0.5, fill, a256 / 256, outline)
    resized = cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR)
    if h * w >= 100:
        assert (resized == 0).sum() > 0, "the test needs pixels exactly at the threshold"
    got, n = _emu_overlay(frame, logits, 0.0, fill, a256, outline)
    assert n == int(ref_mask.sum()) and np.array_equal(got, ref), "GPU kernel == reference"
    cpu = frame.copy()
    mask = np.zeros((H, W), np.uint8)
    n_cpu = ops.overlay(cpu, logits, threshold=0.5, fill=fill, alpha=a256 / 256, outline=outline, mask=mask, threads=2)
    assert np.array_equal(mask, ref_mask) and n_cpu == n and np.array_equal(cpu, ref), "C++ path == reference"


@needs_ext
@pytest.mark.parametrize("p", [0.5, 0.7, 0.3, 0.9, 0.999])
def test_logits_exactly_at_the_threshold_are_background(frames, p):
    """Foreground where probability > threshold (runtime.manifest), i.e. logit > ops.logit_threshold(p) as float32:
    a logit equal to it is background, the next float above it foreground — in the C++ path and the GPU kernel."""
    thr = np.float32(ops.logit_threshold(p))
    above = np.nextafter(thr, np.float32(np.inf))
    H, W = 37, 45  # logits at the frame size: no interpolation, every pixel sees its logit exactly
    logits = np.full((H, W), thr, np.float32)
    logits[10:25, 12:30] = above
    logits[30:, 40:] = np.nextafter(thr, np.float32(-np.inf))
    want = (logits > thr).astype(np.uint8)
    frame = frames["cvc"][:H, :W]
    cpu, mask = frame.copy(), np.zeros((H, W), np.uint8)
    n_cpu = ops.overlay(cpu, logits, threshold=p, mask=mask, threads=1)
    assert np.array_equal(mask, want) and n_cpu == 15 * 18
    got, n = _emu_overlay(frame, logits, float(thr))
    assert n == 15 * 18 and np.array_equal(got, cpu)

"""The GPU hot path (CUDA pre/post kernels around a TensorRT engine): the compiled library, its C ABI, and the
guards. Running it needs a CUDA device (marked `gpu`, skipped here); the kernels' source itself is executed on the
CPU against the reference in tests/kernels/test_cuda_sources.py."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from runtime.errors import BackendUnavailableError
from runtime.gpu import CUDA_HOTPATH_LIB, GpuFrameProcessor, find_cuda_hotpath, load_cuda_hotpath
from runtime.manifest import Manifest
from runtime.pipeline import FrameProcessor, create_processor

MAN = Manifest(model="msnet_effl0", input_hw=[64, 64], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def _lib_or_skip():
    p = find_cuda_hotpath()
    if p is None:
        if shutil.which("nvcc"):
            pytest.fail(f"nvcc is on the PATH but {CUDA_HOTPATH_LIB} was not built by the install")
        pytest.skip("no nvcc: the CUDA hot-path library is not built")
    return p


def test_library_exports_the_c_launchers_and_needs_no_gpu_to_load():
    p = _lib_or_skip()
    lib = load_cuda_hotpath(p)
    assert isinstance(lib.polypseg_cuda_preprocess, ctypes._CFuncPtr)
    assert lib.polypseg_cuda_overlay.restype is ctypes.c_int
    if shutil.which("nm"):
        syms = subprocess.run(["nm", "-D", "--defined-only", str(p)], capture_output=True, text=True).stdout
        assert "polypseg_cuda_preprocess" in syms and "polypseg_cuda_overlay" in syms
    if shutil.which("ldd"):
        deps = subprocess.run(["ldd", str(p)], capture_output=True, text=True).stdout
        assert "libcudart" not in deps, "cudart is linked statically (JetPack/driver-only machines)"


def test_device_binaries_read_from_the_library_itself():
    """cuobjdump is absent on our machines (and many Jetsons): the architectures are read from the ELF's fatbin."""
    from kernels.fatbin import device_code

    code = device_code(_lib_or_skip())
    assert {"sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"} <= set(code.sass) and "compute_90" in code.ptx


def test_gpu_processor_refuses_without_a_device():
    class FakeTrt:
        name = "trt"

    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        GpuFrameProcessor(FakeTrt(), MAN)


def test_cpu_backends_get_the_cpu_processor():
    class FakeBackend:
        name = "openvino"

        def input_spec(self):
            from runtime.backends.base import TensorSpec

            return TensorSpec("input", (1, 3, 64, 64), "float32")

    assert type(create_processor(FakeBackend(), MAN)) is FrameProcessor

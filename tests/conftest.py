"""Shared fixtures: the real data beside the checkout, device-dependent skips, deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("POLYPSEG_DATA", ROOT.parent / "shared" / "data")).resolve()


def cuda_device_count() -> int:
    """Number of CUDA devices via cuda-python; 0 when the package, the driver or a device is missing."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed / no driver library
        return 0
    try:
        err, n = cudart.cudaGetDeviceCount()
    except Exception:  # noqa: BLE001
        return 0
    return int(n) if int(err) == 0 else 0


def pytest_collection_modifyitems(config, items):
    has_gpu = cuda_device_count() > 0
    has_trt = False
    if has_gpu:
        try:
            import tensorrt  # noqa: F401

            has_trt = True
        except Exception:  # noqa: BLE001
            has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="TensorRT or CUDA device missing"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA} (set POLYPSEG_DATA)")
    return DATA


@pytest.fixture(scope="session")
def kvasir(data_dir: Path) -> Path:
    p = data_dir / "kvasir-seg"
    if not (p / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found at {p}")
    return p


@pytest.fixture(scope="session")
def clip(data_dir: Path) -> Path:
    """A real CVC-ClinicDB video sequence (frames, with masks beside them)."""
    p = data_dir / "cvc-clinicdb-clips" / "seq01" / "images"
    if not p.is_dir():
        pytest.skip(f"CVC-ClinicDB clip not found at {p}")
    return p


@pytest.fixture(scope="session")
def reference_keys_dir() -> Path:
    p = DATA.parent / "reference" / "official_state_dict_keys"
    if not p.is_dir():
        pytest.skip(f"official key lists not found at {p}")
    return p


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass

"""Fixtures of the runtime tests: a small real export (the clip fixture is in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory):
    """A small msnet_effl0 export (shipped weights when present) for pipeline tests."""
    from export.onnx import export_onnx

    path = tmp_path_factory.mktemp("m") / "effl0.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx("msnet_effl0", path, input_hw=(96, 96), progress=False, log=lambda *a: None)
    return path

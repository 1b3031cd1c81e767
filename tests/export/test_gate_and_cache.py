"""The parity gate (export stops when a precision misses its tolerance against PyTorch, nothing is written; or is
kept with --no-parity-gate and the failure recorded) and the one export cache (key from every setting, verified
on use, a damaged entry re-exported)."""

from __future__ import annotations

import numpy as np
import pytest

from export.cache import cache_key, cached_export, export_settings
from export.errors import ExportError
from export.onnx import export_onnx
from runtime.comparator import TOLERANCES, compare, tolerance_for
from runtime.manifest import Manifest, manifest_path


def test_comparator_metrics_and_failures():
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((1, 1, 32, 32)).astype(np.float32) * 4 for _ in range(3)]
    same = compare(ref, ref, gt=[(r[0, 0] > 0).astype(np.uint8) for r in ref])
    assert same.max_abs_diff == 0 and same.dice_vs_torch == 1.0 and same.dice_vs_gt == pytest.approx(1.0)
    assert same.failures(TOLERANCES["fp32"]) == []
    flipped = [-r for r in ref]
    bad = compare(ref, flipped)
    assert bad.dice_vs_torch < 0.1 and any("mask Dice" in f for f in bad.failures(TOLERANCES["int8"]))
    nan = [r.copy() for r in ref]
    nan[1][0, 0, 0, 0] = np.nan
    assert "1 NaN/Inf logits" in compare(ref, nan).failures(TOLERANCES["fp16"])
    tiny = [np.full((1, 1, 8, 8), -5, np.float32)]
    assert compare(tiny, tiny).dice_vs_torch is None, "a Dice over almost no pixels is not judged"
    assert tolerance_for("fp16", {"min_dice": 0.5}).min_dice == 0.5
    with pytest.raises(ValueError, match="same non-zero number of frames"):
        compare(ref, ref[:2])


def test_export_fails_outside_its_tolerance_and_writes_nothing(tmp_path, kvasir):
    out = tmp_path / "x.onnx"
    kw = dict(precision="fp16", input_hw=(64, 64), calib_data=str(kvasir), calib_split=str(kvasir / "splits" /
              "val.txt"), progress=False, log=lambda *a: None)
    with pytest.raises(ExportError, match="misses its parity tolerance .*--no-parity-gate"):
        export_onnx("msnet_effl0", out, parity_tolerance={"max_rel_diff": 1e-9}, **kw)
    assert not out.exists() and not manifest_path(out).exists() and not list(tmp_path.iterdir())
    with pytest.warns(UserWarning, match="kept because of --no-parity-gate"):
        m = export_onnx("msnet_effl0", out, parity_tolerance={"max_rel_diff": 1e-9}, parity_gate=False, **kw)
    gate = Manifest.load(out).parity["gate"]
    assert gate["enforced"] is False and gate["passed"] is False and "of the logit scale" in gate["failures"][0]
    assert m.parity["tolerance"]["max_rel_diff"] == 1e-9


def test_cache_key_changes_with_every_setting_that_changes_the_bytes(tmp_path, kvasir):
    base = dict(precision="int8", input_hw=(64, 64), calib_data=str(kvasir), calib_count=8)
    k0 = cache_key(export_settings("msnet_effl0", **base))
    assert k0 == cache_key(export_settings("msnet_effl0", **{**base, "calib_data": str(kvasir) + "/"}))
    variants = [dict(input_hw=(96, 96)), dict(precision="fp16"), dict(int8_flavour="qdq-u8"), dict(calib_count=16),
                dict(calib_method="minmax"), dict(calib_split=str(kvasir / "splits" / "val.txt")),
                dict(exclude_nodes=["/a"]), dict(plugins=True), dict(dynamic_batch=True)]
    keys = {cache_key(export_settings("msnet_effl0", **{**base, **v})) for v in variants}
    assert len(keys) == len(variants) and k0 not in keys
    other = tmp_path / "w.pt"
    from training.checkpoint import WEIGHTS_DIR

    other.write_bytes((WEIGHTS_DIR / "msnet_effl0-kvasir.pt").read_bytes())
    assert cache_key(export_settings("msnet_effl0", checkpoint=str(other), **base)) == k0, "same weights, same key"
    other.write_bytes(other.read_bytes() + b"\0")
    with pytest.raises(ExportError):
        export_settings("msnet_effl0", checkpoint=str(tmp_path / "missing.pt"), **base)


def test_cached_export_is_verified_and_heals(tmp_path, kvasir):
    logs: list[str] = []
    kw = dict(precision="fp32", input_hw=(64, 64), calib_data=str(kvasir), log=lambda *a: logs.append(" ".join(a)))
    p = cached_export(tmp_path, "msnet_effl0", **kw)
    assert p.is_file() and any("first use" in m for m in logs)
    mtime = p.stat().st_mtime_ns
    assert cached_export(tmp_path, "msnet_effl0", **kw) == p and p.stat().st_mtime_ns == mtime, "a hit re-exports nothing"
    p.write_bytes(p.read_bytes()[:1000])  # truncated, as by a full disk or a killed copy
    logs.clear()
    assert cached_export(tmp_path, "msnet_effl0", **kw) == p
    assert any("damaged or incomplete" in m for m in logs)
    Manifest.load(p).check_matches(p)


def test_a_cached_graph_that_failed_the_gate_is_not_served_to_a_gated_caller(tmp_path, kvasir):
    kw = dict(precision="fp16", input_hw=(64, 64), calib_data=str(kvasir), log=lambda *a: None)
    with pytest.warns(UserWarning):
        cached_export(tmp_path, "msnet_effl0", parity_gate=False, parity_tolerance={"max_rel_diff": 1e-9}, **kw)
    with pytest.raises(ExportError, match="misses its parity tolerance"):
        cached_export(tmp_path, "msnet_effl0", **kw)

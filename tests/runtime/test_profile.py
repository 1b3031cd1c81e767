"""runtime.profile: MAC counting checked against a hand count, per-layer profiles on both CPU backends of a real
export, the command's table/JSON and its one-line errors."""

from __future__ import annotations

import json

import pytest

from runtime.profile import _dense_conv_model, conv_macs, main, profile_model


@pytest.mark.parametrize("int8", [False, True])
def test_conv_macs_match_a_hand_count(tmp_path, int8):
    p = tmp_path / "d.onnx"
    per = _dense_conv_model(p, int8, c=8, hw=12, n=3)
    assert per == 8 * 8 * 9 * 12 * 12
    macs = conv_macs(p)
    assert sorted(macs) == ["conv0", "conv1", "conv2"] and set(macs.values()) == {per}


def test_conv_macs_of_a_real_export(onnx_model):
    macs = conv_macs(onnx_model)
    assert len(macs) > 30 and all(v > 0 for v in macs.values())
    # the stem: 3→32 channels, 3×3, stride 2 on 96×96 → 48×48 output
    assert min(macs.values()) <= 3 * 32 * 9 * 48 * 48 <= max(macs.values())


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_profile_lists_the_layers_that_ran(onnx_model, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    prof = profile_model(onnx_model, backend, threads=1, rounds=3, warmup=1)
    layers = prof["layers"]
    assert prof["latency_ms"]["p50"] > 0 and len(layers) > 20
    assert all(r["ms"] >= 0 and r["type"] and r["name"] for r in layers)
    assert any("Conv" in r["type"] or r["type"] == "Convolution" for r in layers)
    assert layers == sorted(layers, key=lambda d: -d["ms"])
    # per-layer times account for most of the measured latency
    assert 0.3 * prof["latency_ms"]["p50"] < sum(r["ms"] for r in layers) < 1.5 * prof["latency_ms"]["p50"]


def test_command_prints_table_and_writes_json(onnx_model, tmp_path, capsys):
    out = tmp_path / "prof.json"
    assert main([str(onnx_model), "--backend", "ort", "--threads", "1", "--rounds", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "op type" in text and "convolutions:" in text and "reference:" in text
    data = json.loads(out.read_text())
    s = data["summary"]
    assert s["conv_gmac"] == pytest.approx(sum(conv_macs(onnx_model).values()) / 1e9)
    assert s["conv_gmac_per_s"] > 0 and s["reference_gmac_per_s"] > 0


def test_bad_inputs_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"x")
    assert main([str(eng)]) == 1
    assert "trtexec" in capsys.readouterr().err


def test_int8_reference_runs_every_convolution_in_int8_on_onnx_runtime(tmp_path):
    """The best-case reference must not include a float convolution (an unquantised last output made ONNX Runtime
    run the last one as FusedConv, 3× slower, skewing the reference rate)."""
    from runtime.profile import _dense_conv_model, profile_model

    _dense_conv_model(tmp_path / "d.onnx", True, c=64, hw=28)
    types = [r["type"] for r in profile_model(tmp_path / "d.onnx", "ort", 1, rounds=2)["layers"]]
    assert types.count("QLinearConv") == 4 and not any(t in ("Conv", "FusedConv") for t in types), types

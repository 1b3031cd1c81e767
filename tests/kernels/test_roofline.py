"""kernels.roofline: byte/FLOP counts on hand-computed cases, instance enumeration from real forward passes."""

from __future__ import annotations

import json

import pytest

from kernels.roofline import DEVICES, Instance, count, instances, main, predict_us


def test_counts_of_small_instances_by_hand():
    mss = Instance("MultiScaleSubtraction", "t", "u", {"N": 1, "C": 2, "h": 1, "w": 1, "H": 2, "W": 2, "scales": 0})
    c = count(mss, 4)
    assert c.fused_bytes == 4 * (2 + 2 * 8)  # read A (2) and B (8), write D (8)
    assert c.unfused_bytes == 4 * ((2 + 8) + 3 * 8 + 2 * 8)  # Resize, Sub, Abs
    pam = Instance("PositionAttention", "t", "p", {"B": 1, "C": 8, "D": 1, "N": 4})
    p = count(pam, 2)
    assert p.fused_bytes == 2 * (2 * 4 + 3 * 32)  # Q, K [1,1,4]; V, X, out [1,8,4]
    assert p.flops == 2 * 16 * (1 + 8) + 5 * 16
    f, u = predict_us(p, "H100 SXM")
    assert f > 0 and u > 0


def test_msnet_has_ten_units_and_fusing_always_saves_bytes():
    units = instances("msnet_effl0")
    assert [u.block for u in units][:2] == ["x5_x4", "x4_x3"] and len(units) == 10
    for u in units:
        c = count(u, 4)
        assert c.fused_bytes < c.unfused_bytes
        assert u.shape["C"] == 64 and u.shape["H"] >= u.shape["h"]


@pytest.mark.slow
def test_guided_attention_instances_match_its_modules(tmp_path):
    import training

    model = training.create_model("msga")
    n_pam = sum(type(m).__name__ == "PositionAttention" for m in model.modules())
    found = instances("msga")
    assert sum(i.op == "PositionAttention" for i in found) == n_pam > 0
    assert all(i.shape["N"] == 64 * 64 for i in found if i.op == "PositionAttention")  # 256² input, stride 4
    out = tmp_path / "r.json"
    assert main(["--model", "msnet_effl0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {f"{d} fused_us" for d in DEVICES} <= set(rows[0])

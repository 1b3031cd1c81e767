"""Losses on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import boundary_weight, deep_supervision_loss, dice_loss, structure_loss


def test_structure_loss_uniform_case():
    # logits 0 → p = 0.5, BCE = ln 2 everywhere; empty mask → weight 1 everywhere.
    # wIoU = 1 − (0 + 1)/(Σ0.5 − 0 + 1) = 1 − 1/9 on a 4×4 image.
    logits, mask = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    expected = math.log(2) + (1 - 1 / 9)
    for weighted in (True, False):
        assert structure_loss(logits, mask, weighted_bce=weighted).item() == pytest.approx(expected, rel=1e-6)


def test_structure_loss_perfect_prediction_is_zero():
    mask = torch.ones(1, 1, 8, 8)
    assert structure_loss(torch.full_like(mask, 30.0), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_boundary_weight_hand_value():
    mask = torch.zeros(1, 1, 31, 31)
    mask[..., 15, 15] = 1
    w = boundary_weight(mask)
    # at the centre: avgpool over the 31×31 window sees one pixel: |1/961 − 1| · 5 + 1
    assert w[0, 0, 15, 15].item() == pytest.approx(1 + 5 * (1 - 1 / 961), rel=1e-6)
    assert w[0, 0, 0, 0].item() == pytest.approx(1 + 5 / 961, rel=1e-6)


def test_weighted_bce_differs_from_official_mean_bce():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16)
    mask = (torch.rand(2, 1, 16, 16) > 0.7).float()
    paper = structure_loss(logits, mask, weighted_bce=True)
    code = structure_loss(logits, mask, weighted_bce=False)
    # code-as-run = mean BCE over the whole batch + per-image wIoU (models.md trap 3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, mask)
    w = boundary_weight(mask)
    p = torch.sigmoid(logits)
    inter, union = (p * mask * w).sum((2, 3)), ((p + mask) * w).sum((2, 3))
    wiou = (1 - (inter + 1) / (union - inter + 1)).mean()
    assert code.item() == pytest.approx((bce + wiou).item(), rel=1e-6)
    assert abs(paper.item() - code.item()) > 1e-4


def test_dice_loss_hand_value():
    # p = 0.5 everywhere, mask all ones on 4×4: 1 − (2·8 + 1)/(8 + 16 + 1) = 1 − 17/25
    assert dice_loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)).item() == pytest.approx(0.32, rel=1e-6)


def test_deep_supervision_weights_and_resizing():
    mask = torch.zeros(1, 1, 8, 8)
    main, aux = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)
    single = structure_loss(main, mask)
    assert deep_supervision_loss(main, mask).item() == pytest.approx(single.item())
    assert deep_supervision_loss([main, aux], mask, [1.0, 0.5]).item() == pytest.approx(1.5 * single.item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 outputs but 1 weights"):
        deep_supervision_loss([main, aux], mask, [1.0])

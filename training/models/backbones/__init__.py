"""Encoders shared by the model families (one Res2Net, one EfficientNet-Lite, one MaxViT, one ResNeXt)."""

from .efficientnet_lite import EfficientNetLite, efficientnet_lite0, load_lite0_imagenet
from .maxvit import MaxViTRmlpSmall, load_maxvit_imagenet
from .res2net import Res2Net, res2net50_v1b_26w_4s
from .resnext import ResNeXt101

__all__ = [
    "EfficientNetLite",
    "MaxViTRmlpSmall",
    "Res2Net",
    "ResNeXt101",
    "efficientnet_lite0",
    "load_lite0_imagenet",
    "load_maxvit_imagenet",
    "res2net50_v1b_26w_4s",
]

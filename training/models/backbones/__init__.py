"""Encoders shared by the model families (one Res2Net, one EfficientNet-Lite)."""

from .efficientnet_lite import EfficientNetLite, efficientnet_lite0, load_lite0_imagenet
from .res2net import Res2Net, res2net50_v1b_26w_4s

__all__ = ["EfficientNetLite", "Res2Net", "efficientnet_lite0", "load_lite0_imagenet", "res2net50_v1b_26w_4s"]

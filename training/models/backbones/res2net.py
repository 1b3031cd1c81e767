"""Res2Net-50 v1b, 26w × 4s: the one backbone shared by MSNet, M2SNet and GMSRF-Net.

Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021 (arXiv 1904.01169). Written from the
specification in ``shared/docs/models.md`` §1; parameter names and shapes match the official checkpoints
(``res2net50_v1b_26w_4s``) and timm ``res2net50d``.

Returns the five feature taps MSNet uses: ``x1`` = maxpool output (64@/4), ``x2..x5`` = layer1..layer4.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["Bottle2neck", "Res2Net", "res2net50_v1b_26w_4s"]


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1×1 → 4 hierarchical 3×3 groups → 1×1, plus shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 26,
        scale: int = 4,
        stype: str = "normal",
    ) -> None:
        super().__init__()
        width = (planes * base_width) // 64
        self.width, self.scale, self.stype = width, scale, stype
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        nums = scale - 1
        self.nums = nums
        if stype == "stage":
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1)  # count_include_pad=True (PyTorch default)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False) for _ in range(nums))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(nums))
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, dim=1)
        parts = []
        sp = spx[0]
        for i in range(self.nums):
            sp = spx[i] if (i == 0 or self.stype == "stage") else sp + spx[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            parts.append(sp)
        last = spx[self.nums]
        parts.append(self.pool(last) if self.stype == "stage" else last)
        out = self.bn3(self.conv3(torch.cat(parts, dim=1)))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


class Res2Net(nn.Module):
    """Res2Net v1b (deep stem, avg-pool shortcuts).

    Args:
        layers: blocks per stage ([3, 4, 6, 3] for the 50-layer net).
        base_width, scale: 26 and 4 for ``26w_4s``.
        in_channels: input channels of the stem.
        include_fc: register the unused ImageNet classifier (``avgpool``/``fc``) so that backbone-only
            ImageNet checkpoints load strictly. The segmentation models leave it out and drop ``fc.*`` on load.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        base_width: int = 26,
        scale: int = 4,
        in_channels: int = 3,
        include_fc: bool = False,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.base_width, self.scale = base_width, scale
        self.inplanes = 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.out_channels = (64, 256, 512, 1024, 2048)
        if include_fc:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512 * Bottle2neck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out = planes * Bottle2neck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(self.inplanes, out, 1, stride=1, bias=False),
                nn.BatchNorm2d(out),
            )
        layers = [Bottle2neck(self.inplanes, planes, stride, downsample, self.base_width, self.scale, "stage")]
        self.inplanes = out
        layers += [Bottle2neck(out, planes, base_width=self.base_width, scale=self.scale) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five taps ``[x1 (maxpool), x2 (layer1), x3, x4, x5 (layer4)]`` at strides 4, 4, 8, 16, 32."""
        x = self.relu(self.bn1(self.conv1(x)))
        x1 = self.maxpool(x)
        x2 = self.layer1(x1)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        return [x1, x2, x3, x4, x5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x5 = self.forward_features(x)[-1]
        if not hasattr(self, "fc"):
            return x5
        return self.fc(torch.flatten(self.avgpool(x5), 1))


def res2net50_v1b_26w_4s(in_channels: int = 3, include_fc: bool = False) -> Res2Net:
    """Res2Net-50 v1b 26w_4s (25.7 M parameters with the classifier, 23.67 M without)."""
    return Res2Net((3, 4, 6, 3), base_width=26, scale=4, in_channels=in_channels, include_fc=include_fc)

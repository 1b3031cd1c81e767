"""ResNeXt-101 32x8d: the encoder of the multi-scale self-guided attention network (MSGA, ``training.models.msga``).

Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017 (arXiv 1611.05431); the
torchvision v1.5 bottleneck (stride on the grouped 3×3). Written from the specification in ``shared/docs/models.md``
§6.1; parameter names follow the official MSGA wrapper, which groups torchvision's stages as ``layer0`` (conv1 + bn1
+ ReLU), ``layer1`` (max-pool + first stage), ``layer2..4``; there is no avgpool/fc.

Returns the four stage outputs ``layer1..layer4``: 256@H/4, 512@H/8, 1024@H/16, 2048@H/32.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["Bottleneck", "ResNeXt101"]


class Bottleneck(nn.Module):
    """torchvision-style (v1.5, stride on the 3×3) grouped bottleneck; keys ``conv1..3``, ``bn1..3``, ``downsample``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 32, base_width: int = 8) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNeXt101(nn.Module):
    """ResNeXt-101 32x8d, stages grouped as the official wrapper does; no avgpool/fc.

    Keys: ``layer0.0`` = conv1 (7×7 s2, ``in_channels``→64, no bias), ``layer0.1`` = bn1; ``layer1.0`` = max-pool,
    ``layer1.1.N`` = the first stage's blocks; ``layer2..4.N``. Outputs 256@H/4, 512@H/8, 1024@H/16, 2048@H/32.
    With ``in_channels=1`` it has 86,736,064 parameters (models.md §6.1).
    """

    out_channels = (256, 512, 1024, 2048)

    def __init__(self, in_channels: int = 1, layers: tuple[int, ...] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.layer0 = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        inplanes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(inplanes, planes, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), stages[0])
        self.layer2, self.layer3, self.layer4 = stages[1], stages[2], stages[3]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        l1 = self.layer1(self.layer0(x))
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        return [l1, l2, l3, self.layer4(l3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[-1]

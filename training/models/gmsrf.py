"""GMSRF-Net: global multi-scale residual fusion network for polyp segmentation.

Srivastava et al., "GMSRF-Net: An improved generalizability with global multi-scale residual fusion network for
polyp segmentation", ICPR 2022, arXiv 2111.10614. Official code: NoviceMAn-prog/GMSRFNet (no licence; nothing is
copied from it).

Written from ``shared/docs/models.md`` §4 (the official ``EncoderBlock`` as it runs):

* a full-resolution ``conv1`` BC (3→64) replaces the Res2Net stem and max-pool, so the shared Res2Net-50 v1b
  ``layer1..layer4`` run at strides 1/2/4/8;
* four branches ``conv_red`` (256→32) and ``rfb2_1``/``rfb3_1``/``rfb4_1`` (RFB, → 64/128/256);
* two GMSRF blocks (:class:`GMSRFBlock`, the official ``exchange``) ``msrfv21`` → ``msrfv23``, global residual;
* a linear decoder (transposed convolutions, 3×3 selections, ``final_1``/``final_2`` BCs) and three deep-supervision
  heads ``dsv2/4/8`` (training only).

Official oddities reproduced on purpose, so that official weights give official outputs:

* ``BasicConv2d`` (here :class:`BC`) is conv → BN *without* activation (the official module builds a ReLU and never
  applies it);
* ``final_2`` is a BC, i.e. a BatchNorm on the single-channel logit map;
* the 4×/8× resamplers register BatchNorms ``bn1..bn3`` that their forward never uses;
* ``msrfv22`` is built but not called (its call is commented out in the official forward);
* ``en1..en4``/``se1..se4`` (a leftover plain encoder) and the Res2Net stem ``resnet.conv1``/``resnet.bn1`` exist
  but are unused.

All of these unused modules are registered (so an official ``state_dict`` loads strictly) and **frozen**
(``requires_grad=False``): they receive no gradients anyway, and freezing keeps optimisers and DDP
(``find_unused_parameters=False``) quiet. The one official entry pair not registered is ``resnet.fc.{weight,bias}``
(the unused ImageNet classifier), which :func:`training.load_model` drops explicitly (``KNOWN_UNUSED_KEYS``).

Outputs: the official model returns ``(sigmoid(seg), dsv_up2, dsv_up4, dsv_up8)``. Here ``forward(x)`` returns the
main **logit** map (the sigmoid is the spec's ``output_activation``), and ``forward(x, return_aux=True)`` returns
``(main, aux2, aux4, aux8)`` logits, all at the input size, for deep supervision. The default forward does not
compute the auxiliary heads, so they never appear in an ONNX export.

Input: RGB scaled to [0, 1] only (the official code divides by 255, no mean/std), H and W multiples of 8.

Example:
    >>> import torch
    >>> from training import create_model
    >>> model = create_model("gmsrf").eval()
    >>> logits = model(torch.rand(1, 3, 256, 256))                     # [1, 1, 256, 256]
    >>> main, a2, a4, a8 = model.train()(torch.rand(2, 3, 64, 64), return_aux=True)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.res2net import res2net50_v1b_26w_4s
from .blocks import InputCheckMixin
from .registry import register_model

__all__ = ["BC", "CrossScaleAttention", "GMSRFBlock", "GMSRFNet", "RFBModified", "SELayer", "ScaleResampler"]

SCALES = ("x", "y", "v", "w")  # official names of the four scales: strides 1, 2, 4, 8 relative to the block input


def _freeze(module: nn.Module) -> nn.Module:
    """Mark a registered-but-unused module's parameters as not trainable (they never get a gradient)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class BC(nn.Module):
    """Official ``BasicConv2d``: Conv2d (no bias) → BatchNorm2d, keys ``conv``/``bn``.

    The official module also constructs a ReLU but never applies it; the block is linear, reproduced as such.
    """

    def __init__(self, in_ch: int, out_ch: int, k: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, k, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))  # no activation (official quirk)


class RFBModified(nn.Module):
    """PraNet-style receptive-field block: four BC branches (1×1; 1×k → k×1 → 3×3 dilation k, k = 3, 5, 7),
    concatenated, fused by a 3×3 BC, plus a 1×1 BC shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BC(in_ch, out_ch, 1))
        for i, k in enumerate((3, 5, 7), start=1):
            setattr(self, f"branch{i}", nn.Sequential(
                BC(in_ch, out_ch, 1),
                BC(out_ch, out_ch, (1, k), padding=(0, k // 2)),
                BC(out_ch, out_ch, (k, 1), padding=(k // 2, 0)),
                BC(out_ch, out_ch, 3, padding=k, dilation=k),
            ))
        self.conv_cat = BC(4 * out_ch, out_ch, 3, padding=1)
        self.conv_res = BC(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)
        return F.relu(self.conv_cat(cat) + self.conv_res(x))


class ScaleResampler(nn.Module):
    """Official ``downsample_Nx`` / ``upsample_Nx``: log2(N) × (k4 s2 p1 (transposed) conv, no bias → ReLU).

    Keys: ``conv`` for N = 2; ``conv1, bn1, conv2, bn2[, conv3, bn3]`` for N = 4, 8. The BatchNorms are registered
    (and frozen) for checkpoint compatibility only: the official forward never applies them.
    """

    def __init__(self, in_ch: int, out_ch: int, factor: int, up: bool) -> None:
        super().__init__()
        steps = {2: 1, 4: 2, 8: 3}.get(factor)
        if steps is None:
            raise ValueError(f"resampling factor must be 2, 4 or 8, got {factor}")
        self.factor, self.up, self.steps = factor, up, steps
        conv_cls = nn.ConvTranspose2d if up else nn.Conv2d
        if steps == 1:
            self.conv = conv_cls(in_ch, out_ch, 4, stride=2, padding=1, bias=False)
            return
        for i in range(1, steps + 1):
            setattr(self, f"conv{i}", conv_cls(in_ch if i == 1 else out_ch, out_ch, 4, stride=2, padding=1, bias=False))
            setattr(self, f"bn{i}", _freeze(nn.BatchNorm2d(out_ch)))  # unused (official quirk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.steps == 1:
            return F.relu(self.conv(x))
        for i in range(1, self.steps + 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
        return x

    def extra_repr(self) -> str:
        return f"{'up' if self.up else 'down'} x{self.factor}"


class CrossScaleAttention(nn.Module):
    """CMSA (official ``form_attention_map``): concat three maps → 3×3 conv → 1×1 conv to one channel (no bias, no
    activation between) → ``1 + sigmoid``; a (B, 1, H, W) multiplier in (1, 2)."""

    def __init__(self, in_ch: int = 96, mid_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(mid_ch, 1, 1, bias=False)

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(self.conv1(torch.cat(maps, dim=1)))) + 1.0


class SELayer(nn.Module):
    """MSFS (official ``SELayer``): squeeze-excitation with reduction 8 and bias-free linears ``fc.0``/``fc.2``."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc(x.mean(dim=(2, 3)))
        return x * torch.sigmoid(s)[:, :, None, None]


class GMSRFBlock(nn.Module):
    """One GMSRF block (official ``exchange``): three dense fusion stages across four scales.

    Scales ``x, y, v, w`` (strides 1, 2, 4, 8) enter with ``in_widths``. Stage 1: a 3×3 BC per scale to
    ``stage_widths``. Each stage s = 1..3 then, per target scale: brings the other three scales' stage-s maps to
    its resolution with ``exchange_width`` channels (``<t><s>_<src><s>``), forms a CMSA gate from them (``att_<t><s>``),
    concatenates [input, s1..s_s, the three resampled maps] → 1×1 BC (``<t><s+1>_input``, to the input width for
    s < 3, width-preserving for s = 3) × gate → SE (``<t><s+1>_se``) → 3×3 BC (``<t><s+1>``, to the stage width for
    s < 3, back to the input width for s = 3). Output: input + stage-4 map per scale.

    Spatial sizes must halve exactly between scales (block input size divisible by 8).
    """

    def __init__(
        self,
        in_widths: tuple[int, int, int, int] = (32, 64, 128, 256),
        stage_widths: tuple[int, int, int, int] = (32, 32, 64, 64),
        exchange_width: int = 32,
    ) -> None:
        super().__init__()
        self.in_widths, self.stage_widths = tuple(in_widths), tuple(stage_widths)
        e = exchange_width
        for t, cin, cs in zip(SCALES, in_widths, stage_widths):
            setattr(self, f"{t}1", BC(cin, cs, 3, padding=1))
        # Registration order follows the official module, so state_dict order equals the official one.
        for s in (1, 2, 3):
            for i, t in enumerate(SCALES):
                for j, src in enumerate(SCALES):
                    if j != i:
                        setattr(self, f"{t}{s}_{src}{s}",
                                ScaleResampler(stage_widths[j], e, 2 ** abs(i - j), up=j > i))
                setattr(self, f"att_{t}{s}", CrossScaleAttention(3 * e))
                cat_w = in_widths[i] + s * stage_widths[i] + 3 * e
                fused_w = in_widths[i] if s < 3 else cat_w
                setattr(self, f"{t}{s + 1}_input", BC(cat_w, fused_w, 1))
            for i, t in enumerate(SCALES):
                fused_w = in_widths[i] if s < 3 else in_widths[i] + s * stage_widths[i] + 3 * e
                out_w = stage_widths[i] if s < 3 else in_widths[i]
                setattr(self, f"{t}{s + 1}", BC(fused_w, out_w, 3, padding=1))
                setattr(self, f"{t}{s + 1}_se", SELayer(fused_w))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = (x, y, v, w)
        cur = [getattr(self, f"{t}1")(z) for t, z in zip(SCALES, inputs)]
        dense = [[z, c] for z, c in zip(inputs, cur)]  # per scale: [input, s1, s2, ...]
        for s in (1, 2, 3):
            fused = []
            for i, t in enumerate(SCALES):
                res = [getattr(self, f"{t}{s}_{src}{s}")(cur[j]) for j, src in enumerate(SCALES) if j != i]
                gate = getattr(self, f"att_{t}{s}")(*res)
                fused.append(getattr(self, f"{t}{s + 1}_input")(torch.cat(dense[i] + res, dim=1)) * gate)
            cur = [getattr(self, f"{t}{s + 1}")(getattr(self, f"{t}{s + 1}_se")(f)) for t, f in zip(SCALES, fused)]
            if s < 3:
                for i in range(4):
                    dense[i].append(cur[i])
        return tuple(z + c for z, c in zip(inputs, cur))  # type: ignore[return-value]


class GMSRFNet(InputCheckMixin, nn.Module):
    """GMSRF-Net (official ``EncoderBlock``) on the shared Res2Net-50 v1b 26w4s, stem bypassed.

    Args:
        in_channels: input channels (3 = RGB).
        num_classes: output logit maps (1 for polyps); also the width of the deep-supervision heads.

    Input ``[B, in_channels, H, W]`` scaled to [0, 1] (no mean/std), H and W multiples of 8.
    ``forward(x)`` → ``[B, num_classes, H, W]`` logits; ``forward(x, return_aux=True)`` →
    ``(main, aux2, aux4, aux8)`` logits at ``H×W`` (official order ``seg_map, dsv_up2, dsv_up4, dsv_up8``).
    """

    size_divisor = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 1) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        # Leftover plain encoder of the official module: registered for strict loading, unused, frozen.
        for i, (cin, cout) in enumerate(((in_channels, 32), (32, 64), (64, 128), (128, 256)), start=1):
            setattr(self, f"en{i}", _freeze(BC(cin, cout, 3, padding=1)))
            setattr(self, f"se{i}", _freeze(SELayer(cout)))
        # The ONE shared Res2Net; only layer1..layer4 run. Its stem (conv1/bn1) is registered but unused (frozen);
        # its ImageNet classifier is not registered (the loader drops the official resnet.fc.* explicitly).
        self.resnet = res2net50_v1b_26w_4s(in_channels=in_channels)
        _freeze(self.resnet.conv1)
        _freeze(self.resnet.bn1)
        self.conv1 = BC(in_channels, 64, 3, padding=1)  # full-resolution stem replacing Res2Net's
        self.conv_red = BC(256, 32, 1)
        self.rfb2_1 = RFBModified(512, 64)
        self.rfb3_1 = RFBModified(1024, 128)
        self.rfb4_1 = RFBModified(2048, 256)
        self.msrfv21 = GMSRFBlock()
        self.msrfv22 = _freeze(GMSRFBlock())  # built by the official code, its call is commented out: unused
        self.msrfv23 = GMSRFBlock()
        # Linear decoder (no activations), as in the official code.
        self.u4 = nn.ConvTranspose2d(256, 128, 4, stride=2, padding=1)
        self.level3_selection = nn.Conv2d(256, 128, 3, padding=1, bias=False)
        self.u3 = nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1)
        self.level2_selection = nn.Conv2d(128, 64, 3, padding=1, bias=False)
        self.u1 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.final_1 = BC(64, 32, 3, padding=1)
        self.final_2 = BC(32, num_classes, 3, padding=1)  # BN on the logit map (official quirk)
        # Deep-supervision heads (training only).
        self.dsv8 = nn.Conv2d(256, num_classes, 1)
        self.dsv4 = nn.Conv2d(128, num_classes, 1)
        self.dsv2 = nn.Conv2d(64, num_classes, 1)

    def forward(
        self, x: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(x)
        f = self.conv1(x)
        r1 = self.resnet.layer1(f)  # 256 @ H
        r2 = self.resnet.layer2(r1)  # 512 @ H/2
        r3 = self.resnet.layer3(r2)  # 1024 @ H/4
        r4 = self.resnet.layer4(r3)  # 2048 @ H/8
        n1 = (self.conv_red(r1), self.rfb2_1(r2), self.rfb3_1(r3), self.rfb4_1(r4))
        n = self.msrfv21(*n1)
        # self.msrfv22 is not called (official forward has the call commented out)
        n = self.msrfv23(*n)
        n14, n24, n34, n44 = (a + b for a, b in zip(n, n1))  # global residual
        level3 = self.level3_selection(torch.cat([n34, self.u4(n44)], dim=1))
        level2 = self.level2_selection(torch.cat([n24, self.u3(level3)], dim=1))
        logits = self.final_2(self.final_1(torch.cat([n14, self.u1(level2)], dim=1)))
        # The official model applies a sigmoid here; in the toolkit it is the spec's output_activation ("sigmoid").
        # Tracing (ONNX export) always takes the main-only graph; checking is_tracing() first also keeps the
        # TorchScript exporter, which passes the default ``False`` as a traced value, from warning about it.
        if torch.jit.is_tracing() or not return_aux:
            return logits
        # Deep supervision: 1×1 heads, nearest-neighbour upsampling (official nn.Upsample default mode).
        aux2 = F.interpolate(self.dsv2(level2), scale_factor=2, mode="nearest")
        aux4 = F.interpolate(self.dsv4(level3), scale_factor=4, mode="nearest")
        aux8 = F.interpolate(self.dsv8(n44), scale_factor=8, mode="nearest")
        return logits, aux2, aux4, aux8


# ---------------------------------------------------------------------------- registry entry point
@register_model(
    "gmsrf",
    input_hw=(256, 256),
    size_divisor=8,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),  # the official code only divides by 255
    output_activation="sigmoid",
    threshold=0.5,
    plugin_blocks=(),
    in_channels_key="conv1.conv.weight",
    num_classes_key="final_2.conv.weight",
    paper="Srivastava et al., GMSRF-Net, ICPR 2022, arXiv 2111.10614",
    description="GMSRF-Net, Res2Net-50 layers at full resolution, two GMSRF fusion blocks (191 GMACs @256²)",
)
def gmsrf(**kw) -> GMSRFNet:
    return GMSRFNet(**kw)

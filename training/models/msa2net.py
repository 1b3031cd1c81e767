"""MSA²Net: multi-scale adaptive attention-guided network, as the released code runs it.

* MSA²Net — Ghorbani Kolahi et al., "MSA²Net: Multi-scale Adaptive Attention-guided Network
  for Medical Image Segmentation", BMVC 2024 (oral), arXiv 2407.21640. Official code: xmindflow/MSA-2Net (MIT).

Written from ``shared/docs/models.md`` §5 (no code copied). What is built here is the network the official code
*executes*, not the one the paper counts:

* **Encoder** — MaxViT-S "rw" with an MLP relative-position bias, timm ``maxvit_rmlp_small_rw_224`` (stem 3→32→64,
  stages 96/192/384/768 × (2, 2, 5, 2) blocks of MBConv → 7×7 window attention → 7×7 grid attention, final
  LayerNorm2d on stage 4 only), in :mod:`training.models.backbones.maxvit`. The parameter names are timm's (prefix
  ``backbone.backbone.``), minus ``head.*``, so timm ImageNet weights load with ``pretrained=<path>`` and official
  MSA²Net checkpoints load with :func:`training.load_model`.
* **Decoder** — the official ``MyDecoderLayerDAEFormer`` defines ``__init__``/``forward`` twice and Python keeps
  the second pair, so ``decoder_2`` is an LKA decoder with a *plain addition* of the skip; ``decoder_1`` and
  ``decoder_0`` use the MASAG gate (``cat = x1 + MASAG(x=skip, g=x1)``); ``decoder_3`` only runs its PatchExpand.
  The modules the official model registers but never calls are registered here too (so checkpoints load
  strictly): ``decoder_3.{x1_linear, ag_attn, ag_attn_norm, layer_lka_1, layer_lka_2}``, ``decoder_2.ag_attn`` and
  ``backbone.conv`` (22.6 M parameters in total). They would never receive a gradient, so they are frozen
  (``requires_grad=False``); :meth:`Msa2Net.unused_modules` lists them.
* **Token scramble** — the official decoder reinterprets token memory ``(B, HW, C)`` as ``(B, C, H, W)`` with
  ``.view`` (not a transpose) before its convolutions, and reinterprets the result back with the inverse ``.view``.
  This is reproduced by default (``token_scramble=True``) so that official weights give official outputs;
  ``token_scramble=False`` uses the correct NHWC↔NCHW permutation instead (a different network: train it from
  scratch or from the ImageNet encoder only).

Input channels: the official model takes a 1-channel CT slice, normalised (x − 0.5)/0.5, and repeats it to 3
channels (``in_channels=1``). Its 1→3 "adapter" ``backbone.conv`` (1×1 conv + BN + ReLU) is registered but never
runs. Here ``backbone.conv.0`` is a ``Conv2d(in_channels, 3, 1)`` so that :func:`training.load_model` can infer
``in_channels`` from a checkpoint (official: 1). ``in_channels=3`` (the polyp default, RGB with mean = std = 0.5)
feeds the encoder directly and the adapter stays unused; ``in_channels=1`` repeats (official); any other count
runs the adapter (conv + BN + ReLU) to get 3 channels.

Output: ``[B, num_classes, H, W]`` logits at the input size. The registry's ``output_activation`` is ``"sigmoid"``
for the single-class polyp default; a multi-class model (the official Synapse one has 9 classes) needs a softmax
over the class axis, which is the runtime's job.

Fixed size: window/grid size (``H // 32``) and the decoder's token grids are fixed at construction, so the model
only accepts its ``input_hw`` (224×224 by default; other multiples of 32 can be built with ``input_hw=(S, S)``, the
rel-pos MLP weights do not depend on the size).

Example:
    >>> import torch
    >>> from training import create_model
    >>> model = create_model("msa2net").eval()
    >>> logits = model(torch.randn(1, 3, 224, 224))   # [1, 1, 224, 224]
    >>> official = create_model("msa2net", in_channels=1, num_classes=9)   # Synapse configuration
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.maxvit import ENCODER_DIMS, MaxViT4Out, load_maxvit_imagenet
from .blocks import InputCheckMixin
from .registry import register_model

__all__ = ["Msa2Net", "MultiScaleGatedAttn"]

# Registered by the official model but never called in its forward (models.md §5.3).
UNUSED_DECODER_MODULES = (
    "decoder_3.x1_linear",
    "decoder_3.ag_attn",
    "decoder_3.ag_attn_norm",
    "decoder_3.layer_lka_1",
    "decoder_3.layer_lka_2",
    "decoder_2.ag_attn",
)


def _eager() -> bool:
    """False while tracing/exporting/compiling (shape checks on tensors are skipped there)."""
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


# ============================================================================ MASAG
class ContextExtraction(nn.Module):
    """MASAG local branch: depthwise 3×3 → BN → ReLU → *dense* 3×3 dilation 2 → BN → ReLU; 1×1 conv → BN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dconv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=2, dilation=2),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
        )
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dconv(x))


class GlobalExtraction(nn.Module):
    """MASAG global branch: [channel mean, channel max] → 1×1 conv 2→1 → BN(1)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(2, 1, 1), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), dim=1))


class MultiscaleFusion(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.local = ContextExtraction(dim)
        self.global_ = GlobalExtraction()
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.bn(self.local(x) + self.global_(g))  # the 1-channel global map broadcasts over C


class MultiScaleGatedAttn(nn.Module):
    """MASAG (models.md §5.2): x = encoder skip, g = decoder feature, both (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.multi = MultiscaleFusion(dim)
        self.selection = nn.Conv2d(dim, 2, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.bn = nn.BatchNorm2d(dim)
        self.bn_2 = nn.BatchNorm2d(dim)
        self.conv_block = nn.Sequential(nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        w = F.softmax(self.selection(self.multi(x, g)), dim=1)
        a, b = w[:, 0:1], w[:, 1:2]
        x_att = a * x + x
        g_att = b * g + g
        g_att_2 = torch.sigmoid(x_att) * g_att
        x_att_2 = torch.sigmoid(g_att) * x_att
        projected = torch.sigmoid(self.bn(self.proj(x_att_2 * g_att_2)))
        return self.bn_2(self.conv_block(projected * x))


# ============================================================================ decoder
def _tokens_to_blocks(x: torch.Tensor, resolution: tuple[int, int], f: int, who: str) -> torch.Tensor:
    """(B, H·W, f²·C) tokens → (B, f²·H·W, C): each token becomes an f×f block of C-channel tokens."""
    h, w = resolution
    b, n, c = x.shape
    if _eager() and n != h * w:
        raise ValueError(f"{who} expects {h}x{w} = {h * w} tokens, got {n}")
    return x.reshape(b, h, w, f, f, c // (f * f)).permute(0, 1, 3, 2, 4, 5).reshape(b, f * f * h * w, c // (f * f))


class PatchExpand(nn.Module):
    """Linear C→2C (no bias), each token's 2C channels → a 2×2 block of C/2 (row, col, channel order), LN(C/2).

    Tokens (B, H·W, C) in, tokens (B, 4·H·W, C/2) out; (H, W) is fixed at construction.
    """

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.resolution = resolution
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_tokens_to_blocks(self.expand(x), self.resolution, 2, "PatchExpand"))


class FinalPatchExpand_X4(nn.Module):  # noqa: N801 - official class name
    """Linear C→16C (no bias), each token → a 4×4 block of C channels, LN(C): (B, H·W, C) → (B, 16·H·W, C)."""

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.resolution = resolution
        self.expand = nn.Linear(dim, 16 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_tokens_to_blocks(self.expand(x), self.resolution, 4, "FinalPatchExpand_X4"))


class LKA(nn.Module):
    """Large-kernel attention: depthwise 5×5 → depthwise 7×7 dilation 3 → 1×1; multiplies its input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class SpatialAttention(nn.Module):
    """proj_1 1×1 → GELU → LKA → proj_2 1×1 → + input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


class DWConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class ConvMlp(nn.Module):
    """fc1 1×1 C→4C → depthwise 3×3 → GELU → fc2 1×1 4C→C."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


def _ln_channels(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over dim 1 of an NCHW tensor, applied channels-last (as the official code does)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LKABlock(nn.Module):
    """x + ls1·SpatialAttention(LN(x)); then x + ls2·ConvMlp(LN(x)). NCHW, LayerScale init 1e-2, no drop-path."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(dim))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvMlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1[:, None, None] * self.attn(_ln_channels(self.norm1, x))
        return x + self.layer_scale_2[:, None, None] * self.mlp(_ln_channels(self.norm2, x))


class DecoderLayer(nn.Module):
    """One MSA²Net decoder stage, in the form the official code executes.

    Args:
        dim: token width C at this stage (the skip has the same width).
        resolution: token grid (H, W) of this stage.
        skip: ``"none"`` (decoder_3: only ``layer_up`` runs), ``"add"`` (decoder_2, second class definition:
            ``x1 + skip``) or ``"masag"`` (decoder_1/0: ``x1 + MASAG(x=skip, g=x1)``).
        num_classes: set for the last stage (decoder_0): ``FinalPatchExpand_X4`` + 1×1 ``last_layer``.
        token_scramble: reproduce the official ``.view`` reinterpretations (see the module docstring).

    Every official submodule is registered whether it runs or not, so the state_dict matches the official one.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        skip: str,
        num_classes: int | None = None,
        token_scramble: bool = True,
    ) -> None:
        super().__init__()
        if skip not in ("none", "add", "masag"):
            raise ValueError(f"skip must be 'none', 'add' or 'masag', got {skip!r}")
        self.dim, self.resolution, self.skip, self.token_scramble = dim, resolution, skip, token_scramble
        self.is_last = num_classes is not None
        self.x1_linear = nn.Linear(dim, dim)
        self.ag_attn = MultiScaleGatedAttn(dim)
        self.ag_attn_norm = nn.LayerNorm(dim)
        if self.is_last:
            self.layer_up: nn.Module = FinalPatchExpand_X4(dim, resolution)
            self.last_layer = nn.Conv2d(dim, int(num_classes), 1)  # type: ignore[arg-type]
        else:
            self.layer_up = PatchExpand(dim, resolution)
            self.last_layer = None
        self.layer_lka_1 = LKABlock(dim)
        self.layer_lka_2 = LKABlock(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # Official decoder init: xavier-uniform Linear/Conv2d weights with zero bias; LayerNorm ones/zeros.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x1: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """x1: decoder tokens (B, H·W, C); skip: encoder feature channels-last (B, H, W, C) or None."""
        if self.skip == "none" or skip is None:
            return self.layer_up(x1)
        h, w = self.resolution
        b, c = x1.shape[0], self.dim
        x2 = skip.reshape(b, h * w, c)  # correctly ordered tokens
        x1 = self.x1_linear(x1)
        if self.token_scramble:
            # Official behaviour: `.view(B, C, H, W)` of (B, HW, C) token memory — a reinterpretation that mixes
            # spatial and channel positions, NOT a transpose. Kept so official weights reproduce official outputs.
            x2_map = x2.reshape(b, c, h, w)
            x1_map = x1.reshape(b, c, h, w)
        else:
            x2_map = x2.transpose(1, 2).reshape(b, c, h, w)
            x1_map = x1.transpose(1, 2).reshape(b, c, h, w)
        if self.skip == "masag":
            cat = x1_map + self.ag_attn(x2_map, x1_map)
        else:  # "add": the executed MyDecoderLayerDAEFormer builds MASAG but never calls it
            cat = x1_map + x2_map
        cat = _ln_channels(self.ag_attn_norm, cat).contiguous()
        y = self.layer_lka_2(self.layer_lka_1(cat))
        if self.token_scramble:
            tokens = y.reshape(b, h * w, c)  # official `.view(B, W*H, C)`: the exact inverse of the view above
        else:
            tokens = y.flatten(2).transpose(1, 2)
        up = self.layer_up(tokens)
        if self.last_layer is None:
            return up
        return self.last_layer(up.reshape(b, 4 * h, 4 * w, c).permute(0, 3, 1, 2))


# ============================================================================ network
class Msa2Net(InputCheckMixin, nn.Module):
    """MSA²Net as executed by the official code (LKA decoder with plain addition at decoder_2, MASAG at 1 and 0).

    Args:
        in_channels: 3 = RGB (polyp default), 1 = the official single-channel input (repeated to 3), other counts
            go through the 1×1 conv adapter ``backbone.conv``.
        num_classes: output logit maps (1 for polyps; the official Synapse model has 9).
        token_scramble: reproduce the official decoder's ``.view`` token reinterpretation (default True).
        pretrained: False, or the path of timm ``maxvit_rmlp_small_rw_224`` ImageNet weights to load into the
            encoder (nothing is downloaded).
        input_hw: the only accepted input size, multiples of 32 (224×224 as published).

    Input ``[B, in_channels, H, W]`` normalised (x − 0.5)/0.5. Output ``[B, num_classes, H, W]`` logits.
    """

    size_divisor = 32

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        token_scramble: bool = True,
        pretrained: bool | str | os.PathLike[str] = False,
        input_hw: tuple[int, int] | list[int] = (224, 224),
    ) -> None:
        super().__init__()
        if pretrained is True:
            raise ValueError(
                "pretrained=True would need a download; pass the path of the timm maxvit_rmlp_small_rw_224 ImageNet "
                "weights (maxvit_rmlp_small_rw_224_sw-6ef0ae4f.pth) instead, or load an MSA²Net checkpoint with "
                "training.load_model('msa2net', path)"
            )
        h, w = (int(v) for v in input_hw)
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise ValueError(f"MSA²Net input_hw must be positive multiples of 32, got {h}x{w}")
        if h != w:
            raise ValueError(f"MSA²Net needs a square input (one window size for both axes), got {h}x{w}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.fixed_hw = (h, w)
        self.token_scramble = token_scramble
        self.backbone = MaxViT4Out(self.in_channels, (h, w))
        base = h // 32  # decoder base grid (7 at 224²)
        self.decoder_3 = DecoderLayer(ENCODER_DIMS[3], (base, base), "none", token_scramble=token_scramble)
        self.decoder_2 = DecoderLayer(ENCODER_DIMS[2], (2 * base, 2 * base), "add", token_scramble=token_scramble)
        self.decoder_1 = DecoderLayer(ENCODER_DIMS[1], (4 * base, 4 * base), "masag", token_scramble=token_scramble)
        self.decoder_0 = DecoderLayer(
            ENCODER_DIMS[0], (8 * base, 8 * base), "masag", num_classes=self.num_classes, token_scramble=token_scramble
        )
        # The official forward never calls these modules; they stay registered (checkpoints load strictly) but are
        # frozen, so optimisers keep no state for them and every trainable parameter receives a gradient.
        for name in self.unused_modules():
            self.get_submodule(name).requires_grad_(False)
        if pretrained:
            load_maxvit_imagenet(self.backbone.backbone, pretrained)  # type: ignore[arg-type]

    def unused_modules(self) -> tuple[str, ...]:
        """Names of the registered submodules that ``forward`` never calls (models.md §5.3; 22.6 M parameters).

        The input adapter ``backbone.conv`` is among them unless ``in_channels`` is neither 1 nor 3.
        """
        names = UNUSED_DECODER_MODULES
        return names if self.in_channels not in (1, 3) else ("backbone.conv",) + names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.in_channels == 1:
            x = x.repeat(1, 3, 1, 1)  # official Msa2Net.forward; the 1→3 adapter conv never runs
        enc3, enc2, enc1, enc0 = self.backbone(x)
        b, c = enc3.shape[:2]
        t3 = self.decoder_3(enc3.permute(0, 2, 3, 1).reshape(b, -1, c))
        t2 = self.decoder_2(t3, enc2.permute(0, 2, 3, 1))
        t1 = self.decoder_1(t2, enc1.permute(0, 2, 3, 1))
        return self.decoder_0(t1, enc0.permute(0, 2, 3, 1))


# ---------------------------------------------------------------------------- registry entry point
@register_model(
    "msa2net",
    input_hw=(224, 224),
    in_channels=3,
    num_classes=1,
    size_divisor=32,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    output_activation="sigmoid",
    fixed_size=True,
    in_channels_key="backbone.conv.0.weight",
    num_classes_key="decoder_0.last_layer.weight",
    paper="Ghorbani Kolahi et al., BMVC 2024, arXiv 2407.21640",
    description="MSA²Net as executed: MaxViT-S rmlp rw encoder, LKA decoder with MASAG gates (fixed 224x224)",
)
def msa2net(**kw) -> Msa2Net:
    return Msa2Net(**kw)

"""MaxViT-S "rw" with an MLP relative-position bias: the encoder of MSA²Net (timm ``maxvit_rmlp_small_rw_224``).

Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022 (arXiv 2204.01697); the "rw" / "rmlp" variant is
timm's (Wightman). Written from the specification in ``shared/docs/models.md`` §5 (no code copied). Stem 3→32→64,
stages 96/192/384/768 × (2, 2, 5, 2) blocks of MBConv → 7×7 window attention → 7×7 grid attention, final LayerNorm2d
on stage 4 only. Parameter names and shapes are timm's minus ``head.*``, so timm ImageNet weights load with
:func:`load_maxvit_imagenet`.

:class:`MaxViTRmlpSmall` returns the four stage outputs shallowest first; :class:`MaxViT4Out` is the official
MSA²Net wrapper (``MaxViT4Out_Small``: an input adapter ``conv`` plus the encoder as ``backbone``), returning them
deepest first. Window/grid size (``H // 32``) is fixed at construction; the rel-pos MLP weights do not depend on it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ENCODER_DEPTHS", "ENCODER_DIMS", "MaxViT4Out", "MaxViTRmlpSmall", "load_maxvit_imagenet"]

ENCODER_DIMS = (96, 192, 384, 768)
ENCODER_DEPTHS = (2, 2, 5, 2)
STEM_WIDTHS = (32, 64)
HEAD_DIM = 32


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an optional activation; the state_dict is a plain BatchNorm2d's (timm naming)."""

    def __init__(self, channels: int, act: bool = True, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class SqueezeExcite(nn.Module):
    """timm ``SEModule``: global mean → 1×1 conv (bias) → SiLU → 1×1 conv (bias) → sigmoid gate."""

    def __init__(self, channels: int, rd_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class Downsample2d(nn.Module):
    """MBConv shortcut of a strided block: 2×2 average pool, then a 1×1 conv without bias (``expand``)."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.expand = nn.Conv2d(dim, dim_out, 1, bias=False) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class MbConvBlock(nn.Module):
    """Pre-norm inverted bottleneck of the "rw" configs (expansion from the *input* width, no output biases).

    pre_norm BN (no act) → 1×1 expand ×4 → BN+SiLU → depthwise 3×3 (stride) → BN+SiLU → SE(1/16) → 1×1 project,
    plus the shortcut (identity, or avg-pool 2×2 + 1×1 conv when strided).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        mid = in_chs * 4
        self.shortcut = Downsample2d(in_chs, out_chs) if stride == 2 else nn.Identity()
        self.pre_norm = BatchNormAct2d(in_chs, act=False)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.norm1 = BatchNormAct2d(mid)
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.norm2 = BatchNormAct2d(mid)
        self.se = SqueezeExcite(mid, mid // 16)
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        return self.conv3_1x1(x) + shortcut


class _Mlp(nn.Module):
    """fc1 → activation → (dropout) → fc2 (timm ``Mlp`` keys)."""

    def __init__(self, dim: int, hidden: int, out: int, act: type[nn.Module], drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop1(self.act(self.fc1(x))))


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws², ws²) index into the (2ws−1)² offset table, for offsets ``q − k``, row-major over (dh, dw).

    Equals timm's ``torch.unique(..., return_inverse=True)`` construction, since every offset occurs and unique
    sorts them lexicographically.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # 2, L
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # 2, L, L
    return rel[0] * (2 * ws - 1) + rel[1]


def relative_log_coords(ws: int) -> torch.Tensor:
    """(2ws−1, 2ws−1, 2) table of sign(d)·log(1 + |d|) for the offsets (dh, dw) — timm's 'cr' mode."""
    r = torch.arange(-(ws - 1), ws, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(r, r, indexing="ij")).permute(1, 2, 0).contiguous()
    return torch.sign(table) * torch.log1p(table.abs())


class RelPosMlp(nn.Module):
    """Relative-position bias from an MLP (2 → 512, ReLU, Dropout 0.125 → heads) on constant log coordinates.

    The bias (1, heads, ws², ws²) depends only on the weights, never on the input (constant-foldable).
    """

    def __init__(self, window: int, num_heads: int, hidden: int = 512) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.mlp = _Mlp(2, hidden, num_heads, nn.ReLU, drop=0.125)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.register_buffer("rel_coords_log", relative_log_coords(window), persistent=False)

    def get_bias(self) -> torch.Tensor:
        area = self.window * self.window
        table = self.mlp(self.rel_coords_log).reshape(-1, self.num_heads)
        bias = table[self.relative_position_index.reshape(-1)].reshape(area, area, self.num_heads)
        return bias.permute(2, 0, 1).unsqueeze(0)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn + self.get_bias()


class AttentionCl(nn.Module):
    """Channels-last multi-head self-attention, head dim 32, with timm's "head-first" qkv channel layout.

    qkv's 3·C outputs are grouped per head as [q | k | v] (each 32 wide), not as [all q | all k | all v].
    """

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.num_heads = dim // HEAD_DIM
        self.scale = HEAD_DIM**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.rel_pos = RelPosMlp(window, self.num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, ws, ws, C)
        n, a, b, c = x.shape
        qkv = self.qkv(x).reshape(n, a * b, self.num_heads, 3 * HEAD_DIM).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.rel_pos(attn).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, a, b, c)
        return self.proj(out)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) → (B·H/ws·W/ws, ws, ws, C): contiguous ws×ws blocks."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c)


def window_reverse(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def grid_partition(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, H, W, C) → (B·H/g·W/g, g, g, C): a g×g grid of pixels strided H/g apart (dilated "windows")."""
    b, h, w, c = x.shape
    x = x.reshape(b, g, h // g, g, w // g, c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, g, g, c)


def grid_reverse(x: torch.Tensor, g: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.reshape(-1, h // g, w // g, g, g, c).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, h, w, c)


class PartitionAttentionCl(nn.Module):
    """LN → window (or grid) attention → LayerScale → residual; LN → MLP ×4 (GELU) → LayerScale → residual."""

    def __init__(self, dim: int, window: int, grid: bool, feat_hw: tuple[int, int]) -> None:
        super().__init__()
        self.window, self.grid, self.feat_hw = window, grid, feat_hw
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = AttentionCl(dim, window)
        self.ls1 = LayerScale(dim, 1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim, dim, nn.GELU)
        self.ls2 = LayerScale(dim, 1e-6)

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.feat_hw
        if self.grid:
            return grid_reverse(self.attn(grid_partition(x, self.window)), self.window, h, w)
        return window_reverse(self.attn(window_partition(x, self.window)), self.window, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self._partition_attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class MaxxVitBlock(nn.Module):
    """MBConv (NCHW) → window attention → grid attention (both channels-last)."""

    def __init__(self, dim: int, dim_out: int, stride: int, window: int, feat_hw: tuple[int, int]) -> None:
        super().__init__()
        self.conv = MbConvBlock(dim, dim_out, stride)
        self.attn_block = PartitionAttentionCl(dim_out, window, grid=False, feat_hw=feat_hw)
        self.attn_grid = PartitionAttentionCl(dim_out, window, grid=True, feat_hw=feat_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)


class MaxxVitStage(nn.Module):
    def __init__(self, dim: int, dim_out: int, depth: int, window: int, feat_hw: tuple[int, int]) -> None:
        super().__init__()
        blocks = [MaxxVitBlock(dim, dim_out, 2, window, feat_hw)]  # the first block of every stage strides
        blocks += [MaxxVitBlock(dim_out, dim_out, 1, window, feat_hw) for _ in range(depth - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Stem(nn.Module):
    """conv 3×3 stride 2 (3→32, no bias) → BN + SiLU → conv 3×3 (32→64, no bias)."""

    def __init__(self, in_chs: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, STEM_WIDTHS[0], 3, stride=2, padding=1, bias=False)
        self.norm1 = BatchNormAct2d(STEM_WIDTHS[0])
        self.conv2 = nn.Conv2d(STEM_WIDTHS[0], STEM_WIDTHS[1], 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _init_conv(m: nn.Module) -> None:
    # timm "vit_eff" scheme for conv blocks: EfficientNet-like normal(0, sqrt(2 / fan_out)), zero bias.
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            fan_out = mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels // mod.groups
            nn.init.normal_(mod.weight, 0.0, math.sqrt(2.0 / fan_out))
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def _init_transformer(m: nn.Module) -> None:
    # timm "vit_eff" scheme for attention blocks: xavier-uniform, biases zero (normal 1e-6 inside MLPs).
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(mod.weight)
            if mod.bias is not None:
                if "mlp" in name:
                    nn.init.normal_(mod.bias, std=1e-6)
                else:
                    nn.init.zeros_(mod.bias)


class MaxViTRmlpSmall(nn.Module):
    """timm ``maxvit_rmlp_small_rw_224`` without its classifier head, returning the four stage outputs.

    Args:
        img_hw: input size; the window/grid size is ``H // 32`` (7 at 224², fixed at construction).

    ``forward_features(x)`` returns ``[96@H/4, 192@H/8, 384@H/16, norm(768@H/32)]`` (shallowest first).
    """

    def __init__(self, img_hw: tuple[int, int] = (224, 224)) -> None:
        super().__init__()
        h, w = img_hw
        window = h // 32
        self.stem = Stem(3)
        stages = []
        in_chs = STEM_WIDTHS[1]
        for i, (dim, depth) in enumerate(zip(ENCODER_DIMS, ENCODER_DEPTHS)):
            s = 4 * 2**i
            stages.append(MaxxVitStage(in_chs, dim, depth, window, (h // s, w // s)))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.norm = LayerNorm2d(ENCODER_DIMS[-1], eps=1e-6)
        self.init_weights()

    def init_weights(self) -> None:
        _init_conv(self.stem)
        for stage in self.stages:
            for blk in stage.blocks:
                _init_conv(blk.conv)
                _init_transformer(blk.attn_block)
                _init_transformer(blk.attn_grid)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats.append(self.norm(x) if i == len(self.stages) - 1 else x)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)


class MaxViT4Out(nn.Module):
    """The official ``MaxViT4Out_Small`` wrapper: an input adapter ``conv`` and the MaxViT ``backbone``.

    Returns the four features deepest first: (768@H/32, 384@H/16, 192@H/8, 96@H/4).
    """

    def __init__(self, in_channels: int, img_hw: tuple[int, int]) -> None:
        super().__init__()
        # Official: Conv2d(1, 3, 1) + BN + ReLU, never run (Msa2Net.forward repeats 1-channel input first).
        # Here the conv's input width records in_channels; it runs only for in_channels not in (1, 3).
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 3, 1), nn.BatchNorm2d(3), nn.ReLU())
        self.backbone = MaxViTRmlpSmall(img_hw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.shape[1] != 3:
            x = self.conv(x)
        f = self.backbone(x)
        return f[3], f[2], f[1], f[0]


def load_maxvit_imagenet(encoder: MaxViTRmlpSmall, path: str | os.PathLike[str]) -> None:
    """Load timm ``maxvit_rmlp_small_rw_224`` ImageNet weights (``maxvit_rmlp_small_rw_224_sw-6ef0ae4f.pth``, or
    timm 1.0 ``maxvit_rmlp_small_rw_224.sw_in1k``) from a local file; ``head.*`` is dropped, the rest is strict.

    Nothing is downloaded. Raises ``ValueError`` naming missing/unexpected keys.
    """
    p = os.fspath(path)
    if p.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file  # type: ignore[import-not-found]
        except ImportError:  # pragma: no cover - optional dependency
            raise ValueError(f"{p!r} is a safetensors file but the 'safetensors' package is not installed") from None
        obj: Any = load_file(p)
    else:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    sd: Mapping[str, Any] = obj
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    missing, unexpected = encoder.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{p!r} is not a maxvit_rmlp_small_rw_224 state_dict: {len(missing)} missing keys "
            f"({', '.join(missing[:4])}), {len(unexpected)} unexpected keys ({', '.join(unexpected[:4])})"
        )

"""Building blocks shared by the model families: CBR units, resizing, input checks, M2SNet's fixed box sums, and
the DANet attention blocks (PAM/CAM) that MSGA uses and the export side replaces with plugins."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CBR", "ChannelAttention", "FixedOnesConv", "InputCheckMixin", "PositionAttention", "box_sum", "up_to"]


class CBR(nn.Sequential):
    """Conv2d k×k (with bias) → BatchNorm2d → ReLU; keys ``N.0`` (conv) and ``N.1`` (BN) as in MSNet."""

    def __init__(self, in_ch: int, out_ch: int = 64, k: int = 3) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=True), nn.BatchNorm2d(out_ch), nn.ReLU())


def up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``ref``'s spatial size (align_corners=False, the legacy ``F.upsample`` default).

    An identity resize (bilinear at scale 1 with half-pixel centres is exact) is skipped, so the exported graph
    carries no no-op ``Resize`` node. Where it is skipped depends only on the network's strides, never on the input.
    """
    if tuple(x.shape[-2:]) == tuple(ref.shape[-2:]):
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def box_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """k×k sum with zero padding k//2 and stride 1, per channel: ``avg_pool(count_include_pad) · k²``."""
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=True) * float(k * k)


class FixedOnesConv(nn.Module):
    """M2SNet's ``CNN1``: an all-ones C→C k×k convolution (zero bias) followed by BatchNorm2d and ReLU.

    The official code creates the all-ones weight with ``nn.Parameter(...).cuda()``, which yields a plain tensor:
    it is not in the state_dict, so the only checkpoint keys are ``norm.*``. Two mathematically equal forms:

    * ``"conv"``: the literal dense convolution (weight held in a non-persistent buffer, so ``.to()``/``.half()``
      behave and the state_dict matches the official one). Costs C·C·k² MACs per pixel.
    * ``"boxsum"``: sum over input channels, a k×k box sum, broadcast to all C channels. Costs C + k² per pixel.
      This is the default; export always uses it.

    Args:
        channels: C (64 in M2SNet).
        k: kernel size (3 or 5).
        mode: ``"boxsum"`` or ``"conv"``; switch later with :meth:`set_mode`.
    """

    def __init__(self, channels: int = 64, k: int = 3, mode: str = "boxsum") -> None:
        super().__init__()
        self.channels = channels
        self.k = k
        self.register_buffer("ones", torch.ones(channels, channels, k, k), persistent=False)
        self.norm = nn.BatchNorm2d(channels)
        self.mode = ""
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        if mode not in ("boxsum", "conv"):
            raise ValueError(f"FixedOnesConv mode must be 'boxsum' or 'conv', got {mode!r}")
        self.mode = mode

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed convolution alone (before BN/ReLU), in the current mode."""
        if self.mode == "conv":
            return F.conv2d(x, self.ones.to(x.dtype), None, stride=1, padding=self.k // 2)
        s = box_sum(x.sum(dim=1, keepdim=True), self.k)
        return s.expand(-1, self.channels, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.pre_norm(x)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.k}, mode={self.mode!r}"


class InputCheckMixin:
    """Eager-mode validation of the input tensor with one-line messages that say what is expected."""

    in_channels: int
    size_divisor: int = 32
    fixed_hw: tuple[int, int] | None = None

    def check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape [B, {self.in_channels}, H, W], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"expected a 4-D input [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0)"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"expected a floating-point input (float32/float16/bfloat16), got {x.dtype}; "
                "normalise the image first (x.float() / 255, then mean/std)"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        h, w = x.shape[-2:]
        if self.fixed_hw is not None and (h, w) != tuple(self.fixed_hw):
            raise ValueError(f"this model only accepts {self.fixed_hw[0]}x{self.fixed_hw[1]} inputs, got {h}x{w}")
        d = self.size_divisor
        if h % d or w % d:
            ph, pw = -(-h // d) * d, -(-w // d) * d
            raise ValueError(
                f"input height and width must be multiples of {d}, got {h}x{w}; resize or pad to {ph}x{pw}"
            )


# ---------------------------------------------------------------------------- DANet attention (Fu et al., CVPR 2019)
class PositionAttention(nn.Module):
    """DANet position attention (official ``PAM_Module``), plugin-eligible.

    With x (B, C, H, W), N = H·W, Q = query_conv(x) and K = key_conv(x) (C/8 channels), V = value_conv(x) (C):
    ``energy = Qᵀ·K`` (B, N, N) — no 1/√d scaling, as in the official code —, ``A = softmax(energy, dim=-1)``,
    ``out = V·Aᵀ`` (i.e. out[:, :, n] = Σ_m A[n, m] · V[:, :, m]) and the result is ``gamma · out + x``, with the
    scalar ``gamma`` initialised to 0. Memory is O(N²): N = 4,096 at a 256² network input.
    """

    def __init__(self, in_dim: int = 64) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key_conv(x).flatten(2)  # (B, C/8, N)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N, N), rows sum to 1
        v = self.value_conv(x).flatten(2)  # (B, C, N)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """DANet channel attention (official ``CAM_Module``), plugin-eligible; no convolutions.

    With X = x viewed as (B, C, N): ``E = X·Xᵀ`` (B, C, C), ``E' = rowmax(E) − E`` (max over the last dimension,
    kept as in the official code although softmax is shift-invariant: it makes the softmax favour *dissimilar*
    channels), ``A = softmax(E', dim=-1)``, ``out = A·X`` and the result is ``gamma · out + x``, ``gamma``
    initialised to 0. Entries of E sum N products: keep this block in FP32 under reduced precision.
    """

    def __init__(self, in_dim: int = 64) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xf = x.flatten(2)  # (B, C, N)
        energy = torch.bmm(xf, xf.transpose(1, 2))  # (B, C, C)
        energy_new = torch.amax(energy, dim=-1, keepdim=True) - energy
        attn = torch.softmax(energy_new, dim=-1)
        out = torch.bmm(attn, xf).view(b, c, h, w)
        return self.gamma * out + x

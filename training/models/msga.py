"""Multi-scale self-guided attention network ("DAF-stack") on a ResNeXt-101 32x8d encoder.

* Sinha, Dolz, "Multi-scale self-guided attention for medical image segmentation", IEEE Journal of Biomedical and
  Health Informatics 25(1), 2021 (online 2020), arXiv 1906.02849. Official code: sinAshish/Multi-Scale-Attention
  (``DAF_stack``), read at commit 96d76f27 for behaviour only; this file is written from ``shared/docs/models.md`` §6.
  The encoder lives in :mod:`training.models.backbones.resnext`, the PAM/CAM blocks in :mod:`training.models.blocks`.

Architecture (§6.2): the four ResNeXt stages are projected to 64 channels and resized to H/4 (``down1..4``), fused
into one multi-scale map (``fuse1``), and every scale is refined twice. Each refinement stage runs, on
``concat(downK, guide)`` (128 channels), a position-attention branch (DANet PAM,
:class:`~training.models.blocks.PositionAttention`), a channel-attention branch (DANet CAM,
:class:`~training.models.blocks.ChannelAttention`) and a shared semantic encoder-decoder (:class:`SemanticModule`)
whose output gates the attention sum. Stage 1 is guided by ``fuse1``, stage 2 by
``attention1_K · fuse1``. The output is the mean of the four upsampled stage-2 predictions.

Parameter names and registration order equal the official ``DAF_stack()`` state_dict (1,372 entries,
``shared/reference/official_state_dict_keys/daf_stack.tsv``), including the modules the official network registers
but never runs (``conv6_*``, ``conv7_*``, ``attention1..4``, ``refine1..4``). Official checkpoints (built with
``in_channels=1, num_classes=5``) therefore load strictly with :func:`training.load_model`.

Deliberate differences from the official module, all output-neutral:

* ``forward(x)`` returns the eval-mode logits in train *and* eval mode (the toolkit's trainer expects one tensor).
  Training outputs, as the toolkit's other families do it: ``forward(x, return_aux=True)`` returns the logit maps
  ``(main, predict1, predict2, predict3, predict4, predict1_2, predict2_2, predict3_2, predict4_2)``, all at the
  input size (deep supervision). ``forward(x, return_aux="all")`` returns :class:`MSGAOutputs`, everything the
  official loss needs; :meth:`MSGAOutputs.official_tuple` gives the official train-mode 32-tuple in its order.
  ONNX export (tracing) always takes the main-only graph.
* The coarse predictions ``predict1..4`` are computed only for ``return_aux``; they never reach the official eval
  output either.
* The semantic module's resize of ``dec2`` to ``enc1``'s size is skipped when the sizes already agree (always, for
  inputs that are multiples of 32): bilinear at scale 1 with half-pixel centres is the identity, so the exported graph
  loses 8 no-op ``Resize`` nodes and nothing else.
* The never-executed modules are frozen (``requires_grad=False``): they stay in the state_dict for checkpoint
  compatibility, but optimisers skip them and gradient checks do not expect a gradient for them.

Example:
    >>> import torch
    >>> from training import create_model
    >>> model = create_model("msga").eval()
    >>> logits = model(torch.randn(1, 3, 256, 256))   # [1, 1, 256, 256]
    >>> official = create_model("msga", in_channels=1, num_classes=5)   # the CHAOS-MRI configuration
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.resnext import ResNeXt101
from .blocks import ChannelAttention, InputCheckMixin, PositionAttention, up_to
from .registry import register_model

__all__ = ["MSGANet", "MSGAOutputs", "MultiConv", "SemanticModule"]

# Per scale (coarsest first, the official evaluation order): (down map, stage-1 pam/cam suffix, stage-1 conv_sem,
# stage-1 conv8, stage-2 pam/cam suffix, stage-2 conv_sem, stage-2 conv8). The official names do NOT follow the scale
# index (models.md §6.2, "Module-name mapping per scale"): e.g. down4 uses *_attention_1_4 but conv_sem_1_1 / conv8_1.
SCALE_MODULES = (
    ("down4", "1_4", "conv_sem_1_1", "conv8_1", "2_4", "conv_sem_2_1", "conv8_11"),
    ("down3", "1_3", "conv_sem_1_2", "conv8_2", "2_3", "conv_sem_2_2", "conv8_12"),
    ("down2", "1_2", "conv_sem_1_3", "conv8_3", "2_2", "conv_sem_2_3", "conv8_13"),
    ("down1", "1_1", "conv_sem_1_4", "conv8_4", "2_1", "conv_sem_2_4", "conv8_14"),
)
# Registered by the official network but never used in its forward pass (models.md §6.2).
UNUSED_MODULES = tuple(
    [f"conv6_{i}" for i in range(1, 5)]
    + [f"conv7_{i}" for i in range(1, 5)]
    + [f"attention{i}" for i in range(1, 5)]
    + [f"refine{i}" for i in range(1, 5)]
)


# ============================================================================================ attention blocks
class AttentionLayer(nn.Module):
    """Official ``PAM_CAM_Layer``: ``attn`` = conv3×3 2C→C, BN, PReLU, PAM|CAM, conv3×3 C→C, BN, PReLU."""

    def __init__(self, in_ch: int = 64, use_pam: bool = True) -> None:
        super().__init__()
        self.attn = nn.Sequential(
            nn.Conv2d(in_ch * 2, in_ch, 3, padding=1),
            nn.BatchNorm2d(in_ch),
            nn.PReLU(),
            PositionAttention(in_ch) if use_pam else ChannelAttention(in_ch),
            nn.Conv2d(in_ch, in_ch, 3, padding=1),
            nn.BatchNorm2d(in_ch),
            nn.PReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


class _EncoderBlock(nn.Module):
    """``encode`` = (conv3×3 + BN + ReLU) ×2, max-pool 2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


class _DecoderBlock(nn.Module):
    """``decode`` = (conv3×3 + BN + ReLU) ×2, ConvTranspose 2×2 stride 2."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.decode = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, mid_ch, 3, padding=1),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid_ch, out_ch, 2, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x)


class SemanticModule(nn.Module):
    """Official ``semanticModule(in_dim)``: a two-level encoder-decoder (6,970,496 parameters at in_dim = 128).

    Returns ``(enc2 flattened over the whole batch, decoded map)``. The flat vector mixes the batch into one
    dimension exactly like the official ``view(-1)``; it only feeds the training loss (MSE between the two stages).
    """

    def __init__(self, in_dim: int = 128) -> None:
        super().__init__()
        self.enc1 = _EncoderBlock(in_dim, in_dim * 2)
        self.enc2 = _EncoderBlock(in_dim * 2, in_dim * 4)
        self.dec2 = _DecoderBlock(in_dim * 4, in_dim * 2, in_dim * 2)
        self.dec1 = _DecoderBlock(in_dim * 2, in_dim, in_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc1 = self.enc1(x)
        enc2 = self.enc2(enc1)
        dec2 = self.dec2(enc2)
        # Official: bilinear resize of dec2 to enc1's size; the identity whenever H/4 and W/4 are even (skipped then).
        dec1 = self.dec1(up_to(dec2, enc1))
        return enc2.reshape(-1), dec1


class MultiConv(nn.Module):
    """Official ``MultiConv``: ``fuse_attn`` = conv3×3 + BN + PReLU, conv3×3 + BN + PReLU, conv1×1 + BN, then
    PReLU (``attn=False``) or Softmax2d (``attn=True``). The BNs are 64-wide in the official code whatever
    ``out_ch`` is; this network only uses out_ch = 64."""

    def __init__(self, in_ch: int, out_ch: int = 64, attn: bool = True) -> None:
        super().__init__()
        self.fuse_attn = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(),
            nn.Conv2d(out_ch, out_ch, 1),
            nn.BatchNorm2d(out_ch),
            nn.Softmax2d() if attn else nn.PReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse_attn(x)


def _proj(in_ch: int, out_ch: int = 64) -> nn.Sequential:
    """``downK``: conv1×1 (bias) + BN + PReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.BatchNorm2d(out_ch), nn.PReLU())


# ============================================================================================ network
class MSGAOutputs(NamedTuple):
    """Everything the official training loss needs (``forward(x, return_aux="all")``).

    Per-scale tuples are ordered as documented per field. ``sem_inputs[i]`` pairs with ``sem_outputs[i]`` (the
    reconstruction loss) and ``sem_vectors_1[i]`` with ``sem_vectors_2[i]`` (the semantic-consistency loss).

    Attributes:
        logits: the eval output, mean of the four upsampled stage-2 predictions, [B, classes, H, W].
        sem_vectors_1, sem_vectors_2: flat semantic vectors of stage 1 / stage 2, scales down4, down3, down2, down1.
        sem_inputs: semantic-module inputs, stage 1 for down1..down4, then stage 2 for down1..down4.
        sem_outputs: semantic-module outputs, same order as ``sem_inputs``.
        coarse: ``predict1..4`` upsampled to the input (down1..down4).
        fine: ``predict1_2..4_2`` upsampled to the input (down1..down4).
    """

    logits: torch.Tensor
    sem_vectors_1: tuple[torch.Tensor, ...]
    sem_vectors_2: tuple[torch.Tensor, ...]
    sem_inputs: tuple[torch.Tensor, ...]
    sem_outputs: tuple[torch.Tensor, ...]
    coarse: tuple[torch.Tensor, ...]
    fine: tuple[torch.Tensor, ...]

    def official_tuple(self) -> tuple[torch.Tensor, ...]:
        """The official train-mode 32-tuple, in its order (models.md §6.2, step 8)."""
        sem = tuple(v for pair in zip(self.sem_vectors_1, self.sem_vectors_2) for v in pair)
        return sem + tuple(self.sem_inputs) + tuple(self.sem_outputs) + tuple(self.coarse) + tuple(self.fine)


class MSGANet(InputCheckMixin, nn.Module):
    """Multi-scale self-guided attention network (official ``DAF_stack``).

    Args:
        in_channels: input channels of the encoder's conv1 (3 = RGB polyp default; 1 in the official MRI setup).
        num_classes: logit maps of all eight prediction heads (1 for polyps; 5 in the official CHAOS setup).
        init: ``"official"`` (default: xavier-normal for every Conv2d/ConvTranspose2d weight, BN weight N(1, 0.02)
            and bias 0, as the official ``weights_init``) or ``"default"`` (PyTorch's per-layer defaults).

    Input ``[B, in_channels, H, W]`` (H and W multiples of 32). ``forward(x)`` → ``[B, num_classes, H, W]``
    logits in both train and eval mode. ``forward(x, return_aux=True)`` → the 9 logit maps ``(main, predict1..4,
    predict1_2..4_2)`` at ``H×W``; ``forward(x, return_aux="all")`` → :class:`MSGAOutputs`.
    """

    size_divisor = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 1, init: str = "official") -> None:
        super().__init__()
        if init not in ("official", "default"):
            raise ValueError(f"unknown init {init!r}; valid: 'official', 'default'")
        self.in_channels, self.num_classes = in_channels, num_classes
        c = 64
        # Registration order = the official state_dict order.
        self.resnext = ResNeXt101(in_channels)
        f1, f2, f3, f4 = ResNeXt101.out_channels
        self.down4, self.down3, self.down2, self.down1 = _proj(f4, c), _proj(f3, c), _proj(f2, c), _proj(f1, c)
        for i in range(1, 5):  # unused (official oddity): Dropout2d + 1×1 conv
            setattr(self, f"conv6_{i}", nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(c, c, 1)))
        for i in range(1, 5):
            setattr(self, f"conv7_{i}", nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(c, c, 1)))
        for name in ("conv8_1", "conv8_2", "conv8_3", "conv8_4", "conv8_11", "conv8_12", "conv8_13", "conv8_14"):
            setattr(self, name, nn.Conv2d(c, c, 1))
        # (The official `softmax_1 = nn.Softmax(dim=-1)` has no parameters and is never used: not registered.)
        for stage in (1, 2):
            for j in range(1, 5):
                setattr(self, f"pam_attention_{stage}_{j}", AttentionLayer(c, use_pam=True))
                setattr(self, f"cam_attention_{stage}_{j}", AttentionLayer(c, use_pam=False))
                if j == 1:
                    # ONE semantic module per stage, shared by all four scales (official design).
                    setattr(self, f"semanticModule_{stage}_1", SemanticModule(2 * c))
                    for k in range(1, 5):
                        setattr(self, f"conv_sem_{stage}_{k}", nn.Conv2d(2 * c, c, 3, padding=1))
        self.fuse1 = MultiConv(4 * c, c, attn=False)
        for i in (4, 3, 2, 1):  # unused (official oddity)
            setattr(self, f"attention{i}", MultiConv(2 * c, c, attn=True))
        for i in (4, 3, 2, 1):  # unused (official oddity)
            setattr(self, f"refine{i}", MultiConv(2 * c, c, attn=False))
        for suffix in ("", "_2"):
            for i in (4, 3, 2, 1):
                setattr(self, f"predict{i}{suffix}", nn.Conv2d(c, num_classes, 1))

        if init == "official" and not self.down1[0].weight.is_meta:  # meta tensors hold no values (and init is slow)
            self.apply(_official_init)
        for name in UNUSED_MODULES:  # kept for checkpoint compatibility only; never executed
            getattr(self, name).requires_grad_(False)

    # ------------------------------------------------------------------ forward
    def _stage(self, stage: int, inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list, list]:
        """One refinement stage over the four scales (order down4, down3, down2, down1).

        Returns the per-scale results ``conv8((cam + pam) · conv_sem(sem))``, semantic vectors and semantic maps.
        """
        sem_module = getattr(self, f"semanticModule_{stage}_1")
        col = 1 if stage == 1 else 4  # columns of SCALE_MODULES for this stage
        outs, vecs, sems = [], [], []
        for names, x in zip(SCALE_MODULES, inputs):
            suffix, conv_sem, conv8 = names[col], names[col + 1], names[col + 2]
            vec, sem = sem_module(x)
            pam = getattr(self, f"pam_attention_{suffix}")(x)
            cam = getattr(self, f"cam_attention_{suffix}")(x)
            outs.append(getattr(self, conv8)((cam + pam) * getattr(self, conv_sem)(sem)))
            vecs.append(vec)
            sems.append(sem)
        return outs, vecs, sems

    def forward(
        self, x: torch.Tensor, return_aux: bool | str = False
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | MSGAOutputs:
        self.check_input(x)
        if not torch.jit.is_tracing() and return_aux not in (False, True, "all"):
            raise ValueError(f"return_aux must be False, True or 'all', got {return_aux!r}")
        layer1, layer2, layer3, layer4 = self.resnext.forward_features(x)
        down4 = up_to(self.down4(layer4), layer1)
        down3 = up_to(self.down3(layer3), layer1)
        down2 = up_to(self.down2(layer2), layer1)
        down1 = self.down1(layer1)
        downs = [down4, down3, down2, down1]
        fuse1 = self.fuse1(torch.cat(downs, 1))

        in1 = [torch.cat((d, fuse1), 1) for d in downs]
        att1, vec1, sem1 = self._stage(1, in1)
        in2 = [torch.cat((d, a * fuse1), 1) for d, a in zip(downs, att1)]
        refine, vec2, sem2 = self._stage(2, in2)

        size = x.shape[-2:]
        # refine order is down4..down1, i.e. predict4_2, predict3_2, predict2_2, predict1_2
        fine = [
            F.interpolate(getattr(self, f"predict{i}_2")(r), size=size, mode="bilinear", align_corners=False)
            for i, r in zip((4, 3, 2, 1), refine)
        ]
        # Official eval output: (predict1_2 + predict2_2 + predict3_2 + predict4_2) / 4, each upsampled first.
        logits = (fine[3] + fine[2] + fine[1] + fine[0]) / 4
        # Tracing (ONNX export) always takes the main-only graph; checking is_tracing() first also keeps the
        # TorchScript exporter, which passes the default ``False`` as a traced value, from warning about it.
        if torch.jit.is_tracing() or not return_aux:
            return logits

        coarse = [
            F.interpolate(getattr(self, f"predict{i}")(d), size=size, mode="bilinear", align_corners=False)
            for i, d in zip((4, 3, 2, 1), downs)
        ]
        rev = slice(None, None, -1)  # down4..down1 → down1..down4
        if return_aux != "all":
            return (logits, *coarse[rev], *fine[rev])
        return MSGAOutputs(
            logits=logits,
            sem_vectors_1=tuple(vec1),
            sem_vectors_2=tuple(vec2),
            sem_inputs=tuple(in1[rev] + in2[rev]),
            sem_outputs=tuple(sem1[rev] + sem2[rev]),
            coarse=tuple(coarse[rev]),
            fine=tuple(fine[rev]),
        )


def _official_init(m: nn.Module) -> None:
    """Official ``weights_init``: exact-type match on Conv2d/ConvTranspose2d (xavier-normal weight, bias left at
    PyTorch's default) and BatchNorm2d (weight N(1, 0.02), bias 0). PReLU stays 0.25, PAM/CAM gamma 0."""
    if type(m) in (nn.Conv2d, nn.ConvTranspose2d):
        nn.init.xavier_normal_(m.weight)
    elif type(m) is nn.BatchNorm2d:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------- registry entry point
@register_model(
    "msga",
    input_hw=(256, 256),
    in_channels=3,
    num_classes=1,
    size_divisor=32,
    output_activation="sigmoid",
    plugin_blocks=("PositionAttention", "ChannelAttention"),
    in_channels_key="resnext.layer0.0.weight",
    num_classes_key="predict1_2.weight",
    paper="Sinha & Dolz, IEEE JBHI 2020, arXiv 1906.02849",
    description="Multi-scale self-guided attention (DAF-stack), ResNeXt-101 32x8d encoder, PAM/CAM, 2 stages",
)
def msga(**kw) -> MSGANet:
    return MSGANet(**kw)

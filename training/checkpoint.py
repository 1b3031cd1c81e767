"""Checkpoints: load official and toolkit checkpoints into registered models; save ours atomically.

A toolkit checkpoint is a ``torch.save``\\ d dict::

    {"format": "polypseg-checkpoint", "version": 1, "model": "msnet_effl0", "spec": {...},
     "model_kwargs": {...}, "state_dict": {...}, ...training metadata (epoch, metrics, config)...}

Official checkpoints (a bare ``state_dict``, or a dict holding one under ``state_dict``/``model``/``net``) load as
well. Everything is read with ``torch.load(weights_only=True)``: no pickled code runs.

Named weights shipped with the toolkit live in ``training/weights/<alias>.pt`` and are found by alias, e.g.
``load_model("msnet_effl0", "msnet_effl0-kvasir")``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from common.errors import UserError
from common.io import write_bytes_atomic

from .models.registry import _SPECS, create_model, get_spec, list_models

__all__ = [
    "CheckpointError",
    "KNOWN_UNUSED_KEYS",
    "WEIGHTS_DIR",
    "extract_state_dict",
    "guess_model",
    "load_model",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

FORMAT = "polypseg-checkpoint"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Keys that official checkpoints carry for modules never used in forward(); dropped explicitly (and tested).
KNOWN_UNUSED_KEYS: tuple[str, ...] = ("resnet.fc.weight", "resnet.fc.bias")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the requested model."""


def resolve_checkpoint(ref: str | os.PathLike[str]) -> Path:
    """Turn a path or the alias of a shipped checkpoint into an existing file path."""
    p = Path(ref)
    if p.is_file():
        return p
    alias = WEIGHTS_DIR / f"{ref}.pt"
    if os.sep not in str(ref) and alias.is_file():
        return alias
    shipped = sorted(q.stem for q in WEIGHTS_DIR.glob("*.pt")) if WEIGHTS_DIR.is_dir() else []
    hint = f"; shipped checkpoints: {', '.join(shipped)}" if shipped else ""
    raise CheckpointError(f"checkpoint {str(ref)!r} not found: no such file and no shipped checkpoint of that name{hint}")


def read_checkpoint(ref: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Load a checkpoint file (or take an in-memory dict) safely with ``weights_only=True``."""
    if isinstance(ref, Mapping):
        return dict(ref)
    path = resolve_checkpoint(ref)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict or dict")
    return dict(obj)


def extract_state_dict(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint dict, with any DistributedDataParallel ``module.`` prefix removed."""
    sd: Any = ckpt
    for key in ("state_dict", "model_state_dict", "model", "net", "ema"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors (expected a state_dict)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _key_sets() -> dict[str, dict[str, tuple[int, ...]]]:
    """state_dict key → shape of every registered model at default arguments (built once, on demand)."""
    cache = getattr(_key_sets, "_cache", None)
    if cache is None:
        cache = {}
        for name in list_models():
            with torch.device("meta"):
                m = _SPECS[name].build()
            cache[name] = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        _key_sets._cache = cache  # type: ignore[attr-defined]
    return cache


def guess_model(state_dict: Mapping[str, torch.Tensor]) -> tuple[str | None, float]:
    """The registered model whose key set best matches ``state_dict`` (Jaccard similarity), and that score."""
    keys = {k for k in state_dict if k not in KNOWN_UNUSED_KEYS}
    best, score = None, 0.0
    for name, ref in _key_sets().items():
        s = len(keys & set(ref)) / max(1, len(keys | set(ref)))
        if s > score:
            best, score = name, s
    return best, score


def _infer_io(name: str, sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    spec = get_spec(name)
    kw: dict[str, int] = {}
    if spec.in_channels_key in sd and sd[spec.in_channels_key].dim() >= 2:
        kw["in_channels"] = int(sd[spec.in_channels_key].shape[1])
    if spec.num_classes_key in sd:
        kw["num_classes"] = int(sd[spec.num_classes_key].shape[0])
    return kw


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")


def load_model(
    name: str,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    eval_mode: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Build model ``name`` and load ``checkpoint`` into it with strict key and shape matching.

    Args:
        name: registered model name.
        checkpoint: a file path, the alias of a shipped checkpoint (``"msnet_effl0-kvasir"``), an official or
            toolkit checkpoint dict, or a bare state_dict. ``None`` returns the freshly built model.
        eval_mode: return the model in eval mode (default) rather than train mode.
        **overrides: builder keyword arguments. ``in_channels``/``num_classes`` are inferred from the checkpoint
            when not given; toolkit checkpoints also restore their recorded builder arguments.

    Raises:
        CheckpointError: unreadable file, a checkpoint of another model (named in the message), or missing,
            unexpected or mis-shaped keys (listed).
    """
    get_spec(name)  # unknown names fail first, listing the valid ones
    if checkpoint is None:
        model = create_model(name, **overrides)
        return model.eval() if eval_mode else model

    ckpt = read_checkpoint(checkpoint)
    src = "state_dict" if isinstance(checkpoint, Mapping) else str(checkpoint)
    if ckpt.get("format") == FORMAT and ckpt.get("model") not in (None, name):
        raise CheckpointError(
            f"checkpoint {src!r} is for model {ckpt['model']!r}, not {name!r}; "
            f"load it with load_model({ckpt['model']!r}, ...)"
        )
    sd = extract_state_dict(ckpt)
    dropped = [k for k in KNOWN_UNUSED_KEYS if k in sd]
    sd = {k: v for k, v in sd.items() if k not in KNOWN_UNUSED_KEYS}

    kwargs: dict[str, Any] = dict(ckpt.get("model_kwargs") or {}) if ckpt.get("format") == FORMAT else {}
    kwargs.pop("pretrained", None)  # the checkpoint replaces the ImageNet initialisation
    kwargs.update(_infer_io(name, sd))
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    try:
        model = create_model(name, **kwargs)
    except TypeError as e:  # a builder argument this version of the model does not take
        raise CheckpointError(f"checkpoint {src!r} records builder arguments {sorted(kwargs)} that {name!r} does not "
                              f"accept ({' '.join(str(e).split())}): it was written by another version of the "
                              "toolkit or edited; retrain or export from a checkpoint of this version") from None

    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape_bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shape_bad:
        guess, score = guess_model(sd)
        looks = (
            f"; it looks like a {guess!r} checkpoint ({score:.0%} of keys match)"
            if guess and guess != name and score > 0.5
            else ""
        )
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
        if shape_bad:
            parts.append(
                f"{len(shape_bad)} keys with other shapes: "
                + _short([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in shape_bad], 3)
            )
        raise CheckpointError(f"checkpoint {src!r} does not fit model {name!r}: " + "; ".join(parts) + looks)
    model.load_state_dict(sd, strict=True)
    model.checkpoint_info = {"source": src, "dropped_unused_keys": dropped}  # type: ignore[assignment]
    return model.eval() if eval_mode else model


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    name: str,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    half: bool = False,
    **extra: Any,
) -> Path:
    """Write a toolkit checkpoint atomically (temporary file + rename: never a half-written file).

    Args:
        path: destination ``.pt``.
        model: the model (a DDP wrapper is unwrapped).
        name: its registry name, recorded so that loading it into another model fails clearly.
        model_kwargs: builder arguments needed to rebuild it (``in_channels`` …).
        half: store floating-point tensors as float16 (half the size; loading casts back).
        **extra: metadata (epoch, metrics, config, optimizer state …).
    """
    module = model.module if hasattr(model, "module") else model
    sd = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    spec = getattr(module, "spec", None) or get_spec(name)
    payload = {
        "format": FORMAT,
        "version": 1,
        "model": name,
        "spec": spec.to_dict(),
        "model_kwargs": dict(model_kwargs or {}),
        "state_dict": sd,
        **extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(path, buf.getvalue(), fsync=True)

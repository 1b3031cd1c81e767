"""Helpers for the official checkpoint key lists (``shared/reference/official_state_dict_keys/*.tsv``)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Mapping

import torch


def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    """``key<TAB>shape`` lines → ordered {key: shape}."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            k, shape = line.split("\t")
            out[k] = tuple(ast.literal_eval(shape))
    return out


def fake_state_dict(ref: Mapping[str, tuple[int, ...]] | Iterable[tuple[str, tuple[int, ...]]]) -> dict:
    """A seeded state_dict with the official keys and shapes (positive running variances)."""
    items = ref.items() if isinstance(ref, Mapping) else ref
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, shape in items:
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    return sd

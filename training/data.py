"""Folder datasets of polyp images and masks, train augmentation and evaluation pre-processing.

Accepted layouts (``root`` is what ``--data`` points at):

* ``root/images/<id>.<ext>`` + ``root/masks/<id>.<ext>`` (Kvasir-SEG: JPEG masks; CVC-ClinicDB: PNG masks);
* PraNet's ``TrainDataset/{image,mask}`` and ``TestDataset/<name>/{images,masks}`` (``image``/``mask`` folder names
  are accepted as well as ``images``/``masks``);
* an optional split file: one id (file name with or without extension) per line.

Masks are binarised at ``> 127`` when read (JPEG masks carry compression artefacts). Images of any size are
accepted. A broken image, a missing mask or an image/mask size mismatch is reported by file name; ``on_error``
chooses between stopping (``"raise"``) and skipping with a warning (``"skip"``) — never silently.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common.errors import UserError

__all__ = [
    "DataError",
    "EvalDataset",
    "Sample",
    "TrainDataset",
    "find_pairs",
    "multiscale_collate",
    "normalise",
    "read_image",
    "read_mask",
]

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DataError(UserError, ValueError):
    """A dataset problem that names the offending file."""


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path | None


def _subdir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _index(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")}


def read_split(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"split file {str(p)!r} does not exist")
    ids = [Path(line.strip()).stem for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not ids:
        raise DataError(f"split file {str(p)!r} lists no ids")
    return ids


def find_pairs(
    root: str | Path, split: str | Path | None = None, *, require_masks: bool = True, on_error: str = "raise"
) -> list[Sample]:
    """Pair images with masks under ``root``.

    Args:
        root: dataset folder (see the module docstring for layouts).
        split: optional split file; only its ids are used, in its order.
        require_masks: a missing mask is an error (training, scoring) rather than ``mask=None``.
        on_error: ``"raise"`` stops at the first problem; ``"skip"`` logs a warning naming the file and skips it.

    Raises:
        DataError: naming the folder or file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist")
    if (root / "TrainDataset").is_dir() and not _subdir(root, ("images", "image")):
        root = root / "TrainDataset"
    img_dir = _subdir(root, ("images", "image", "Images"))
    if img_dir is None:
        raise DataError(f"no images/ (or image/) folder in {str(root)!r}; expected {root}/images and {root}/masks")
    mask_dir = _subdir(root, ("masks", "mask", "Masks", "GT", "gt"))
    if mask_dir is None and require_masks:
        raise DataError(f"no masks/ (or mask/) folder in {str(root)!r}")
    images = _index(img_dir)
    masks = _index(mask_dir) if mask_dir is not None else {}
    ids = read_split(split) if split is not None else sorted(images)
    out: list[Sample] = []
    for i in ids:
        if i not in images:
            _problem(f"image {i!r} listed in {split} not found in {img_dir}", on_error)
            continue
        m = masks.get(i)
        if m is None and require_masks:
            _problem(f"missing mask for {images[i].name} (looked in {mask_dir})", on_error)
            continue
        out.append(Sample(i, images[i], m))
    if not out:
        raise DataError(f"no usable image/mask pairs in {str(root)!r}" + (f" for split {split}" if split else ""))
    return out


def _problem(msg: str, on_error: str) -> None:
    if on_error == "raise":
        raise DataError(msg + " (use --on-error skip to skip such files)")
    if on_error != "skip":
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    log.warning("skipping: %s", msg)


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; raises :class:`DataError` naming the file when it cannot be decoded."""
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise DataError(f"cannot read image {str(path)!r}: missing, unreadable or not an image")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Binary uint8 {0, 1} [H, W] (threshold ``> 127``)."""
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DataError(f"cannot read mask {str(path)!r}: missing, unreadable or not an image")
    return (m > 127).astype(np.uint8)


def load_pair(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    img = read_image(s.image)
    if s.mask is None:
        raise DataError(f"no mask for {s.image.name}")
    mask = read_mask(s.mask)
    if img.shape[:2] != mask.shape:
        raise DataError(
            f"image/mask size mismatch for {s.image.name}: image {img.shape[1]}x{img.shape[0]}, "
            f"mask {mask.shape[1]}x{mask.shape[0]}"
        )
    return img, mask


def normalise(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB uint8 [H, W, 3] → float32 [3, H, W] with ``(x/255 − mean)/std``."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


class _Checked(Dataset):
    """Loads every pair once up front (reporting problems by file name) and keeps them resized in memory."""

    def __init__(self, samples: Sequence[Sample], on_error: str, size: tuple[int, int] | None) -> None:
        self.items: list[tuple[Sample, np.ndarray, np.ndarray]] = []
        for s in samples:
            try:
                img, mask = load_pair(s)
            except DataError as e:
                _problem(str(e), on_error)
                continue
            if size is not None:
                img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                mask = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            self.items.append((s, img, mask))
        if not self.items:
            raise DataError("every sample was skipped: nothing to train or evaluate on")

    def __len__(self) -> int:
        return len(self.items)


class TrainDataset(_Checked):
    """Training set with the seed recipe's augmentation.

    Each image is resized once to ``base_hw`` and cached; per sample: horizontal flip (p=0.5), vertical flip
    (p=``vflip``), rotation uniform in ±``rotate`` degrees (bilinear, zero border after normalisation = mean
    colour), optional colour jitter. :func:`multiscale_collate` then picks one size per batch. Masks are warped
    bilinearly and stay soft, as in the seed recipe.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        mean: Sequence[float],
        std: Sequence[float],
        base_hw: tuple[int, int] = (352, 352),
        rotate: float = 10.0,
        vflip: float = 0.0,
        color_jitter: float = 0.0,
        on_error: str = "raise",
    ) -> None:
        super().__init__(samples, on_error, base_hw)
        self.mean, self.std = tuple(mean), tuple(std)
        self.rotate, self.vflip, self.color_jitter = rotate, vflip, color_jitter

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, img, mask = self.items[i]
        img = img.astype(np.float32)
        mask = mask.astype(np.float32)
        if random.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        if self.vflip and random.random() < self.vflip:
            img, mask = img[::-1], mask[::-1]
        if self.color_jitter:
            j = self.color_jitter
            img = img * random.uniform(1 - j, 1 + j) + 255.0 * random.uniform(-j, j) / 2
            img = np.clip(img, 0, 255)
        x = normalise(img, self.mean, self.std).numpy().transpose(1, 2, 0)  # HWC float, normalised
        if self.rotate:
            h, w = mask.shape
            rot = cv2.getRotationMatrix2D((w / 2, h / 2), random.uniform(-self.rotate, self.rotate), 1.0)
            x = cv2.warpAffine(np.ascontiguousarray(x), rot, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
            mask = cv2.warpAffine(np.ascontiguousarray(mask), rot, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        x_t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
        m_t = torch.from_numpy(np.ascontiguousarray(mask))[None]
        return x_t, m_t


def multiscale_collate(sizes: Sequence[int]):
    """Collate function resizing each batch to one size drawn from ``sizes`` (bilinear; masks stay soft)."""

    def collate(batch):
        xs = torch.stack([b[0] for b in batch])
        ms = torch.stack([b[1] for b in batch])
        s = random.choice(list(sizes))
        if xs.shape[-1] != s or xs.shape[-2] != s:
            xs = F.interpolate(xs, size=(s, s), mode="bilinear", align_corners=False)
            ms = F.interpolate(ms, size=(s, s), mode="bilinear", align_corners=False)
        return xs, ms

    return collate


class EvalDataset(_Checked):
    """Evaluation set: the image resized to the model input, the mask at its original resolution.

    Items are ``(x [3, h, w] float32, mask [H, W] uint8 {0,1}, id)``. Use ``batch_size=1`` (masks differ in size).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        mean: Sequence[float],
        std: Sequence[float],
        input_hw: tuple[int, int],
        on_error: str = "raise",
    ) -> None:
        super().__init__(samples, on_error, None)
        self.mean, self.std, self.input_hw = tuple(mean), tuple(std), tuple(input_hw)
        self.inputs = [
            normalise(cv2.resize(img, (self.input_hw[1], self.input_hw[0]), interpolation=cv2.INTER_LINEAR), mean, std)
            for _, img, _ in self.items
        ]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray, str]:
        s, _, mask = self.items[i]
        return self.inputs[i], mask, s.id

    def image(self, i: int) -> np.ndarray:
        return self.items[i][1]


def epoch_sizes(native: int, fractions: Sequence[float] = (0.667, 0.778, 0.889, 1.0, 1.111)) -> list[int]:
    """Multi-scale training sizes around the native size, rounded to multiples of 32."""
    return sorted({max(32, int(math.floor(native * f / 32 + 0.5)) * 32) for f in fractions})

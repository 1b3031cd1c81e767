"""Folder datasets: layouts, split files, and problems reported by file name (stop or skip, never silent)."""

from __future__ import annotations

import logging
import shutil

import cv2
import numpy as np
import pytest
import torch

from training.data import DataError, EvalDataset, TrainDataset, epoch_sizes, find_pairs, multiscale_collate, read_mask

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def small_set(kvasir, tmp_path):
    """Five real Kvasir-SEG pairs copied into a scratch folder that the tests may damage."""
    ids = (kvasir / "splits" / "val.txt").read_text().split()[:5]
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in ids:
            shutil.copy(kvasir / sub / f"{i}.jpg", tmp_path / sub / f"{i}.jpg")
    return tmp_path, ids


def test_kvasir_official_split(kvasir):
    train = find_pairs(kvasir, kvasir / "splits" / "train.txt")
    val = find_pairs(kvasir, kvasir / "splits" / "val.txt")
    assert len(train) == 880 and len(val) == 120
    assert not {s.id for s in train} & {s.id for s in val}


def test_jpeg_masks_are_binarised(kvasir):
    s = find_pairs(kvasir, kvasir / "splits" / "val.txt")[0]
    raw = cv2.imread(str(s.mask), cv2.IMREAD_GRAYSCALE)
    assert len(np.unique(raw)) > 2, "the JPEG mask has compression artefacts"
    m = read_mask(s.mask)
    assert set(np.unique(m)) <= {0, 1}
    assert np.array_equal(m, (raw > 127).astype(np.uint8))


def test_cvc_png_clip_layout(data_dir):
    pairs = find_pairs(data_dir / "cvc-clinicdb-clips" / "seq01")
    assert len(pairs) == 25 and pairs[0].image.suffix == ".png"


def test_pranet_layout(small_set, tmp_path_factory):
    root, ids = small_set
    pranet = tmp_path_factory.mktemp("pranet")
    (pranet / "TrainDataset").mkdir()
    shutil.copytree(root / "images", pranet / "TrainDataset" / "image")
    shutil.copytree(root / "masks", pranet / "TrainDataset" / "mask")
    assert [s.id for s in find_pairs(pranet)] == sorted(ids)


def test_missing_folder_and_bad_split(small_set, tmp_path):
    root, ids = small_set
    with pytest.raises(DataError, match="does not exist"):
        find_pairs(root / "nope")
    split = tmp_path / "split.txt"
    split.write_text(f"{ids[0]}\nnot-an-id\n")
    with pytest.raises(DataError, match=r"image 'not-an-id' listed in .* not found"):
        find_pairs(root, split)
    assert [s.id for s in find_pairs(root, split, on_error="skip")] == [ids[0]]


def test_missing_mask_named(small_set, caplog):
    root, ids = small_set
    (root / "masks" / f"{ids[1]}.jpg").unlink()
    with pytest.raises(DataError, match=rf"missing mask for {ids[1]}\.jpg"):
        find_pairs(root)
    with caplog.at_level(logging.WARNING):
        pairs = find_pairs(root, on_error="skip")
    assert len(pairs) == 4 and ids[1] in caplog.text


def test_corrupt_image_and_size_mismatch_named(small_set, caplog):
    root, ids = small_set
    (root / "images" / f"{ids[0]}.jpg").write_bytes(b"\xff\xd8 truncated")
    m = cv2.imread(str(root / "masks" / f"{ids[2]}.jpg"))
    cv2.imwrite(str(root / "masks" / f"{ids[2]}.jpg"), m[:-7])
    pairs = find_pairs(root)
    with pytest.raises(DataError, match=rf"cannot read image .*{ids[0]}\.jpg"):
        EvalDataset(pairs, MEAN, STD, (64, 64))
    with caplog.at_level(logging.WARNING):
        ds = EvalDataset(pairs, MEAN, STD, (64, 64), on_error="skip")
    assert len(ds) == 3
    assert ids[0] in caplog.text and f"image/mask size mismatch for {ids[2]}.jpg" in caplog.text
    with pytest.raises(DataError, match="size mismatch"):
        TrainDataset(pairs[1:], MEAN, STD, (64, 64))


def test_eval_dataset_scores_at_original_resolution(small_set):
    root, _ = small_set
    ds = EvalDataset(find_pairs(root), MEAN, STD, (96, 128))
    x, mask, sid = ds[0]
    assert x.shape == (3, 96, 128) and x.dtype == torch.float32
    assert mask.shape == ds.image(0).shape[:2] and mask.shape != (96, 128)


def test_train_augmentation_and_multiscale_collate(small_set):
    root, _ = small_set
    ds = TrainDataset(find_pairs(root), MEAN, STD, (96, 96), rotate=10, vflip=0.5, color_jitter=0.1)
    x, m = ds[0]
    assert x.shape == (3, 96, 96) and m.shape == (1, 96, 96)
    assert 0 <= float(m.min()) and float(m.max()) <= 1
    collate = multiscale_collate([32, 64])
    seen = set()
    for _ in range(12):
        xb, mb = collate([ds[i] for i in range(3)])
        assert xb.shape[0] == 3 and xb.shape[-2:] == mb.shape[-2:]
        seen.add(xb.shape[-1])
    assert seen == {32, 64}
    assert epoch_sizes(288) == [192, 224, 256, 288, 320]
    assert epoch_sizes(352) == [224, 288, 320, 352, 384]

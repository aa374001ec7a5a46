import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tokenizer import DataConfig, DatasetError, DigitsDataset, ImageFolderDataset, build_datasets


def test_digits_split_is_fixed_and_disjoint():
    train, val = build_datasets(DataConfig(name="digits", image_size=16, val_fraction=0.1, seed=3))
    assert len(train) + len(val) == 1797 and len(val) == 180
    img, label = train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32 and 0 <= label <= 9
    assert img.min() >= -1 and img.max() <= 1 and torch.equal(img[0], img[1])
    again = DigitsDataset("val", image_size=16, val_fraction=0.1, seed=3)
    assert torch.equal(again.images, val.images)
    other = DigitsDataset("val", image_size=16, val_fraction=0.1, seed=4)
    assert not torch.equal(other.images, val.images)
    all_imgs = DigitsDataset("all", image_size=16).images.flatten(1)
    # train and val are disjoint and together are the whole set
    torch.testing.assert_close(torch.cat([train.images, val.images]).flatten(1).sum(0), all_imgs.sum(0))
    assert train.class_names == [str(d) for d in range(10)]


def make_folder(root, classes=("cat", "ant"), per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_imagefolder_classes_sorted_and_crops(tmp_path):
    root = make_folder(tmp_path / "imgs")
    ds = ImageFolderDataset(root, image_size=16, train=False)
    assert ds.class_names == ["ant", "cat"] and len(ds) == 6
    img, label = ds[0]
    assert img.shape == (3, 16, 16) and label == 0 and img.min() >= -1 and img.max() <= 1
    # eval crops are deterministic; non-square originals are fine
    assert torch.equal(ds[3][0], ds[3][0])
    train, val = build_datasets(DataConfig(name="imagefolder", root=str(root), image_size=16, val_fraction=0.34))
    assert len(train) + len(val) == 6 and len(val) == 2 and not val.train


def test_corrupt_image_skip_or_fail(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", classes=("a",), per_class=2)
    bad = root / "a" / "0.png"
    bad.write_bytes(b"\x89PNG truncated")
    ds = ImageFolderDataset(root, image_size=16, train=False, on_error="skip")
    with caplog.at_level(logging.WARNING):
        img, _ = ds[0]
    assert img.shape == (3, 16, 16)
    assert "0.png" in caplog.text and "skipping unreadable image" in caplog.text
    strict = ImageFolderDataset(root, image_size=16, train=False, on_error="fail")
    with pytest.raises(DatasetError, match=r"cannot read image .*a/0.png"):
        strict[0]


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found: .*nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DatasetError, match="no class folders in .*empty_root"):
        ImageFolderDataset(tmp_path / "empty_root")
    root = make_folder(tmp_path / "imgs", classes=("a",), per_class=1)
    (root / "b").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*imgs/b holds no images"):
        ImageFolderDataset(root)

import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tokenizer import DataConfig, DatasetError, DigitsDataset, ImageFolderDataset, build_datasets
from tokenizer.data import to_rgb


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


@pytest.mark.parametrize(
    "damage, reason",
    [("truncated", "cannot read image .*a/0.png"), ("bomb", "a/0.png: DecompressionBombError: Image size")],
)
def test_unreadable_image_skip_or_fail(tmp_path, caplog, monkeypatch, damage, reason):
    """A damaged file, and a decompression bomb: PIL's error for it is no OSError."""
    root = make_folder(tmp_path / "imgs", classes=("a",), per_class=2, size=(40, 30))
    bad = root / "a" / "0.png"
    if damage == "truncated":
        bad.write_bytes(b"\x89PNG truncated")
    else:
        Image.new("L", (60, 60)).save(bad)  # 3600 pixels, the others 1200
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above twice the limit
    ds = ImageFolderDataset(root, image_size=16, train=False, on_error="skip")
    with caplog.at_level(logging.WARNING):
        img, _ = ds[0]
    assert img.shape == (3, 16, 16)
    assert "skipping unreadable image" in caplog.text and len(caplog.records) == 1
    assert re.search(reason, caplog.text)
    strict = ImageFolderDataset(root, image_size=16, train=False, on_error="fail")
    with pytest.raises(DatasetError, match=reason):
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


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    """convert("RGB") made a full-range 16-bit gradient 99.6% white."""
    g = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(g).save(tmp_path / "imgs" / "a" / "grad.png")
    with Image.open(tmp_path / "imgs" / "a" / "grad.png") as im:
        assert im.mode == "I;16"
        rgb = np.asarray(to_rgb(im))
    expected = np.round(g / 257.0).astype(np.uint8)
    assert rgb.shape == (32, 32, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))
    ds = ImageFolderDataset(tmp_path / "imgs", image_size=32, train=False, mid_ratio=1.0)
    img = ds[0][0]
    assert (img >= 0.999).float().mean() < 0.01 and abs(img.mean().item()) < 0.05  # a gradient, not white
    # 32-bit integer greyscale (how older PIL opened 16-bit PNGs) and float images in [0, 1]
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(g.astype(np.int32), "I")))[..., 0], expected)
    f = Image.fromarray((g / 65535.0).astype(np.float32), "F")
    assert np.abs(np.asarray(to_rgb(f))[..., 0].astype(int) - expected).max() <= 1


def test_palette_with_per_entry_transparency_converts_without_a_warning(tmp_path, recwarn):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.save(tmp_path / "p.png", transparency=bytes([0, 128] + [255] * 254))  # alpha per palette entry
    with Image.open(tmp_path / "p.png") as im:
        assert isinstance(im.info["transparency"], bytes)
        assert np.asarray(to_rgb(im))[0, 0].tolist() == [0, 0, 255]
    assert not [w for w in recwarn if "Transparency" in str(w.message)]  # PIL warns on convert("RGB")


def test_read_rgb_applies_the_exif_orientation(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 was read sideways."""
    import numpy as np
    from PIL import Image

    from tokenizer.data import read_rgb

    arr = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high; left half red
    arr[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(arr).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    seen = np.asarray(read_rgb(tmp_path / "photo.jpg"))
    assert seen.shape == (40, 20, 3)  # upright: 20 wide, 40 high
    assert seen[:20, :, 0].mean() > 200 and seen[20:, :, 0].mean() < 50  # the red half is now on top

"""Image datasets (docs/architecture.md section 10): the bundled `digits`, the downloaded `emoji`
(tokenizer/emoji.py) and an ImageNet-layout `imagefolder`.

Every dataset yields `(img_3HW in [-1, 1], label)`. No torchvision: there is no CPU build of it for
every torch we support, and PIL does the little we need (resize, crop, flip).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from scaffold.errors import UserError

__all__ = [
    "DataConfig",
    "DatasetError",
    "DigitsDataset",
    "ImageFolderDataset",
    "build_datasets",
    "class_names",
    "read_rgb",
    "source_files",
    "to_rgb",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class DatasetError(UserError, RuntimeError):
    """A dataset that cannot be used: missing root, empty class folder, unreadable image."""


@dataclass
class DataConfig:
    name: str = "digits"  # "digits" | "emoji" | "imagefolder"
    root: str | None = None  # imagefolder: root/<class>/<image>; emoji: an unpacked package (else the cache's)
    val_root: str | None = None  # imagefolder: held-out images in the same layout; else split `root`
    image_size: int = 32
    val_fraction: float = 0.1  # held-out share when there is no separate validation folder
    seed: int = 0  # fixes the train/val split
    on_error: str = "skip"  # an unreadable image: "skip" (warn, take another) or "fail"
    hflip: bool = False  # random horizontal flips while training (not for digits)
    mid_ratio: float = 1.125  # imagefolder: resize the short side to mid_ratio*size, then crop

    def validate(self) -> None:
        if self.name not in ("digits", "emoji", "imagefolder"):
            raise ValueError(f"data.name must be 'digits', 'emoji' or 'imagefolder', got {self.name!r}")
        if self.name == "imagefolder" and not self.root:
            raise ValueError("data.root is required for data.name=imagefolder (root/<class>/<image>)")
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"data.on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be at least 8, got {self.image_size}")


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 real 8x8 handwritten digits, upscaled (bicubic) to `image_size`, 3 channels.

    Ink is bright on a dark background. The split is fixed by `seed`; no download.
    """

    CLASS_NAMES = tuple(str(d) for d in range(10))

    def __init__(self, split: str = "train", image_size: int = 32, val_fraction: float = 0.1, seed: int = 0):
        from sklearn.datasets import load_digits

        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div_(16.0)  # [N, 8, 8] in [0, 1]
        labels = torch.from_numpy(digits.target).long()
        if split != "all":
            train_idx, val_idx = _split(len(labels), val_fraction, seed)
            keep = torch.from_numpy(train_idx if split == "train" else val_idx)
            images, labels = images[keep], labels[keep]
        up = torch.nn.functional.interpolate(images[:, None], size=(image_size, image_size), mode="bicubic")
        self.images = up.clamp_(0, 1).mul_(2).sub_(1).expand(-1, 3, -1, -1).contiguous()  # [N, 3, S, S]
        self.labels = labels
        self.class_names = list(self.CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def to_rgb(im: Image.Image) -> Image.Image:
    """`im` as 8-bit RGB, every mode scaled to the full range rather than clipped.

    `convert("RGB")` clips 16-bit greyscale (modes I;16*, and I, which PIL uses for 16-bit PNGs) at 255,
    which turns all but the darkest 0.4% of the range white: it is scaled by 255/65535 here. Float
    images (mode F, e.g. TIFF) are taken to lie in [0, 1]. A palette with a transparent entry goes
    through RGBA first, as PIL asks; transparency is then dropped like every other alpha channel.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.float64).clip(0, 65535) / 257.0
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64).clip(0.0, 1.0) * 255.0
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    if im.mode == "PA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    return im.convert("RGB")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode the image file `path` as 8-bit RGB (`to_rgb`); any decoder failure is a DatasetError naming the file.

    PIL raises many kinds of error on a damaged or hostile file (OSError, SyntaxError, EOFError,
    ValueError, struct.error, and `DecompressionBombError` - not an OSError - for an image of more than
    twice `Image.MAX_IMAGE_PIXELS` pixels): all mean "this file cannot be used".
    """
    try:
        with Image.open(path) as im:
            # A camera's EXIF orientation is how the picture is meant to be seen: applied, then dropped.
            return to_rgb(ImageOps.exif_transpose(im))
    except Exception as err:
        text = str(err).splitlines()[0] if str(err) else "no details"
        raise DatasetError(f"cannot read image {path}: {type(err).__name__}: {text}") from err


def _list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root} (expected root/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders in {root} (expected root/<class>/<image>)")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DatasetError(f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((p, label) for p in files)
    return classes, samples


class ImageFolderDataset(Dataset):
    """`root/<class>/<image>` (ImageNet layout); classes sorted by folder name.

    Training: resize the short side to `mid_ratio * size` (Lanczos), random crop, optional flip -
    the published VAR recipe. Evaluation: the same resize and a centre crop.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 256,
        train: bool = True,
        hflip: bool = False,
        mid_ratio: float = 1.125,
        on_error: str = "skip",
        indices: np.ndarray | None = None,
        listing: tuple[list[str], list[tuple[Path, int]]] | None = None,
    ):
        self.root = Path(root)
        # `listing` lets a caller that already walked the folder (train/val split) skip a second walk.
        self.class_names, samples = listing or _list_image_folder(self.root)
        self.samples = samples if indices is None else [samples[i] for i in indices]
        if not self.samples:
            raise DatasetError(f"no images selected from {self.root}")
        self.image_size, self.train, self.hflip = image_size, train, hflip
        self.mid_size = max(image_size, round(mid_ratio * image_size))
        self.on_error = on_error
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def source_files(self) -> list[Path]:
        """The image files of this split."""
        return [p for p, _ in self.samples]

    def load(self, i: int) -> torch.Tensor:
        im = read_rgb(self.samples[i][0])
        w, h = im.size
        s = self.mid_size / min(w, h)
        im = im.resize((max(self.mid_size, round(w * s)), max(self.mid_size, round(h * s))), Image.LANCZOS)
        w, h = im.size
        size = self.image_size
        if self.train:
            left, top = random.randint(0, w - size), random.randint(0, h - size)
        else:
            left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        if self.train and self.hflip and random.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())  # [S, S, 3]
        return arr.permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        for attempt in range(len(self.samples)):
            j = (i + attempt) % len(self.samples)
            if j in self._bad:
                continue
            try:
                return self.load(j), self.samples[j][1]
            except DatasetError as err:
                if self.on_error == "fail":
                    raise
                self._bad.add(j)
                log.warning("skipping unreadable image (data.on_error=skip): %s", err)
        raise DatasetError(f"no readable image left in {self.root}")


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """(train, val) datasets of a config; `val` is held out by `cfg.seed` unless `val_root` is set."""
    cfg.validate()
    if cfg.name == "digits":
        kw = dict(image_size=cfg.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed)
        return DigitsDataset("train", **kw), DigitsDataset("val", **kw)
    if cfg.name == "emoji":
        from .emoji import EmojiDataset

        if cfg.hflip:
            raise DatasetError("data.hflip=true is refused for the emoji: flags and text do not survive a mirror")
        kw = dict(image_size=cfg.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed, root=cfg.root)
        return EmojiDataset("train", **kw), EmojiDataset("val", **kw)
    kw = dict(image_size=cfg.image_size, hflip=cfg.hflip, mid_ratio=cfg.mid_ratio, on_error=cfg.on_error)
    if cfg.val_root:
        return ImageFolderDataset(cfg.root, train=True, **kw), ImageFolderDataset(cfg.val_root, train=False, **kw)
    listing = _list_image_folder(Path(cfg.root))
    n = len(listing[1])
    train_idx, val_idx = _split(n, cfg.val_fraction, cfg.seed)
    if len(val_idx) == 0:
        raise DatasetError(f"{cfg.root}: {n} images leave no held-out image at val_fraction={cfg.val_fraction}")
    return (
        ImageFolderDataset(cfg.root, train=True, indices=train_idx, listing=listing, **kw),
        ImageFolderDataset(cfg.root, train=False, indices=val_idx, listing=listing, **kw),
    )


def source_files(dataset: Dataset) -> list[Path] | None:
    """The files a dataset's images are read from, as its `source_files()` lists them (None for the bundled
    digits, which are part of the code)."""
    listing = getattr(dataset, "source_files", None)
    return listing() if listing is not None else None


def class_names(dataset: Dataset) -> list[str]:
    names = getattr(dataset, "class_names", None)
    if names is None:
        raise DatasetError(f"{type(dataset).__name__} has no class names")
    return list(names)

"""The `emoji` dataset: Google's Noto emoji at 64 px, from the npm package `emoji-datasource-google` 16.0.0.

The package (MIT; the images are Apache-2.0, Google's Noto Emoji) holds 64x64 RGBA PNGs under
`img/google/64/` and `emoji.json`, which gives each emoji its category and its skin-tone variants.
Classes are the nine categories below ("Component", the bare skin-tone swatches, is skipped).

Fetching: at first use the published tarball is downloaded with Python's own HTTP, checked against the
package's published sha512 integrity, and the few files used (emoji.json, the 64 px images, the licence,
package.json) are unpacked into `$VAR_CACHE/emoji-16.0.0` (`VAR_CACHE` defaults to `~/.cache/var`)
through a temporary folder renamed into place. A `MANIFEST.json` written last lists every file and its
size; a cache folder without it, or with a file missing or of another size, is redone, never used. A
lock file keeps two processes from unpacking at once. `data.root=` may point at an unpacked copy
instead (the package folder, or the folder holding `package/`).

Split: by emoji, so every skin-tone variant of one emoji is on the same side. Within each category
the emoji are ranked by a hash of their code point sequence and the seed, and the first
`val_fraction` of them (at least one) are held out: deterministic, independent of file order, and a
held-out emoji never trains either stage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from scaffold.errors import UserError
from scaffold.io import fsync_folder, remove_stale_temporaries, temporary_path, write_atomic
from scaffold.lock import folder_lock

__all__ = [
    "CATEGORIES",
    "EmojiDataset",
    "EmojiError",
    "EmojiImage",
    "cache_root",
    "emoji_root",
    "ensure_emoji",
    "list_emoji",
    "split_emoji",
]

log = logging.getLogger(__name__)

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
TARBALL_NAME = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/{TARBALL_NAME}"
# The registry's `dist.integrity` of that version (Subresource Integrity form: sha512, base64).
INTEGRITY = "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
IMAGE_DIR = "img/google/64"
KEPT_FILES = ("emoji.json", "LICENSE", "package.json")  # beside the images; LICENSE travels with the copy
MANIFEST = "MANIFEST.json"

CATEGORIES = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)


class EmojiError(UserError, RuntimeError):
    """The emoji package cannot be had or used: offline, a failed integrity check, a broken copy."""


# --------------------------------------------------------------------------------------- the cache
def cache_root() -> Path:
    """`$VAR_CACHE`, or `~/.cache/var`: where downloaded data sets are kept."""
    return Path(os.environ.get("VAR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "var"))


def _by_hand(cache: Path) -> str:
    return (
        f"fetch {TARBALL_URL} on a machine that can, and place it as {cache / TARBALL_NAME} "
        f"(it is checked and unpacked at the next run), or unpack it and pass data.root=<the unpacked package folder>"
    )


def _integrity_of(path: Path) -> str:
    h = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def _download(url: str, dest: Path, cache: Path) -> None:
    log.info("downloading %s", url)
    print(f"[emoji] downloading {url} (74 MB, once; unpacked into {cache})", flush=True)
    tmp = temporary_path(dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, tmp.open("wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        os.replace(tmp, dest)
        fsync_folder(dest.parent)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise EmojiError(f"cannot download the emoji package ({reason}); {_by_hand(cache)}") from None


def _unpack(tarball: Path, dest: Path) -> None:
    """The kept members of `tarball` into a fresh `dest`: regular files only, each written by us under a
    name we build (no member chooses its own path), then the manifest, last."""
    sizes: dict[str, int] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for m in tar:
            name = m.name.removeprefix("package/")
            keep = name in KEPT_FILES or (
                os.path.dirname(name) == IMAGE_DIR and name.endswith(".png") and "/" not in os.path.basename(name)
            )
            if not keep or not m.isfile() or ".." in name.split("/"):
                continue
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, out.open("wb") as f:
                shutil.copyfileobj(src, f)
            sizes[name] = m.size
    missing = [f for f in KEPT_FILES if f not in sizes]
    if missing or not any(n.startswith(IMAGE_DIR) for n in sizes):
        raise EmojiError(f"{tarball} is not the {PACKAGE} package: it lacks {missing or [IMAGE_DIR]}")
    write_atomic(dest / MANIFEST, json.dumps({"package": PACKAGE, "version": VERSION, "files": sizes}, indent=0))


def _complete(folder: Path) -> bool:
    """Whether `folder` is a whole unpacked copy: its manifest, and every file it lists at its size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        return manifest.get("version") == VERSION and all((folder / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_emoji(cache: str | os.PathLike | None = None, url: str | None = None) -> Path:
    """The unpacked package folder in the cache, downloaded (from `url`, default the registry's) and
    checked and unpacked first if need be."""
    cache = Path(cache) if cache is not None else cache_root()
    url = url or TARBALL_URL
    dest = cache / f"emoji-{VERSION}"
    if _complete(dest):
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with folder_lock(cache, cache / f".emoji-{VERSION}.lock", wait=True):
        if _complete(dest):  # another process finished it while we waited for the lock
            return dest
        remove_stale_temporaries(cache)  # a download or unpacking that a kill cut short
        tarball = cache / TARBALL_NAME
        if not tarball.is_file():
            _download(url, tarball, cache)
        got = _integrity_of(tarball)
        if got != INTEGRITY:
            bad = tarball.with_name(tarball.name + ".bad")
            os.replace(tarball, bad)
            raise EmojiError(
                f"{tarball} failed its integrity check (expected {INTEGRITY[:23]}..., got {got[:23]}...; "
                f"moved to {bad.name}); {_by_hand(cache)}"
            )
        tmp = temporary_path(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _unpack(tarball, tmp)
            if dest.exists():  # a partial or corrupt copy: set aside, then removed once the new one is in
                old = temporary_path(dest, ".old")
                os.replace(dest, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, dest)
            fsync_folder(cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        tarball.unlink()  # 74 MB, of which the unpacked copy keeps what is used
        print(f"[emoji] unpacked into {dest}", flush=True)
    return dest


def emoji_root(root: str | os.PathLike | None = None) -> Path:
    """The package folder to read: `root` (the package folder or the folder holding `package/`), or the cache's."""
    if root is None:
        return ensure_emoji()
    root = Path(root).expanduser()
    for candidate in (root, root / "package"):
        if (candidate / "emoji.json").is_file() and (candidate / IMAGE_DIR).is_dir():
            return candidate
    raise EmojiError(
        f"data.root={root} is not an unpacked {PACKAGE} package: expected emoji.json and {IMAGE_DIR}/ in it"
    )


# -------------------------------------------------------------------------------- listing, split
@dataclass(frozen=True)
class EmojiImage:
    file: str  # under IMAGE_DIR
    emoji: str  # the base emoji's code points ("1F385"): every skin variant shares it
    label: int  # index into CATEGORIES


def list_emoji(root: Path) -> list[EmojiImage]:
    """Every image of the nine categories, skin-tone variants included, in emoji.json's order."""
    path = root / "emoji.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EmojiError(f"cannot read {path}: {err}") from None
    if not isinstance(entries, list):
        raise EmojiError(f"{path}: expected a list of emoji, got {type(entries).__name__}")
    images: list[EmojiImage] = []
    for i, e in enumerate(entries):
        try:
            category, base = e["category"], e["unified"]
            if category == "Component":
                continue
            if category not in CATEGORIES:
                raise EmojiError(f"{path}: emoji {i} ({base}) has unknown category {category!r}")
            variants = [e, *(e.get("skin_variations") or {}).values()]
            images += [
                EmojiImage(v["image"], base, CATEGORIES.index(category)) for v in variants if v.get("has_img_google")
            ]
        except (KeyError, TypeError, AttributeError) as err:
            raise EmojiError(f"{path}: emoji {i} lacks {err} (expected category, unified, image)") from None
    if not images:
        raise EmojiError(f"{path} lists no Google emoji image")
    return images


def _rank(emoji: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{emoji}".encode()).digest()[:8], "big")


def split_emoji(images: list[EmojiImage], val_fraction: float, seed: int) -> tuple[list[EmojiImage], list[EmojiImage]]:
    """(train, val) by emoji: in each category the `val_fraction` of emoji (at least one where the category
    has two or more) ranked first by `_rank` are held out, with all their variants."""
    held: set[str] = set()
    for label in range(len(CATEGORIES)):
        emoji = sorted({im.emoji for im in images if im.label == label}, key=lambda e: _rank(e, seed))
        if val_fraction > 0 and len(emoji) >= 2:
            held.update(emoji[: max(1, round(len(emoji) * val_fraction))])
    return [im for im in images if im.emoji not in held], [im for im in images if im.emoji in held]


def _read_on_white(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            rgba = im.convert("RGBA")
    except Exception as err:
        raise EmojiError(f"cannot read emoji image {path}: {type(err).__name__}: {err}") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


class EmojiDataset(Dataset):
    """The emoji of one split as `(img_3HW in [-1, 1], category)`, composited on white, all decoded at once.

    `images` [N, 3, S, S] (float, [-1, 1]), `labels` [N], `emoji` (the base emoji of each image) and
    `class_names` (the nine categories) are attributes, as with `DigitsDataset`.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        root: str | os.PathLike | None = None,
    ):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.root = emoji_root(root)
        listed = list_emoji(self.root)
        if split != "all":
            train, val = split_emoji(listed, val_fraction, seed)
            listed = train if split == "train" else val
            if not listed:
                raise EmojiError(f"{self.root}: the {split} split is empty (val_fraction={val_fraction})")
        folder = self.root / IMAGE_DIR
        arr = np.stack([_read_on_white(folder / im.file, image_size) for im in listed])  # [N, S, S, 3]
        self.images = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
        self.labels = torch.tensor([im.label for im in listed], dtype=torch.long)
        self.emoji = [im.emoji for im in listed]
        self.files = [im.file for im in listed]
        self.class_names = list(CATEGORIES)

    def __len__(self) -> int:
        return len(self.labels)

    def source_files(self) -> list[Path]:
        """The files this split is read from: `emoji.json` (the categories) and the split's images."""
        return [self.root / "emoji.json", *(self.root / IMAGE_DIR / f for f in self.files)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

"""A token cache: a dataset encoded once by a trained tokenizer, `var tokenize --config FILE key=value ...`.

The published recipe trains the transformer from cached indices (docs/architecture.md section 9): the CNN encoder
is most of the cost of a step and its output never changes. A cache is a folder::

    DIR/tokens.npy     int16 (V <= 32767) or int32 [rows, L]: every scale's indices, coarse to fine, concatenated
    DIR/labels.npy     int32 [rows]: the class of each row
    DIR/header.yaml    CacheHeader: vocab_size, patch_nums, the tokenizer's identity, images, views, class names,
                       and a digest of the image files read (their names, sizes and modification times)

Row `i * views + v` is view `v` of image `i`. View 0 is the plain (centre-cropped) image; views >= 1 are
random crops and flips (imagefolder only) drawn from a generator seeded by (seed, image, view), so a view
is the same whichever run or chunk writes it. Writing goes to `DIR/.partial/` in chunks, with the number
of finished images recorded after each; a rerun with the same settings continues there, and the finished
folder appears by one rename. `header.yaml` is written last: its presence means the cache is complete.
The space of both arrays is reserved before the first image is encoded, so a full disk is one line naming
the file, not a SIGBUS from a memory map written past the end of the disk. Adding, removing or changing an
image under `data.root` changes the digest: the cache is then refused as stale, not reused.
Training reads only this folder (memory-mapped), never the images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from kernels import ScaleLayout
from scaffold.config import add_config_arguments, config_to_dict, load_config
from scaffold.errors import UserError
from scaffold.io import fsync_folder, remove_stale_temporaries, user_error_for, write_atomic
from scaffold.lock import folder_lock
from tokenizer import DataConfig, MultiScaleVQVAE, build_datasets, load_official_vae, load_tokenizer
from tokenizer.data import class_names as dataset_class_names
from tokenizer.data import source_files

__all__ = [
    "CacheHeader",
    "TokenCache",
    "TokenCacheError",
    "TokenizeConfig",
    "add_arguments",
    "load_vae",
    "read_header",
    "run",
    "tokenize",
    "tokenizer_identity",
]

log = logging.getLogger(__name__)

TOKENS, LABELS, HEADER, PARTIAL, PROGRESS = "tokens.npy", "labels.npy", "header.yaml", ".partial", "progress.json"


class TokenCacheError(UserError, RuntimeError):
    """A token cache that is missing, incomplete, or made by another tokenizer than the one in use."""


@dataclass
class TokenizeConfig:
    tokenizer: str = "runs/tokenizer/tokenizer"  # an exported tokenizer folder, or "hub" for the published VAE
    data: DataConfig = field(default_factory=lambda: DataConfig(name="digits", image_size=16))
    split: str = "train"  # "train" or "val" of build_datasets(data)
    out_dir: str = "runs/tokens"
    views: int = 1  # views per image: view 0 centre crop, the others random crops (+ flips with data.hflip)
    batch_size: int = 64  # images per encoder call
    chunk: int = 1024  # images between progress records (a rerun continues from the last one)
    max_images: int = 0  # 0: all; else the first max_images images (smoke runs, tests)
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1"
    seed: int = 0

    def validate(self) -> None:
        if self.split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {self.split!r}")
        if self.views < 1 or self.batch_size < 1 or self.chunk < 1 or self.max_images < 0:
            raise ValueError("views, batch_size and chunk must be >= 1, max_images >= 0")
        if self.views > 1 and self.data.name != "imagefolder":
            raise ValueError(f"views > 1 needs data.name=imagefolder: the {self.data.name} have no random crops")


@dataclass
class CacheHeader:
    vocab_size: int
    patch_nums: tuple[int, ...]
    tokenizer_id: str  # tokenizer_identity() of the tokenizer that wrote it
    tokenizer: str  # where it was loaded from (informative)
    num_images: int
    views: int
    class_names: list[str]
    dtype: str  # "int16" or "int32"
    data: dict  # the DataConfig, for the record
    split: str = "train"
    data_files: str = ""  # files_digest() of the images read ("" for the bundled digits)

    @property
    def rows(self) -> int:
        return self.num_images * self.views

    @property
    def num_tokens(self) -> int:
        return ScaleLayout.of(self.patch_nums).num_tokens


def read_header(path: Path) -> CacheHeader:
    """The `CacheHeader` written at `path`."""
    raw = OmegaConf.to_container(OmegaConf.load(path))
    raw["patch_nums"] = tuple(raw["patch_nums"])
    return CacheHeader(**raw)


def tokenizer_identity(vae: MultiScaleVQVAE) -> str:
    """A short sha256 of the tokenizer's config and weights: two caches compare equal only if made by the same one."""
    h = hashlib.sha256(json.dumps(config_to_dict(vae.config), sort_keys=True).encode())
    for key, value in sorted(vae.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def files_digest(files: list[Path] | None) -> str:
    """A short sha256 of the sorted (path, size, modification time) of `files`; "" for None.

    A file that cannot be read is named (it was listed a moment ago: removed while we looked)."""
    if files is None:
        return ""
    h = hashlib.sha256()
    for path in sorted(files):
        try:
            st = path.stat()
        except OSError as err:
            raise TokenCacheError(f"cannot read {path}: {os.strerror(err.errno or 0)}") from None
        h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return f"{len(files)}:{h.hexdigest()[:16]}"


def _differences(have: CacheHeader, want: CacheHeader) -> str:
    """What makes a finished cache another one than `want`, in words."""
    a, b = asdict(have), asdict(want)
    keys = [k for k in b if k != "tokenizer" and a.get(k) != b[k]]
    said = {
        "tokenizer_id": "another tokenizer",
        "data_files": "the image files changed since it was made (added, removed or modified)"
        if have.data_files
        else "made by an older version, which did not record its image files",
        "data": "other data settings",
        "num_images": f"{b['num_images']} images to encode where it holds {a['num_images']}",
    }
    return ", ".join(said.get(k, f"another {k}") for k in keys) or "other settings"


def _reserve(path: Path) -> None:
    """Allocate the whole of a freshly created (sparse) array file on disk, or raise DiskFullError naming it."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        raise user_error_for(err, path) from None
    finally:
        os.close(fd)


def _finish(partial: Path, out: Path) -> None:
    """Move the finished files of `partial` into `out`, the header last, then drop the progress record: a kill
    at any point leaves either the header in `partial` (the next run finishes the moves) or a complete cache."""
    for name in (TOKENS, LABELS, HEADER):
        if (partial / name).exists():
            os.replace(partial / name, out / name)
            fsync_folder(out)  # each rename on disk before the next: the header last there too
    (partial / PROGRESS).unlink(missing_ok=True)
    remove_stale_temporaries(partial)
    partial.rmdir()


def load_vae(source: str) -> MultiScaleVQVAE:
    """`hub` (the published VAE) or an exported tokenizer folder; eval mode, frozen, on the CPU."""
    if source in ("hub", "official"):
        return load_official_vae("hub")
    return load_tokenizer(source).requires_grad_(False)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32)


# ------------------------------------------------------------------------------------------ reading
class TokenCache(Dataset):
    """A finished cache, memory-mapped: item `i` is (indices LongTensor [L], label). Opened lazily per process."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header = self.path / HEADER
        if not header.is_file():
            hint = " (an interrupted `var tokenize`: rerun it to finish)" if (self.path / PARTIAL).is_dir() else ""
            raise TokenCacheError(
                f"token cache not found: {self.path} has no {HEADER}{hint}; make one with `var tokenize`"
            )
        self.header = read_header(header)
        self._tokens: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _open(self) -> None:
        if self._tokens is None:
            self._tokens = np.load(self.path / TOKENS, mmap_mode="r")
            self._labels = np.load(self.path / LABELS, mmap_mode="r")
            if self._tokens.shape != (self.header.rows, self.header.num_tokens):
                raise TokenCacheError(
                    f"{self.path / TOKENS} has shape {self._tokens.shape}, header says "
                    f"({self.header.rows}, {self.header.num_tokens}): the cache is damaged, make it again"
                )

    def __getstate__(self):  # DataLoader workers open their own maps
        return {**self.__dict__, "_tokens": None, "_labels": None}

    @property
    def tokens(self) -> np.ndarray:
        self._open()
        return self._tokens

    @property
    def labels(self) -> np.ndarray:
        self._open()
        return self._labels

    def __len__(self) -> int:
        return self.header.rows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.tokens[i].astype(np.int64)), int(self.labels[i])

    def split_scales(self, idx_BL: torch.Tensor) -> list[torch.Tensor]:
        """[B, L] -> list over scales of [B, pn*pn] (the tokenizer's `idx_Bl` layout)."""
        return ScaleLayout.of(self.header.patch_nums).split(idx_BL)


# ------------------------------------------------------------------------------------------ writing
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_view(dataset: Dataset, i: int, view: int, seed: int) -> tuple[torch.Tensor, int]:
    """View `view` of image `i`: a function of (seed, i, view) only (the image datasets draw from `random`)."""
    if getattr(dataset, "load", None) is None:  # digits: fixed images
        return dataset[i]
    dataset.train = view > 0  # view 0: the deterministic centre crop
    state = random.getstate()
    random.seed(f"{seed}/{i}/{view}")
    try:
        return dataset[i]
    finally:
        random.setstate(state)


@torch.no_grad()
def tokenize(cfg: TokenizeConfig, vae: MultiScaleVQVAE | None = None, stop_after_chunks: int | None = None) -> Path:
    """Write (or finish) the cache of `cfg` in `cfg.out_dir`; returns that folder.

    `vae` replaces loading `cfg.tokenizer` (tests); `stop_after_chunks` stops early as an interruption would.
    """
    out = Path(cfg.out_dir)
    vae = vae if vae is not None else load_vae(cfg.tokenizer)
    if cfg.data.image_size != vae.image_size:
        raise TokenCacheError(
            f"data.image_size={cfg.data.image_size} but the tokenizer takes {vae.image_size} px images"
        )
    train_set, val_set = build_datasets(cfg.data)
    dataset = train_set if cfg.split == "train" else val_set
    n = min(len(dataset), cfg.max_images) if cfg.max_images else len(dataset)
    views, L = cfg.views, ScaleLayout.of(vae.patch_nums).num_tokens
    dtype = token_dtype(vae.vocab_size)
    header = CacheHeader(
        vocab_size=vae.vocab_size,
        patch_nums=tuple(vae.patch_nums),
        tokenizer_id=tokenizer_identity(vae),
        tokenizer=str(cfg.tokenizer),
        num_images=n,
        views=views,
        class_names=dataset_class_names(dataset),
        dtype=dtype.name,
        data=config_to_dict(cfg.data),
        split=cfg.split,
        data_files=files_digest(source_files(dataset)),
    )
    with folder_lock(out):  # one writer at a time, gone with its process (kill -9 included)
        if (out / HEADER).is_file():
            done = TokenCache(out).header
            if asdict(done) == asdict(header):
                log.info("token cache %s is complete already", out)
                return out
            raise TokenCacheError(
                f"{out} holds another token cache ({_differences(done, header)}): choose another out_dir, "
                "or remove it to make it again"
            )

        partial = out / PARTIAL
        # every image was encoded and a kill came while moving the files out: finish the moves
        if (partial / HEADER).is_file() and asdict(read_header(partial / HEADER)) == asdict(header):
            _finish(partial, out)
            return out
        fingerprint = {**config_to_dict(header), "seed": cfg.seed}
        progress_file = partial / PROGRESS
        remove_stale_temporaries(partial)  # a progress or header write cut short by a kill
        start = 0
        if progress_file.is_file():
            progress = json.loads(progress_file.read_text())
            if progress.get("fingerprint") == fingerprint:
                start = int(progress["images_done"])
                log.info("continuing the interrupted token cache %s at image %d of %d", out, start, n)
            else:
                log.warning("%s holds an unfinished cache of other settings: starting over", partial)
        if start == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            np.lib.format.open_memmap(partial / TOKENS, mode="w+", dtype=dtype, shape=(n * views, L)).flush()
            np.lib.format.open_memmap(partial / LABELS, mode="w+", dtype=np.int32, shape=(n * views,)).flush()
            for name in (TOKENS, LABELS):
                _reserve(partial / name)
            write_atomic(progress_file, json.dumps({"fingerprint": fingerprint, "images_done": 0}))

        device = _device(cfg.device)
        vae = vae.to(device).eval()
        tokens = np.load(partial / TOKENS, mmap_mode="r+")
        labels = np.load(partial / LABELS, mmap_mode="r+")
        for chunks, c0 in enumerate(range(start, n, cfg.chunk), start=1):
            c1 = min(n, c0 + cfg.chunk)
            items = [(i, v) for i in range(c0, c1) for v in range(views)]  # row order: image-major
            for b0 in range(0, len(items), cfg.batch_size):
                batch = items[b0 : b0 + cfg.batch_size]
                loaded = [_load_view(dataset, i, v, cfg.seed) for i, v in batch]
                img = torch.stack([x for x, _ in loaded]).to(device)
                idx_BL = torch.cat(vae.img_to_idx(img), dim=1)  # [B, L]
                rows = [i * views + v for i, v in batch]
                tokens[rows[0] : rows[-1] + 1] = idx_BL.cpu().numpy().astype(dtype)
                labels[rows[0] : rows[-1] + 1] = np.array([y for _, y in loaded], dtype=np.int32)
            tokens.flush()
            labels.flush()
            write_atomic(progress_file, json.dumps({"fingerprint": fingerprint, "images_done": c1}))
            log.info("tokenized %d / %d images", c1, n)
            if stop_after_chunks is not None and chunks >= stop_after_chunks and c1 < n:
                return partial
        del tokens, labels
        write_atomic(partial / HEADER, OmegaConf.to_yaml(config_to_dict(header)))
        # The finished files move out of .partial/ and the header comes last: a cache with a header is complete.
        _finish(partial, out)
        return out


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(TokenizeConfig, args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = tokenize(cfg)
    header = TokenCache(out).header
    print(f"token cache written to {out}: {header.rows} rows of {header.num_tokens} tokens ({header.dtype})")
    return 0

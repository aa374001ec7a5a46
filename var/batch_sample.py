"""`var sample`: class-conditional images in batches, as PNG folders and an `.npz` (docs/architecture.md
section 1).

Output::

    OUT/<class>/<index>.png    one image per (class, index), written atomically (scaffold.io)
    OUT/sampling.json          what the folder was made with: the SHA-256s of the model's and the
                               tokenizer's weights and the sampling settings (a rerun with others is refused)
    OUT.npz                    arr_0 uint8 [N, H, W, 3], arr_1 int64 [N]: the ADM evaluator's format,
                               class-major then index order, written atomically once every image exists

Seeding rule: image (class c, index i) is drawn with its own generator seeded by :func:`image_seed`
``(seed, c, i)`` (63 bits of a BLAKE2b hash), through :func:`var.sample.generate`'s per-image seeds, and
decoded from its tokens alone by the sampler's :func:`var.sample.decode`. Its bytes therefore are those of
``sample(model, vae, [c], settings, seed=[image_seed(seed, c, i)])`` and depend on the global seed, the
class, the index, the sampling settings and the device's arithmetic, never on the batch size, the number
of processes, or where an interrupted run resumed.

Lock: the process writing OUT (rank 0) holds ``OUT/.lock`` (scaffold.lock) from the check of its record
to the end of OUT.npz; a second `var sample` into OUT exits 2 naming it, and the lock ends with the
process (kill -9 included).

Resume: an image whose PNG exists is skipped; the settings are validated, and the folder's record
compared with the model, before anything is written. Temporaries that a killed run left behind
(``.N.png.tmp-PID``, ``.OUT.npz.tmp-PID``) are removed when the next run starts.

Several GPUs: ``torchrun --nproc-per-node N -m app sample ...``; process ``rank`` takes every
``world_size``-th (class, index) pair of the full list, rank 0 waits for the others (a barrier, or by
watching the files) and writes the `.npz`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scaffold.errors import UserError
from scaffold.io import atomic_open, remove_stale_temporaries, write_atomic
from scaffold.lock import folder_lock
from var.settings import SamplingSettings, add_sampling_arguments, count, given_settings

__all__ = [
    "SampleError",
    "add_arguments",
    "generate_folder",
    "image_path",
    "image_seed",
    "npz_path",
    "parse_classes",
    "record",
    "run",
    "to_uint8",
    "write_npz",
]

SETTINGS = "sampling.json"
# The version of how images are made from a record: 2 since images are decoded by var.sample.decode (each
# image's f_hat from its own tokens in fp32, the decoder channels-last on a CPU). A folder of another version
# holds images whose bytes differ, so it is not resumed.
RECORD_FORMAT = 2


class SampleError(UserError, ValueError):
    """A bad `var sample` request: class range, count, output folder, settings of an existing folder."""


def parse_classes(spec: str, num_classes: int) -> list[int]:
    """``"all"``, ``"0-9"``, ``"1,5,7"``, ``"0-3,8"`` -> sorted distinct class ids, each in ``[0, num_classes)``."""
    text = spec.strip().lower()
    if text == "all":
        return list(range(num_classes))
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
            else:
                lo = hi = int(part)
        except ValueError:
            raise SampleError(
                f"--classes {spec!r}: {part!r} is not a class id or a range (use e.g. 0-9, 1,5,7, 0-3,8 or all)"
            ) from None
        if lo > hi:
            raise SampleError(f"--classes {spec!r}: the range {part!r} is empty (write it low-high)")
        if lo < 0 or hi >= num_classes:
            raise SampleError(f"--classes {spec!r}: class ids must be in 0..{num_classes - 1} for this model")
        out.update(range(lo, hi + 1))
    return sorted(out)


def image_seed(seed: int, cls: int, index: int) -> int:
    """The generator seed of image (cls, index): 63 bits of BLAKE2b over the three numbers.

    A hash rather than e.g. ``seed * K + cls * N + index`` so that seeds of neighbouring runs (seed 0
    and seed 1) never share images, whatever the number of classes or images per class.
    """
    digest = hashlib.blake2b(f"{seed}:{cls}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def image_path(out: Path, cls: int, index: int) -> Path:
    return out / str(cls) / f"{index}.png"


def npz_path(out: Path) -> Path:
    """OUT.npz beside the folder OUT (as the ADM/VAR evaluation scripts expect)."""
    return out.parent / f"{out.name}.npz"


def to_uint8(img_B3HW: torch.Tensor) -> np.ndarray:
    """[0, 1] floats -> uint8 [B, H, W, 3], rounding half up (as torchvision's save_image)."""
    return img_B3HW.mul(255).add_(0.5).clamp_(0, 255).to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()


def _write_png(path: Path, img_HW3: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(img_HW3).save(buf, format="PNG")
    write_atomic(path, buf.getbuffer())


def _check_out(out: str | os.PathLike) -> Path:
    """The output folder, checked without creating anything: a refused request leaves no empty folder."""
    if not str(out).strip():
        raise SampleError("--out is empty: name the output folder (OUT.npz is written beside it)")
    out = Path(out)
    here = Path.cwd()
    if Path(os.path.abspath(out)) in (here, *here.parents):
        raise SampleError(
            f"--out {out} is the working folder or one above it: name a folder of its own "
            f"(its images go in it, OUT.npz beside it)"
        )
    if out.exists() and not out.is_dir():
        raise SampleError(f"cannot write to the output folder {out}: it is a file")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SampleError(f"cannot write to the output folder {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or (out.is_dir() and not os.access(out.parent, os.W_OK)):
        raise SampleError(f"cannot write to the output folder {out}: permission denied")
    return out


def record(loaded, settings: SamplingSettings) -> dict:
    """What OUT/sampling.json holds: the model's and the tokenizer's identity (hashes of their weights,
    not paths) and the settings. The model's name is kept for people; it is not compared."""
    return {"format": RECORD_FORMAT, **loaded.identity, "settings": settings.as_dict(), "model": loaded.name}


def _check_record(out: Path, new: dict, rank: int) -> None:
    """Refuse to resume a folder made with another model, tokenizer or settings: its images would not
    match the new ones and OUT.npz would mix them. Writes the record when the folder has none."""
    path = out / SETTINGS
    afresh = f"to start afresh, use another --out or delete {out} and {npz_path(out).name}"
    if not path.is_file():
        if rank == 0:
            write_atomic(path, json.dumps(new, indent=2) + "\n")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SampleError(f"{path} is unreadable ({err}): {afresh}") from None
    if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
        raise SampleError(
            f"{out} was made by an older version of `var sample` (its {SETTINGS} records no model hash): {afresh}"
        )
    if old.get("format", 1) != RECORD_FORMAT:
        raise SampleError(
            f"{out} was made by an older version of `var sample` (record format {old.get('format', 1)}, now "
            f"{RECORD_FORMAT}: its images were decoded otherwise and would differ in their last bits): {afresh}"
        )
    changes = []
    for key, what in (("model_sha256", "the model's weights"), ("tokenizer_sha256", "the tokenizer's weights")):
        if old.get(key) != new[key]:
            changes.append(f"{what} (SHA-256 {str(old.get(key))[:12]}..., now {new[key][:12]}...)")
    settings = new["settings"]
    # a setting the record lacks was made before that setting existed, with its exact default (a fast mode off)
    recorded = {**SamplingSettings.EXACT_MODES, **old["settings"]}
    changes += [f"{k}={recorded.get(k)!r} (now {v!r})" for k, v in settings.items() if recorded.get(k) != v]
    if changes:
        raise SampleError(
            f"{out} was made with another model or other settings: {'; '.join(changes)}; "
            f"rerun with the same ones, or {afresh}"
        )


@torch.no_grad()
def _sample_batch(loaded, jobs: Sequence[tuple[int, int]], s: SamplingSettings) -> np.ndarray:
    """uint8 images [B, H, W, 3] of the (class, index) pairs `jobs`, each independent of the rest of the batch:
    image (c, i) is, byte for byte, ``sample(model, vae, [c], s, seed=[image_seed(s.seed, c, i)])`` alone."""
    from var.sample import decode, generate

    device = loaded.model.lvl_1L.device
    labels = torch.tensor([c for c, _ in jobs], device=device)
    seeds = [image_seed(s.seed, c, i) for c, i in jobs]
    idx_Bl: list[torch.Tensor] = []  # keep each scale's tokens, not its [2B, l, V] logits
    for step in generate(loaded.model, loaded.vae, labels, s, seed=seeds):
        idx_Bl.append(step.idx_Bl)
    vae = loaded.vae
    # Tokens are identical whatever the batch, but the batch's f_hat and a batched decoder's float sums are
    # not: each image's f_hat is summed from its own tokens (fp32, as generate sums it) and decoded alone,
    # so a pixel at a rounding boundary cannot flip with the batch. With more_smooth the image is not a
    # function of the tokens: the f_hat of generate is used, and the batch is kept at one (generate_folder).
    if s.more_smooth:
        f_hats = [step.f_hat[b : b + 1] for b in range(len(jobs))]
    else:
        f_hats = [vae.idx_to_fhat([idx[b : b + 1] for idx in idx_Bl]) for b in range(len(jobs))]
    return to_uint8(torch.cat([decode(vae, f_hat, s.precision) for f_hat in f_hats]))


def generate_folder(
    loaded,
    out: str | os.PathLike,
    classes: Sequence[int],
    per_class: int,
    settings: SamplingSettings,
    *,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> int:
    """Write the missing PNGs of this rank's share of ``classes x range(per_class)``; returns how many it wrote.

    Every check (counts, classes, the folder, its record) comes before the first file is written.
    """
    from tqdm import tqdm

    from scaffold.precision import resolve_precision

    per_class, batch_size = count(per_class, "--per-class"), count(batch_size, "--batch-size")
    bad = [c for c in classes if not 0 <= c < loaded.num_classes]
    if bad:
        raise SampleError(f"class ids {bad} are out of range 0..{loaded.num_classes - 1} for {loaded.name}")
    out = _check_out(out)
    # "auto" is recorded as what it resolves to here: a resume on a machine where it resolves otherwise
    # would mix bf16 and fp32 images, and is refused like any other change of settings.
    settings = settings.replace(precision=resolve_precision(settings.precision, loaded.model.lvl_1L.device))
    _check_record(out, record(loaded, settings), rank)  # refuses a changed model, or records a new folder's
    if rank == 0:  # what a killed run left: .N.png.tmp-PID in the folder, .OUT.npz.tmp-PID beside it
        remove_stale_temporaries(out, recursive=True)
        remove_stale_temporaries(out.parent)
    share = [(c, i) for c in classes for i in range(per_class)][rank::world_size]
    todo = [(c, i) for c, i in share if not image_path(out, c, i).is_file()]
    if settings.more_smooth:
        batch_size = 1  # soft embeddings: batched float sums would leak into the image (see _sample_batch)
    bar = tqdm(
        total=len(share),
        initial=len(share) - len(todo),
        unit="img",
        desc=f"sampling{f' (rank {rank})' if world_size > 1 else ''}",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        for start in range(0, len(todo), batch_size):
            jobs = todo[start : start + batch_size]
            for (c, i), img in zip(jobs, _sample_batch(loaded, jobs, settings)):
                _write_png(image_path(out, c, i), img)
            bar.update(len(jobs))
    return len(todo)


def _missing(out: Path, classes: Sequence[int], per_class: int) -> list[Path]:
    return [image_path(out, c, i) for c in classes for i in range(per_class) if not image_path(out, c, i).is_file()]


def write_npz(out: str | os.PathLike, classes: Sequence[int], per_class: int) -> Path:
    """OUT.npz from the PNGs of ``classes x range(per_class)`` (every one must exist), written atomically."""
    out = Path(out)
    missing = _missing(out, classes, per_class)
    if missing:
        raise SampleError(f"{len(missing)} images are missing (first: {missing[0]}); rerun `var sample` to finish")
    paths = [image_path(out, c, i) for c in classes for i in range(per_class)]
    imgs: np.ndarray | None = None  # filled in place: the images are held once, not as a list and a stack
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            img = np.asarray(im.convert("RGB"))
        if imgs is None:
            imgs = np.empty((len(paths), *img.shape), np.uint8)
        if img.shape != imgs.shape[1:]:
            raise SampleError(f"{p} is {img.shape[1]}x{img.shape[0]} but {paths[0]} is {imgs.shape[2]}x{imgs.shape[1]}")
        imgs[k] = img
        del img
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    path = npz_path(out)
    with atomic_open(path) as f:
        np.savez(f, arr_0=imgs, arr_1=labels)
    return path


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def _process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _wait_for_all(out: Path, classes: Sequence[int], per_class: int, poll_s: float = 5.0) -> None:
    """Rank 0: a barrier when a process group is up, else watch the files until the other ranks wrote theirs."""
    if _process_group():
        torch.distributed.barrier()
        return
    while _missing(out, classes, per_class):
        time.sleep(poll_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Numbers are read as text and checked by var.settings: the web UI's checks, ranges and messages.
    parser.add_argument(
        "--model", required=True, help="an exported model folder, a published checkpoint file, or d16, d20, d24, d30"
    )
    parser.add_argument("--classes", default="all", help="class ids: all, 0-9, 1,5,7 or 0-3,8 (default: all)")
    parser.add_argument("--per-class", default="50", help="images per class (default: 50)")
    parser.add_argument("--out", required=True, help="output folder; OUT.npz is written beside it")
    parser.add_argument("--batch-size", default="32", help="images per forward pass (default: 32)")
    add_sampling_arguments(parser, seed_help="global seed, 0 to 2**32-1 (default: the model's, 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from var.export import load_model

    rank, world_size, local_rank = _distributed()
    # Everything the command line alone decides is checked before loading a model that may take a
    # minute, and before anything is written: a refused request leaves no folder and no record.
    per_class, batch_size = count(args.per_class, "--per-class"), count(args.batch_size, "--batch-size")
    changes = given_settings(args)  # the sampling flags, parsed: the model's settings are not known yet
    out = _check_out(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    if world_size > 1 and "MASTER_ADDR" in os.environ:
        import datetime

        import torch.distributed as dist

        # gloo and a long timeout: the barrier only waits for the other ranks' files, which may take hours
        # when a resumed run left the ranks' shares unevenly done.
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    loaded = load_model(args.model, device)
    classes = parse_classes(args.classes, loaded.num_classes)
    settings = loaded.sampling.replace(**changes)
    if rank == 0:
        print(f"{loaded.describe()}; {len(classes)} classes x {per_class} images -> {out}")
    # Rank 0 holds the folder from its record's check to OUT.npz: a second `var sample` into it is refused
    # (the other ranks of this run write there too, and take no lock).
    with folder_lock(out) if rank == 0 else contextlib.nullcontext():
        generate_folder(
            loaded,
            out,
            classes,
            per_class,
            settings,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            progress=rank == 0 and not args.no_progress,
        )
        if rank == 0:
            _wait_for_all(out, classes, per_class)
            path = write_npz(out, classes, per_class)
            print(f"wrote {len(classes) * per_class} images to {out}/ and {path}")
    if rank != 0 and _process_group():
        torch.distributed.barrier()  # rank 0's, in _wait_for_all
    if _process_group():
        torch.distributed.destroy_process_group()
    return 0

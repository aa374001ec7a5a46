"""`var sample`: class-conditional images in batches, as PNG folders and an `.npz` (DESIGN.md section 1, flow 3).

Output::

    OUT/<class>/<index>.png    one image per (class, index), written atomically (temp file + rename)
    OUT/sampling.json          the settings the folder was made with (a rerun with others is refused)
    OUT.npz                    arr_0 uint8 [N, H, W, 3], arr_1 int64 [N]: the ADM evaluator's format,
                               class-major then index order, written atomically once every image exists

Seeding rule: image (class c, index i) is drawn with its own generator seeded by :func:`image_seed`
``(seed, c, i)`` (63 bits of a BLAKE2b hash), through :func:`var.sample.sample`'s per-image seeds, and
decoded from its tokens alone. Its bytes therefore depend on the global seed, the class, the index, the
sampling settings and the device's arithmetic, never on the batch size, the number of processes, or
where an interrupted run resumed.

Resume: an image whose PNG exists is skipped. Several GPUs: ``torchrun --nproc-per-node N -m app
sample ...``; process ``rank`` takes every ``world_size``-th (class, index) pair of the full list, rank 0
waits for the others (a barrier, or by watching the files) and writes the `.npz`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scaffold.errors import UserError

__all__ = [
    "SampleError",
    "SampleSettings",
    "add_arguments",
    "generate_folder",
    "image_path",
    "image_seed",
    "npz_path",
    "parse_classes",
    "run",
    "to_uint8",
    "write_npz",
]

SETTINGS = "sampling.json"


class SampleError(UserError, ValueError):
    """A bad `var sample` request: class range, count, output folder, settings of an existing folder."""


@dataclass(frozen=True)
class SampleSettings:
    """Everything besides (class, index) that an image depends on; stored in OUT/sampling.json."""

    model: str
    seed: int
    cfg: float
    top_k: int
    top_p: float
    more_smooth: bool


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


def _replace_atomically(path: Path, write) -> None:
    """`write(file)` into a temp file beside `path`, then rename: readers see all of it or none of it."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_png(path: Path, img_HW3: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, lambda f: Image.fromarray(img_HW3).save(f, format="PNG"))


def _check_counts(per_class: int, batch_size: int) -> None:
    if per_class < 1:
        raise SampleError(f"--per-class must be at least 1, got {per_class}")
    if batch_size < 1:
        raise SampleError(f"--batch-size must be at least 1, got {batch_size}")


def _check_writable(out: Path) -> None:
    """The folder (for the PNGs) and its parent (for OUT.npz) must take files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, out.parent):
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as err:
        raise SampleError(f"cannot write to the output folder {out}: {err.strerror or err}") from None


def _check_settings(out: Path, settings: SampleSettings, rank: int) -> None:
    """Refuse to resume a folder made with other settings: its images would not match the new ones."""
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        if old != asdict(settings):
            diff = ", ".join(f"{k}={old.get(k)!r} (now {v!r})" for k, v in asdict(settings).items() if old.get(k) != v)
            raise SampleError(
                f"{out} was generated with other settings: {diff}; use another --out or the same settings"
            )
    elif rank == 0:
        _replace_atomically(path, lambda f: f.write(json.dumps(asdict(settings), indent=2).encode()))


@torch.no_grad()
def _sample_batch(loaded, jobs: Sequence[tuple[int, int]], s: SampleSettings) -> np.ndarray:
    """uint8 images [B, H, W, 3] of the (class, index) pairs `jobs`, each independent of the rest of the batch."""
    from var.sample import generate

    device = loaded.model.lvl_1L.device
    labels = torch.tensor([c for c, _ in jobs], device=device)
    seeds = [image_seed(s.seed, c, i) for c, i in jobs]
    idx_Bl: list[torch.Tensor] = []  # keep each scale's tokens, not its [2B, l, V] logits
    for step in generate(loaded.model, loaded.vae, labels, s.cfg, s.top_k, s.top_p, seeds, s.more_smooth):
        idx_Bl.append(step.idx_Bl)
    vae = loaded.vae
    # Tokens are identical whatever the batch, but a batched decoder's float sums are not: decoding each
    # image alone keeps its bytes independent of the batch (a pixel at a rounding boundary would flip).
    # With more_smooth the image is not a function of the tokens: its f_hat is used, and the batch is
    # kept at one image (see generate_folder).
    if s.more_smooth:
        imgs = [vae.fhat_to_img(step.f_hat[b : b + 1]) for b in range(len(jobs))]
    else:
        imgs = [vae.idx_to_img([idx[b : b + 1] for idx in idx_Bl]) for b in range(len(jobs))]
    return to_uint8(torch.cat(imgs).add(1).mul(0.5))


def generate_folder(
    loaded,
    out: str | os.PathLike,
    classes: Sequence[int],
    per_class: int,
    settings: SampleSettings,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> int:
    """Write the missing PNGs of this rank's share of ``classes x range(per_class)``; returns how many it wrote."""
    from tqdm import tqdm

    out = Path(out)
    _check_counts(per_class, batch_size)
    bad = [c for c in classes if not 0 <= c < loaded.num_classes]
    if bad:
        raise SampleError(f"class ids {bad} are out of range 0..{loaded.num_classes - 1} for {loaded.name}")
    _check_writable(out)
    _check_settings(out, settings, rank)
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
    imgs = np.stack(
        [np.asarray(Image.open(image_path(out, c, i)).convert("RGB")) for c in classes for i in range(per_class)]
    )
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    path = npz_path(out)
    _replace_atomically(path, lambda f: np.savez(f, arr_0=imgs, arr_1=labels))
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
    parser.add_argument("--model", required=True, help="an exported model folder, or d16, d20, d24, d30 (published)")
    parser.add_argument("--classes", default="all", help="class ids: all, 0-9, 1,5,7 or 0-3,8 (default: all)")
    parser.add_argument("--per-class", type=int, default=50, help="images per class (default: 50)")
    parser.add_argument("--out", required=True, help="output folder; OUT.npz is written beside it")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="global seed (default: 0)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance (default: the model's)")
    parser.add_argument("--top-k", type=int, default=None, help="top-k, 0 disables (default: the model's)")
    parser.add_argument("--top-p", type=float, default=None, help="top-p, 0 disables (default: the model's)")
    parser.add_argument(
        "--more-smooth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Gumbel-softmax smoothing, for visuals only (default: the model's)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from var.export import load_model

    rank, world_size, local_rank = _distributed()
    _check_counts(args.per_class, args.batch_size)  # before loading a model that may take a minute
    out = Path(args.out)
    _check_writable(out)
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
    d = loaded.sampling
    folder = Path(loaded.name)
    settings = SampleSettings(
        model=str(folder.resolve()) if folder.is_dir() else loaded.name,
        seed=args.seed,
        cfg=d.cfg if args.cfg is None else args.cfg,
        top_k=d.top_k if args.top_k is None else args.top_k,
        top_p=d.top_p if args.top_p is None else args.top_p,
        more_smooth=d.more_smooth if args.more_smooth is None else args.more_smooth,
    )
    if rank == 0:
        print(f"{loaded.describe()}; {len(classes)} classes x {args.per_class} images -> {out}")
    generate_folder(
        loaded,
        out,
        classes,
        args.per_class,
        settings,
        args.batch_size,
        rank,
        world_size,
        progress=rank == 0 and not args.no_progress,
    )
    if rank == 0:
        _wait_for_all(out, classes, args.per_class)
        path = write_npz(out, classes, args.per_class)
        print(f"wrote {len(classes) * args.per_class} images to {out}/ and {path}")
    elif _process_group():
        torch.distributed.barrier()  # rank 0's, in _wait_for_all
    if _process_group():
        torch.distributed.destroy_process_group()
    return 0

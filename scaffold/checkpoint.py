"""Reading checkpoint files with messages that name the problem: state dicts (read, strictly loaded,
downloaded) and the step of a training checkpoint.

State dicts are shared by `load_official_vae`, the transformer's `load_official_var` and both exports; a
training checkpoint (Lightning's: `state_dict`, `global_step`, optimizer state...) is read here without
Lightning (`probe_checkpoint`) and by Lightning through `scaffold.resume.AtomicCheckpointIO`, both with
`CHECKPOINT_SAFE_GLOBALS` and the same one-line reason (`load_error_reason`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import re
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .io import write_atomic

__all__ = [
    "CHECKPOINT_SAFE_GLOBALS",
    "HUB_REPO",
    "HUB_REVISION",
    "HUB_SHA256",
    "CheckpointError",
    "check_keys",
    "check_state_dict",
    "hub_download",
    "load_error_reason",
    "load_state_dict_strict",
    "probe_checkpoint",
    "read_state_dict",
    "save_state_dict",
    "sha256_of",
]

# The published checkpoints, pinned: the hub repo at one commit, and the SHA-256 of every file taken from it
# (the git-lfs pointers' oids at that commit). A download is used only if its bytes have this hash, so a
# changed file on the hub, a corrupted cache or a tampered mirror is refused rather than unpickled.
HUB_REPO = "FoundationVision/var"
HUB_REVISION = "6d0ee6598a42f75079aa79e58b012b57b284c91b"
HUB_SHA256: dict[str, str] = {
    "vae_ch160v4096z32.pth": "7c3ec27ae28a3f87055e83211ea8cc8558bd1985d7b51742d074fb4c2fcf186c",
    "var_d16.pth": "4f6151aad91c94e03e224dd7358d8389fa05301c0c291279566998efb54b0ecb",
    "var_d20.pth": "f7d232978e6fe82a4f2e0f5d82b012e01b1aa5abfe93ce2b56104ec0e878a10f",
    "var_d24.pth": "12c03619b2d3906ed19fe59539a90aadf60d72287dbaa31cf540435e76ddf789",
    "var_d30.pth": "7b11551dd4d794c7d6ed10b3d2822d42efe609a86128171b646e543dd2633b56",
}


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read, downloaded, or does not fit the model."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a `.pth`/`.pt`/`.bin` (torch.load, weights only) or `.safetensors` file onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return dict(sd)


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a `.safetensors` (or torch) file atomically (`scaffold.io.write_atomic`).

    Serialised in memory first: safetensors and torch.save report a full disk as their own errors
    (SafetensorError, RuntimeError), a plain write as the OSError that `write_atomic` turns into one line.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save

        write_atomic(path, save(tensors))
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        write_atomic(path, buffer.getbuffer())


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key of `state_dict`.

    `what` names the checkpoint in the message (a path or a description).
    """
    own = module.state_dict()
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    _raise_mismatches(f"{what} does not fit {type(module).__name__}", set(own), state_dict, shapes)


def check_keys(expected: Collection[str], state_dict: Mapping[str, Any], what: str) -> None:
    """Raise one CheckpointError listing the `expected` keys that `state_dict` lacks and those it holds besides."""
    _raise_mismatches(what, set(expected), state_dict, [])


def _raise_mismatches(what: str, own: set[str], state_dict: Mapping[str, Any], shapes: list[str]) -> None:
    missing = sorted(own - set(state_dict))
    unexpected = sorted(set(state_dict) - own)
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            parts.append(
                f"{label}: " + ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            )
    if parts:
        raise CheckpointError(f"{what}: " + "; ".join(parts))


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, assign: bool = False
) -> None:
    """`module.load_state_dict(strict=True)` with one message listing every mismatch.

    `assign=True` takes the checkpoint's tensors as the module's (for a module built on the meta
    device, which skips a random initialisation that the checkpoint would overwrite anyway).
    """
    check_state_dict(module, state_dict, what)
    module.load_state_dict(state_dict, strict=True, assign=assign)
    if assign:
        left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left:  # a non-persistent buffer: a module must compute it lazily to be loadable this way
            raise RuntimeError(f"tensors not set by the checkpoint {what}: {left}")


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """The file's SHA-256, hex; computed once per process for a file of unchanged size and modification time."""
    st = os.stat(path)
    return _sha256_cached(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def hub_download(filename: str, repo_id: str = HUB_REPO) -> str:
    """`filename` of the hub repo `repo_id` at the pinned :data:`HUB_REVISION` (downloaded once, then taken
    from huggingface_hub's cache), checked against its SHA-256 in :data:`HUB_SHA256` before anyone reads it.
    A file without a pinned hash is refused: this project never loads a download it cannot check."""
    expected = HUB_SHA256.get(filename) if repo_id == HUB_REPO else None
    if expected is None:
        raise CheckpointError(
            f"'{filename}' of '{repo_id}' has no SHA-256 pinned in this version (known: {', '.join(HUB_SHA256)}); "
            "download it yourself and pass the local file path instead"
        )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - huggingface_hub is a hard dependency
        raise CheckpointError("huggingface_hub is not installed; pip install huggingface_hub") from err
    try:
        path = hf_hub_download(repo_id=repo_id, filename=filename, revision=HUB_REVISION)
    except Exception as err:
        # Offline (HF_HUB_OFFLINE, no route, DNS), gated or missing file: one actionable message.
        raise CheckpointError(
            f"could not get '{filename}' from the Hugging Face hub repo '{repo_id}' "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}). "
            f"If this machine is offline, download https://huggingface.co/{repo_id}/resolve/{HUB_REVISION}/{filename} "
            f"elsewhere and pass the local file path instead."
        ) from err
    found = sha256_of(path)
    if found != expected:
        raise CheckpointError(
            f"{path}: the download of '{filename}' has SHA-256 {found}, not the published {expected}; the file "
            "is corrupt or not the published one. Delete it (huggingface_hub's cache) and download it again."
        )
    return path


# What `torch.load(weights_only=True)` may build besides tensors, containers and plain values. A checkpoint of
# both trainings holds nothing else (their state is tensors, numbers, strings, lists and dicts): the list is
# empty on purpose, and a type is added here only when a checkpoint this project writes needs it.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def load_error_reason(err: Exception) -> str:
    """Why `torch.load` failed on a training checkpoint, in one line."""
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).lower():
        # torch's message is many lines of advice to load with weights_only=False: exactly what must not happen.
        found = re.search(r"GLOBAL (\S+)|global ['`]?([\w.]+)", str(err))
        what = f" ({next(g for g in found.groups() if g)})" if found else ""
        return (
            f"it holds objects other than tensors and plain values{what}; refused, as loading them would run "
            f"code from the file (a checkpoint of this project never holds any)"
        )
    text = str(err).splitlines()[0] if str(err) else "no details"
    return f"{type(err).__name__}: {text}"


def probe_checkpoint(path: str | os.PathLike) -> int:
    """The `global_step` of a Lightning checkpoint, read without loading its tensors (memory-mapped).

    Raises CheckpointError naming the file when it is empty, truncated or not a Lightning checkpoint.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip whose directory comes last
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is cut short or not a checkpoint ({size} bytes, no zip directory at its end)"
        )
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {load_error_reason(err)}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no state_dict and global_step)")
    return int(ckpt["global_step"])

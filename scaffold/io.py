"""Atomic file writes: the one helper every writer of the project calls.

A file is written to a temporary name in the destination's own folder (so the final `rename` never
crosses a filesystem), flushed to disk, given the permissions an ordinary write would have had (the
umask's, not the 0600 of a private temporary), then renamed over the destination, and the folder
entry is flushed too. A reader therefore sees the old file or the new one, never a partial one,
whatever interrupts the write: a kill, a full disk, a power cut.

A kill at the wrong moment can still leave the temporary behind (nothing runs after SIGKILL); its
name, `.NAME.tmp-PID[.ext]`, records the process that wrote it, and `remove_stale_temporaries`
deletes those whose process is gone when the next run starts.

A full disk or a folder that cannot be written is the user's problem to fix, not a bug: it raises
`WriteError` (a `UserError`) naming the file and the free space left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import UserError

__all__ = [
    "DiskFullError",
    "WriteError",
    "atomic_open",
    "atomic_path",
    "describe_free_space",
    "remove_stale_temporaries",
    "temporary_path",
    "user_error_for",
    "write_atomic",
]

# `.NAME.tmp-PID` or `.NAME.tmp-PID.ext` (a suffix for writers that pick the format from it).
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class WriteError(UserError, OSError):
    """A file could not be written: no permission, a read-only filesystem, a missing folder."""


class DiskFullError(WriteError):
    """The filesystem (or the user's quota) is full; the message names the file and the space left."""


def describe_free_space(path: str | os.PathLike) -> str:
    """'1.2 GB free' on the filesystem holding `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "free space unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def user_error_for(err: OSError, path: str | os.PathLike) -> UserError:
    """The one-line `UserError` for an `OSError` met while writing `path`."""
    if err.errno in _DISK_FULL:
        return DiskFullError(f"disk full while writing {path} ({describe_free_space(path)}): free some space and rerun")
    reason = os.strerror(err.errno) if err.errno else str(err)
    return WriteError(f"cannot write {path}: {reason}")


def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """The temporary name beside `path` that this process writes before renaming over it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def _umask() -> int:
    # Read, not set-and-restore: os.umask() would race with threads creating files meanwhile.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem (or OS) lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, give it ordinary permissions, rename it over `path`, fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that takes a file name; commit it on success.

    `suffix` is appended to the temporary name for writers that choose a format from it (PIL). On any
    exception the temporary is removed and `path` is left as it was; an `OSError` (disk full, no
    permission) is raised as a `WriteError` naming `path`.
    """
    path = Path(path)
    tmp = temporary_path(path, suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _commit(tmp, path)
    except OSError as err:
        if isinstance(err, UserError):
            raise
        raise user_error_for(err, path) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """`open(path, mode)` that replaces `path` atomically when the block ends without an exception."""
    if mode[0] != "w":
        raise ValueError(f"atomic_open writes a whole file; mode {mode!r} is not a 'w' mode")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_atomic(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], object]) -> None:
    """Replace `path` atomically with `data`: bytes, text (UTF-8), or a function writing to a binary file."""
    with atomic_open(path, "wb") as f:
        if isinstance(data, str):
            f.write(data.encode())
        elif isinstance(data, bytes | bytearray | memoryview):
            f.write(data)
        else:
            data(f)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporaries that `atomic_path` left in `folder` when its process was killed.

    Only names of the form `.NAME.tmp-PID[.ext]` whose process no longer runs are removed (a live
    process may be writing its own). Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*"):
        m = _TEMPORARY.match(p.name)
        if m and not _alive(int(m["pid"])) and (p.is_file() or p.is_symlink()):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        elif m and p.is_dir() and not _alive(int(m["pid"])):  # a folder copied into place (the demo's exports)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed

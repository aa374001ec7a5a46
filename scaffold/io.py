"""Atomic file writes: the one helper every writer of the project calls.

A file is written to a temporary name in the destination's own folder (so the final `rename` never
crosses a filesystem), flushed to disk, given the permissions an ordinary write would have had (the
umask's, not the 0600 of a private temporary), then renamed over the destination, and the folder
entry is flushed too. A reader therefore sees the old file or the new one, never a partial one,
whatever interrupts the write: a kill, a full disk, a power cut.

A kill at the wrong moment can still leave the temporary behind (nothing runs after SIGKILL); its
name, `.NAME.tmp-HOST-BOOT-PID[.ext]`, records the machine (its host name, letters and digits only), the
boot of that machine (the first 8 hex digits of the kernel's boot id) and the process that wrote it, and
`remove_stale_temporaries` deletes, when the next run starts, only those written on this host whose process
is gone: by an earlier boot, or by a PID that no longer runs. A temporary of another host (a shared NFS
folder) is never judged by a PID of this one. Names of the older form `.NAME.tmp-PID` carry no host and are
left alone.

`publish_folder` puts a whole folder (an export) in place the same way: copied under a temporary name, then
swapped with the old one in one `renameat2(RENAME_EXCHANGE)` where Linux offers it, so a reader sees the old
folder or the new one.

A full disk or a folder that cannot be written is the user's problem to fix, not a bug: it raises
`WriteError` (a `UserError`) naming the file and the free space left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import socket
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
    "fsync_folder",
    "publish_folder",
    "remove_stale_temporaries",
    "temporary_path",
    "user_error_for",
    "write_atomic",
]

# `.NAME.tmp-HOST-BOOT-PID` or `.NAME.tmp-HOST-BOOT-PID.ext` (a suffix for writers that pick the format from it).
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9]+)-(?P<boot>[0-9a-f]{8})-(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")
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


@functools.cache
def _host() -> str:
    """This machine's host name in letters and digits (the separator of a temporary's name is '-')."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:40] or "host"


@functools.cache
def _boot() -> str:
    """The first 8 hex digits of this boot's id ("00000000" where the kernel gives none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8].lower()
    except OSError:
        return "0" * 8


def temporary_path(path: str | os.PathLike, suffix: str = "", pid: int | None = None) -> Path:
    """The temporary name beside `path` that this process (or process `pid` of this host and boot) writes
    before renaming over it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_host()}-{_boot()}-{os.getpid() if pid is None else pid}{suffix}")


def _umask() -> int:
    # Read, not set-and-restore: os.umask() would race with threads creating files meanwhile.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush `folder`'s entries (a rename into it) to disk, where the filesystem lets a folder be synced."""
    with contextlib.suppress(OSError):  # not every filesystem (or OS) lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, give it ordinary permissions, rename it over `path`, fsync the folder."""
    _fsync_file(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    fsync_folder(path.parent)


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


def _stale(m: re.Match) -> bool:
    """Whether the temporary named by `m` was written on this host by a process that is gone."""
    if m["host"] != _host():
        return False  # another machine's: its PID means nothing here
    return m["boot"] != _boot() or not _alive(int(m["pid"]))


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporaries that `atomic_path` (or `publish_folder`) left in `folder` when its process was
    killed: only names of the form `.NAME.tmp-HOST-BOOT-PID[.ext]` of this host whose process is gone (a live
    process may be writing its own; another host's may be live). Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*"):
        m = _TEMPORARY.match(p.name)
        if not m or not _stale(m):
            continue
        if p.is_file() or p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        elif p.is_dir():  # a folder copied into place (publish_folder)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # glibc before 2.28, or another libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap `a` and `b` in one step; False where the system or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the folder `src` to `dst`, replacing what was there: a copy under a temporary name beside `dst`
    (every file flushed), then one atomic exchange with the old folder, which is removed after. Without
    `renameat2` the old folder is renamed aside first (a kill in between leaves no `dst`, never half of one).
    A `WriteError` names `dst` when the copy fails (disk full); `dst` is then as it was."""
    src, dst = Path(src), Path(dst)
    tmp = temporary_path(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        if not dst.exists():
            os.replace(tmp, dst)
        elif not _exchange(tmp, dst):
            aside = temporary_path(dst, ".old")
            os.replace(dst, aside)
            os.replace(tmp, dst)
            shutil.rmtree(aside, ignore_errors=True)
        fsync_folder(dst.parent)
    except OSError as err:
        raise user_error_for(err, dst) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange: the old folder
    return dst

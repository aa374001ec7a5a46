"""Exclusive locks on folders: one writer at a time, gone with its process (kill -9 included).

`folder_lock(path)` takes `fcntl.flock` on a lock file (`.lock` inside the folder, or a file of the
caller's choice); the kernel drops the lock when the process ends however it ends, so there is no
stale lock to clean up. The file records who holds it (host, PID, start time) so that a second
process is told whom it waits for, not just that it cannot go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

__all__ = ["LockedError", "folder_lock"]


class LockedError(UserError, RuntimeError):
    """Another live process holds the lock on a folder this run would write (the CLI exits 2)."""


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
        return f"host {info['host']}, PID {info['pid']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike, lock_file: str | os.PathLike | None = None, wait: bool = False
) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` for the `with` block; `LockedError` names the holder if another
    process has it (or, with `wait`, block until it is free: for a shared cache that a second process
    may find finished once the first lets go)."""
    folder = Path(folder)
    path = Path(lock_file) if lock_file is not None else folder / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(
                f"{folder} is being written by another process ({_holder(path)}); wait for it to finish or choose another folder"
            ) from None
        stamp = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(stamp).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock

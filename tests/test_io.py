import errno
import os
import stat
import subprocess
import sys

import pytest

from scaffold import (
    DiskFullError,
    UserError,
    WriteError,
    atomic_open,
    atomic_path,
    remove_stale_temporaries,
    write_atomic,
)
from scaffold.io import temporary_path


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    write_atomic(target, lambda f: f.write(b"three"))
    assert target.read_text() == "three"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target) as f:
        f.write(b"half a new fi")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask_not_the_temporary(tmp_path, umask):
    old = os.umask(umask)
    try:
        target = tmp_path / "model.safetensors"
        with atomic_path(target) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # a writer that makes private files
            os.write(fd, b"x")
            os.close(fd)
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
    finally:
        os.umask(old)
    assert _mode(target) == _mode(plain) == 0o666 & ~umask


def test_disk_full_names_the_file_and_the_free_space(tmp_path):
    target = tmp_path / "out.npz"

    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFullError, match=r"disk full while writing .*out\.npz \(.* free\)") as info:
        write_atomic(target, full)
    assert isinstance(info.value, UserError)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=r"cannot write .*file/x"):
        write_atomic(blocker / "x", b"")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [tmp_path / f".a.png.tmp-{pid}", tmp_path / f".b.npz.tmp-{pid}.png", tmp_path / "d" / f".c.ckpt.tmp-{pid}"]
    stale[2].parent.mkdir()
    for p in stale:
        p.write_bytes(b"partial")
    mine = temporary_path(tmp_path / "c.json")
    mine.write_bytes(b"being written")
    keep = [tmp_path / "a.png", tmp_path / ".hidden", tmp_path / f".x.tmp-{pid}-not-ours"]
    for p in keep:
        p.write_bytes(b"")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale[:2])
    assert remove_stale_temporaries(tmp_path, recursive=True) == [stale[2]]
    assert all(p.exists() for p in [*keep, mine])


def test_stale_folder_copies_are_removed(tmp_path):
    """A folder copied into place under a temporary name (the demo's exports) by a process since killed."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.tmp-{int(dead.stdout)}"
    (stale / "tokenizer").mkdir(parents=True)
    (stale / "tokenizer" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "model").mkdir()
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and (tmp_path / "model").is_dir()

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


def _dead_pid() -> int:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(dead.stdout)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    pid = _dead_pid()
    stale = [
        temporary_path(tmp_path / "a.png", pid=pid),
        temporary_path(tmp_path / "b.npz", ".png", pid=pid),
        temporary_path(tmp_path / "d" / "c.ckpt", pid=pid),
    ]
    stale[2].parent.mkdir()
    for p in stale:
        p.write_bytes(b"partial")
    mine = temporary_path(tmp_path / "c.json")
    mine.write_bytes(b"being written")
    keep = [tmp_path / "a.png", tmp_path / ".hidden", tmp_path / f"{stale[0].name}-not-ours"]
    keep.append(tmp_path / f".old.tmp-{pid}")  # the older form, without a host: not judged
    for p in keep:
        p.write_bytes(b"")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale[:2])
    assert remove_stale_temporaries(tmp_path, recursive=True) == [stale[2]]
    assert all(p.exists() for p in [*keep, mine])


def test_temporaries_name_host_boot_and_pid_and_only_this_hosts_are_judged(tmp_path, monkeypatch):
    """On a shared folder another host's live writer must not look dead by a PID of this host; a file of an
    earlier boot of this host is stale whatever its PID (PIDs are reused across boots)."""
    from scaffold import io

    name = temporary_path(tmp_path / "x.ckpt").name
    assert name == f".x.ckpt.tmp-{io._host()}-{io._boot()}-{os.getpid()}" and io._TEMPORARY.match(name)
    other_host = tmp_path / f".a.ckpt.tmp-otherhost-{io._boot()}-{_dead_pid()}"
    other_boot = "f" * 8 if io._boot() != "f" * 8 else "0" * 8
    earlier_boot = tmp_path / f".b.ckpt.tmp-{io._host()}-{other_boot}-{os.getpid()}"  # a live PID, of this boot
    for p in (other_host, earlier_boot):
        p.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [earlier_boot] and other_host.exists()
    monkeypatch.setattr(io.socket, "gethostname", lambda: "node-7.cluster.example")
    io._host.cache_clear()
    try:
        assert temporary_path(tmp_path / "y").name.startswith(".y.tmp-node7clusterexample-")
    finally:
        io._host.cache_clear()


def test_stale_folder_copies_are_removed(tmp_path):
    """A folder copied into place under a temporary name (publish_folder) by a process since killed."""
    stale = temporary_path(tmp_path / "model", pid=_dead_pid())
    (stale / "tokenizer").mkdir(parents=True)
    (stale / "tokenizer" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "model").mkdir()
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and (tmp_path / "model").is_dir()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_publish_folder_replaces_a_folder_whole(tmp_path, monkeypatch, exchange):
    from scaffold import io

    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    src, dst = tmp_path / "export", tmp_path / "work" / "model"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"new")
    assert io.publish_folder(src, dst) == dst and (dst / "sub" / "w.bin").read_bytes() == b"new"  # a new folder
    (dst / "stale.txt").write_text("of the old export")
    (src / "sub" / "w.bin").write_bytes(b"newer")
    io.publish_folder(src, dst)
    assert sorted(p.name for p in dst.rglob("*")) == ["sub", "w.bin"]
    assert (dst / "sub" / "w.bin").read_bytes() == b"newer"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model"]  # no temporary or old copy left
    assert (src / "sub" / "w.bin").is_file()  # the source is copied, not moved
    if exchange and io._renameat2() is not None:  # the exchange is a real swap on this system
        (src / "sub" / "w.bin").write_bytes(b"src")
        assert io._exchange(src, dst)
        assert (src / "sub" / "w.bin").read_bytes() == b"newer" and (dst / "sub" / "w.bin").read_bytes() == b"src"


def test_publish_folder_that_cannot_copy_leaves_the_old_folder(tmp_path, monkeypatch):
    from scaffold import io

    src, dst = tmp_path / "export", tmp_path / "model"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    dst.mkdir()
    (dst / "old").write_bytes(b"old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.shutil, "copytree", full)
    with pytest.raises(DiskFullError, match="disk full while writing .*model"):
        io.publish_folder(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "model"] and (dst / "old").is_file()

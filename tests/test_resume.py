"""A run's checkpoints (scaffold.resume): written atomically beside themselves, pruned, never a half file
after a kill or a full disk, read as data only, and the one a run resumes from.

`helpers.train_tiny` fits a two-parameter module; the trainings' own test files check that both
train.py use this (exact resume, a truncated last.ckpt).
"""

import errno
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import full_disk, train_tiny

from scaffold import CheckpointError, DiskFullError
from scaffold.checkpoint import probe_checkpoint
from scaffold.errors import TrainingError
from scaffold.io import temporary_path
from scaffold.resume import AtomicCheckpointIO, find_resume_checkpoint
from scaffold.run import prepare_run_folder

ROOT = Path(__file__).resolve().parents[1]


def step_files(out_dir: Path) -> list[str]:
    return sorted(p.name for p in (out_dir / "checkpoints").iterdir())


def test_step_checkpoints_are_pruned_to_the_newest(tmp_path):
    train_tiny(tmp_path, max_steps=5, keep=2)
    assert step_files(tmp_path) == ["last.ckpt", "step0000004.ckpt", "step0000005.ckpt"]
    # Files of an earlier, killed run (Lightning's own pruning does not know them) go too.
    (tmp_path / "checkpoints" / "step0000099.ckpt").write_bytes(b"x")
    os.utime(tmp_path / "checkpoints" / "step0000099.ckpt", (0, 0))  # written long ago
    train_tiny(tmp_path, max_steps=7, keep=2, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert step_files(tmp_path) == ["last.ckpt", "step0000006.ckpt", "step0000007.ckpt"]


def test_checkpoint_temporary_is_beside_the_checkpoint_not_in_tmpdir(tmp_path, monkeypatch):
    """Lightning's own writer staged checkpoints in $TMPDIR and copied them across filesystems into last.ckpt."""
    other = Path("/dev/shm")
    if other.is_dir() and os.access(other, os.W_OK) and other.stat().st_dev != tmp_path.stat().st_dev:
        tmpdir = Path(tempfile.mkdtemp(dir=other))  # a real second filesystem
    else:
        tmpdir = tmp_path / "tmpdir"
        tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        if Path(src).parent != Path(dst).parent or Path(src).stat().st_dev != Path(dst).parent.stat().st_dev:
            raise OSError(errno.EXDEV, "Invalid cross-device link")  # what a cross-filesystem rename does
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        train_tiny(tmp_path, max_steps=2)
        assert list(tmpdir.iterdir()) == []
    finally:
        for p in tmpdir.iterdir():
            p.unlink()
        tmpdir.rmdir()
    assert {dst.name for _, dst in renames} >= {"last.ckpt", "step0000002.ckpt"}
    assert all(src.parent == dst.parent == tmp_path / "checkpoints" for src, dst in renames)
    assert probe_checkpoint(tmp_path / "checkpoints" / "last.ckpt") == 2
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_killed_save_leaves_last_ckpt_whole_and_the_next_start_removes_its_temporary(tmp_path):
    train_tiny(tmp_path, max_steps=1)
    folder = tmp_path / "checkpoints"
    left = temporary_path(folder / "last.ckpt", pid=dead_pid())
    left.write_bytes(b"half a checkpo")  # what SIGKILL during a save leaves (the slow test below does it for real)
    prepare_run_folder(tmp_path)
    assert step_files(tmp_path) == ["last.ckpt", "step0000001.ckpt"]
    assert find_resume_checkpoint(tmp_path, "true") == str(folder / "last.ckpt")


@pytest.mark.slow  # a child process importing torch and Lightning: ~20 s on a busy 2-core machine
def test_kill_at_the_rename_keeps_the_old_checkpoint_and_the_next_start_cleans_up(tmp_path):
    train_tiny(tmp_path, max_steps=1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # A process that saves a new checkpoint over last.ckpt and is SIGKILLed at the rename.
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from scaffold.resume import AtomicCheckpointIO
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.ones(1000)}}, "global_step": 9}}, {str(last)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert last.read_bytes() == before  # the old checkpoint, whole
    left = [p for p in last.parent.iterdir() if p.name.startswith(".last.ckpt.tmp-")]
    assert len(left) == 1 and left[0].stat().st_size > 0  # the killed writer's temporary
    prepare_run_folder(tmp_path)
    assert step_files(tmp_path) == ["last.ckpt", "step0000001.ckpt"]
    assert find_resume_checkpoint(tmp_path, "true") == str(last)


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_resume_skips_a_damaged_last_ckpt_saying_why(tmp_path, caplog, damage):
    train_tiny(tmp_path, max_steps=3)
    last = tmp_path / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "text": b"not a checkpoint\n"}[damage])
    with caplog.at_level(logging.INFO, logger="scaffold.resume"):
        chosen = find_resume_checkpoint(tmp_path, "true")
    assert chosen == str(tmp_path / "checkpoints" / "step0000003.ckpt")
    reason = "the file is empty" if damage == "empty" else "it is cut short or not a checkpoint"
    assert f"skipping cannot read checkpoint {last}: {reason}" in caplog.text
    assert "resuming from" in caplog.text and "(step 3)" in caplog.text
    trainer = train_tiny(tmp_path, max_steps=4, ckpt_path=chosen)  # and it really resumes
    assert trainer.global_step == 4


def test_lightning_s_ckpt_path_last_takes_the_newest_checkpoint_that_loads(tmp_path, caplog):
    """`trainer.fit(ckpt_path="last")` resolves through StepCheckpoint: a cut-short last.ckpt (newer than
    every step checkpoint, so Lightning alone would pick it) gives way to the newest step checkpoint."""
    train_tiny(tmp_path, max_steps=3)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    with caplog.at_level(logging.INFO, logger="scaffold.resume"):
        trainer = train_tiny(tmp_path, max_steps=5, ckpt_path="last")
    assert f"skipping cannot read checkpoint {last}" in caplog.text
    assert f"resuming from {tmp_path / 'checkpoints' / 'step0000003.ckpt'} (step 3)" in caplog.text
    assert trainer.global_step == 5 and probe_checkpoint(last) == 5
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(TrainingError, match="no checkpoint in .* loads .*the file is empty"):
        train_tiny(empty, max_steps=1, ckpt_path="last")


def test_resume_last_takes_the_highest_step_not_the_newest_file(tmp_path, caplog):
    """A copied or touched older checkpoint (the newest file) must not take a run back."""
    train_tiny(tmp_path, max_steps=3, keep=2)
    folder = tmp_path / "checkpoints"
    for name in ("last.ckpt", "step0000003.ckpt"):
        os.utime(folder / name, (1_000_000, 1_000_000))  # step 2 is now the newest file by far
    with caplog.at_level(logging.INFO, logger="scaffold.resume"):
        assert find_resume_checkpoint(tmp_path, "last") == str(folder / "last.ckpt")
    assert "(step 3)" in caplog.text
    (folder / "last.ckpt").write_bytes(b"")  # among the intact ones only
    assert find_resume_checkpoint(tmp_path, "last") == str(folder / "step0000003.ckpt")


def test_resume_with_no_loadable_checkpoint_is_one_message(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(TrainingError, match="no checkpoint in .* loads .*the file is empty.*resume=false"):
        find_resume_checkpoint(tmp_path, "true")
    assert find_resume_checkpoint(tmp_path / "fresh", "true") is None
    assert find_resume_checkpoint(tmp_path, "false") is None


def test_a_corrupt_explicit_resume_checkpoint_is_one_message(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {bad}: it is cut short .*100 bytes"):
        find_resume_checkpoint(tmp_path, str(bad))
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {bad}"):
        AtomicCheckpointIO().load_checkpoint(bad)
    with pytest.raises(TrainingError, match="resume checkpoint not found"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "missing.ckpt"))


class RunsCode:
    """Unpickled, it creates the folder `marker`: the stand-in for any code a crafted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_naming_the_file(tmp_path, caplog):
    """A file dropped into a run's checkpoint folder must not run code when the run resumes."""
    train_tiny(tmp_path, max_steps=2)
    marker = tmp_path / "ran"
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 99, "payload": RunsCode(marker)}, last)  # the newest file
    with caplog.at_level(logging.INFO, logger="scaffold.resume"):
        chosen = find_resume_checkpoint(tmp_path, "last")
    assert chosen == str(tmp_path / "checkpoints" / "step0000002.ckpt")
    assert f"skipping cannot read checkpoint {last}: it holds objects other than tensors" in caplog.text
    for load in (probe_checkpoint, AtomicCheckpointIO().load_checkpoint, lambda p: find_resume_checkpoint(tmp_path, p)):
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint {last}: .*posix.mkdir.*refused"):
            load(str(last))
    trainer = train_tiny(tmp_path, max_steps=3, ckpt_path="last")  # Lightning's own resume goes through the same checks
    assert trainer.global_step == 3
    assert not marker.exists()


def test_disk_full_during_a_checkpoint_save_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    train_tiny(tmp_path, max_steps=1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    full_disk(monkeypatch)  # torch.save straight into the file turned this into "RuntimeError: unexpected pos"
    with pytest.raises(DiskFullError, match=rf"disk full while writing {last} \(.* free\)"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.ones(1000)}, last)
    assert last.read_bytes() == before
    assert step_files(tmp_path) == ["last.ckpt", "step0000001.ckpt"]

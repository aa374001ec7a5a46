"""The checkpoints of a training run, written so that they survive a kill or a full disk, and the one it
resumes from.

Checkpoints go through `AtomicCheckpointIO`, which writes them with the project's one atomic writer
(`scaffold.io`): the temporary file lies in the checkpoint folder itself, so the final rename never
crosses a filesystem. Lightning's own writer stages the file in `$TMPDIR` and, when that is another
filesystem, falls back to truncating `last.ckpt` and copying into it - a kill or a full disk during that
copy left a 0-byte or half-written `last.ckpt`.

What survives an interruption: every checkpoint file is either the old one or the new one. A kill can
leave a `.NAME.tmp-PID` temporary; the next start of the run removes it (`scaffold.run.prepare_run_folder`).
Step checkpoints are pruned after each save to the `keep` newest (by modification time) besides `last.ckpt`.
Every checkpoint is read with `torch.load(weights_only=True)` (`scaffold.checkpoint`): a file that holds
anything but tensors and plain values is refused naming it, never unpickled. Resuming is Lightning's own
`trainer.fit(ckpt_path=...)`: `resume=last` (or `true`) passes "last", which Lightning resolves through
`StepCheckpoint`: the newest checkpoint of the run that loads, saying which it skipped and why (Lightning
alone would take the newest `last.ckpt` even when a kill cut it short). `resume=PATH` passes that
checkpoint, checked before the run starts.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpoint import CHECKPOINT_SAFE_GLOBALS, CheckpointError, load_error_reason, probe_checkpoint
from .errors import TrainingError
from .io import write_atomic

__all__ = [
    "LAST",
    "AtomicCheckpointIO",
    "StepCheckpoint",
    "checkpoint_files",
    "checkpoint_folder",
    "find_resume_checkpoint",
    "newest_loadable",
    "resume_value",
]

log = logging.getLogger(__name__)

LAST = "last.ckpt"


def checkpoint_folder(out_dir: str | os.PathLike) -> Path:
    """Where a run in `out_dir` keeps its checkpoints."""
    return Path(out_dir) / "checkpoints"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` writing through `scaffold.io.atomic_open` and reading with one-line errors.

    A full disk or an unwritable folder raises `scaffold.io.WriteError` naming the checkpoint (and the free
    space); a checkpoint that cannot be read raises `CheckpointError` naming it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        # Serialised in memory first (as Lightning does): torch.save's zip writer reports a full disk as a
        # RuntimeError ("unexpected pos"), where a plain write raises the OSError that names the cause.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getbuffer())

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Always weights only, whatever Lightning asks for: a checkpoint file is data, never code.
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
                return super().load_checkpoint(path, weights_only=True, **kwargs)
        except Exception as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {load_error_reason(err)}") from err


class StepCheckpoint(ModelCheckpoint):
    """`out_dir/checkpoints/stepNNNNNNN.ckpt` every `every_n_steps` plus `last.ckpt`; after each save only
    the `keep` newest step checkpoints (by modification time, whichever run wrote them) stay."""

    def __init__(self, out_dir: str | os.PathLike, every_n_steps: int, keep: int):
        super().__init__(
            dirpath=checkpoint_folder(out_dir),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps,
            save_top_k=-1,  # pruning is ours (`prune`): Lightning's forgets the files of earlier, killed runs
            save_last=True,
        )
        self.keep = keep

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if trainer.is_global_zero:
            self.prune()

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        """What `trainer.fit(ckpt_path="last")` resumes from: the newest checkpoint of the run that loads
        (`newest_loadable`; Lightning's own choice is the newest `last*.ckpt`, whole or not)."""
        path = newest_loadable(Path(self.dirpath))
        return {path} if path else set()

    def prune(self) -> list[Path]:
        """Delete all but the `keep` newest step checkpoints; returns the deleted paths."""
        folder = Path(self.dirpath)
        steps = sorted(folder.glob("step*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        for old in steps[self.keep :]:
            old.unlink(missing_ok=True)
            log.debug("pruned %s (keep_checkpoints=%d)", old, self.keep)
        return steps[self.keep :]


def resume_value(resume: str) -> str | None:
    """`resume` as Lightning's `ckpt_path`: None (fresh), "last" or the path given."""
    value = str(resume).strip()
    if value.lower() in ("", "false", "no", "none", "0"):
        return None
    return "last" if value.lower() in ("last", "true", "yes", "1") else value


def checkpoint_files(folder: Path) -> list[Path]:
    """The run's checkpoints, newest first; last.ckpt wins a tie with the step checkpoint written just before it."""
    candidates = [p for p in [folder / LAST, *folder.glob("step*.ckpt")] if p.is_file()]
    return sorted(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST), reverse=True)


def newest_loadable(folder: Path) -> str | None:
    """The checkpoint in `folder` of the highest training step among those that load (last.ckpt on a tie;
    those that do not load are named in a warning with the reason), or None when it holds none; a
    TrainingError when none of them loads. The step is read from each file, not its time: a copied or
    touched file does not take a run back."""
    skipped, intact = [], []
    for path in checkpoint_files(folder):
        try:
            intact.append((probe_checkpoint(path), path.name == LAST, path))
        except CheckpointError as err:
            log.warning("resume: skipping %s", err)
            skipped.append(str(err))
    if intact:
        step, _, path = max(intact, key=lambda t: (t[0], t[1]))
        log.info("resuming from %s (step %d)", path, step)
        return str(path)
    if skipped:
        raise TrainingError(
            f"resume=last but no checkpoint in {folder} loads ({'; '.join(skipped)}): "
            f"pass resume=<a checkpoint path> or resume=false to start afresh"
        )
    return None


def find_resume_checkpoint(out_dir: str | os.PathLike, resume: str) -> str | None:
    """The checkpoint file a run resumes from, or None for a fresh run.

    `resume`: "false" (fresh), "last" or "true" (`newest_loadable` of `out_dir/checkpoints`: the highest step; None when it
    holds none yet) or a checkpoint path (it must load).
    """
    value = resume_value(resume)
    if value is None:
        return None
    if value == "last":
        return newest_loadable(checkpoint_folder(out_dir))
    if not Path(value).is_file():
        raise TrainingError(f"resume checkpoint not found: {value}")
    probe_checkpoint(value)
    return value

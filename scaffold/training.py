"""The Lightning plumbing both trainings share: checkpoints that survive a kill or a full disk, resume, fit.

Checkpoints go through `AtomicCheckpointIO`, which writes them with the project's one atomic writer
(`scaffold.io`): the temporary file lies in the checkpoint folder itself, so the final rename never
crosses a filesystem. Lightning's own writer stages the file in `$TMPDIR` and, when that is another
filesystem, falls back to truncating `last.ckpt` and copying into it - a kill or a full disk during that
copy left a 0-byte or half-written `last.ckpt` (issue 16).

What survives an interruption: every checkpoint file is either the old one or the new one. A kill can
leave a `.NAME.tmp-PID` temporary; the next start of the run removes it (`prepare_run_folder`). Step
checkpoints are pruned after each save to the `keep` newest (by modification time) besides `last.ckpt`.
`resume=true` takes the newest checkpoint of the run that loads and says which it skipped and why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpoint import CheckpointError
from .errors import UserError
from .io import atomic_open, remove_stale_temporaries

__all__ = [
    "PRECISIONS",
    "AtomicCheckpointIO",
    "StepCheckpoint",
    "TrainingError",
    "find_resume_checkpoint",
    "fit_and_checkpoint",
    "parse_devices",
    "prepare_run_folder",
    "probe_checkpoint",
]

log = logging.getLogger(__name__)

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
LAST = "last.ckpt"


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on for a reason the user can fix: memory, labels, a diverged loss, a resume path."""


# ------------------------------------------------------------------------------------- checkpoints
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` writing through `scaffold.io.atomic_open` and reading with one-line errors.

    A full disk or an unwritable folder raises `scaffold.io.WriteError` naming the checkpoint (and the free
    space); a checkpoint that cannot be read raises `CheckpointError` naming it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            return super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        except Exception as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else "no details"
    return f"{type(err).__name__}: {text}"


class StepCheckpoint(ModelCheckpoint):
    """`out_dir/checkpoints/stepNNNNNNN.ckpt` every `every_n_steps` plus `last.ckpt`; after each save only
    the `keep` newest step checkpoints (by modification time, whichever run wrote them) stay."""

    def __init__(self, out_dir: str | os.PathLike, every_n_steps: int, keep: int):
        super().__init__(
            dirpath=Path(out_dir) / "checkpoints",
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

    def prune(self) -> list[Path]:
        """Delete all but the `keep` newest step checkpoints; returns the deleted paths."""
        folder = Path(self.dirpath)
        steps = sorted(folder.glob("step*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        for old in steps[self.keep :]:
            old.unlink(missing_ok=True)
            log.debug("pruned %s (keep_checkpoints=%d)", old, self.keep)
        return steps[self.keep :]


def probe_checkpoint(path: str | os.PathLike) -> int:
    """The `global_step` of a Lightning checkpoint, read without loading its tensors (memory-mapped).

    Raises CheckpointError naming the file when it is empty, truncated or not a Lightning checkpoint.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(err)}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no state_dict and global_step)")
    return int(ckpt["global_step"])


def find_resume_checkpoint(out_dir: str | os.PathLike, resume: str) -> str | None:
    """The checkpoint a run resumes from, or None for a fresh run.

    `resume`: "false" (fresh), "true" (the newest checkpoint of `out_dir/checkpoints` that loads; those
    that do not are named in a warning with the reason) or a checkpoint path (it must load).
    """
    value = str(resume).strip()
    if value.lower() in ("", "false", "no", "none", "0"):
        return None
    if value.lower() not in ("true", "yes", "last", "1"):
        if not Path(value).is_file():
            raise TrainingError(f"resume checkpoint not found: {value}")
        probe_checkpoint(value)
        return value
    folder = Path(out_dir) / "checkpoints"
    candidates = [p for p in [folder / LAST, *folder.glob("step*.ckpt")] if p.is_file()]
    # Newest first; last.ckpt wins a tie with the step checkpoint written just before it.
    candidates.sort(key=lambda p: (p.stat().st_mtime_ns, p.name == LAST), reverse=True)
    if not candidates:
        log.warning("resume=true but %s holds no checkpoint yet: starting a fresh run", folder)
        return None
    skipped = []
    for path in candidates:
        try:
            step = probe_checkpoint(path)
        except CheckpointError as err:
            log.warning("resume: skipping %s", err)
            skipped.append(str(err))
            continue
        log.info("resuming from %s (step %d)", path, step)
        return str(path)
    raise TrainingError(
        f"resume=true but no checkpoint in {folder} loads ({'; '.join(skipped)}): "
        f"pass resume=<a checkpoint path> or resume=false to start afresh"
    )


def prepare_run_folder(out_dir: str | os.PathLike) -> None:
    """Remove the temporaries that killed runs left in `out_dir` (checkpoints, grids, exports)."""
    for path in remove_stale_temporaries(out_dir, recursive=True):
        log.info("removed %s, left behind by an interrupted run", path)


# ------------------------------------------------------------------------------------------- the driver
def parse_devices(value: str):
    """`trainer.devices` as Lightning takes it: a count ("8", "-1") as int, else the string ("auto", "0,1")."""
    value = str(value).strip()
    return int(value) if value.lstrip("-").isdigit() else value


def fit_and_checkpoint(
    trainer: L.Trainer,
    module: L.LightningModule,
    data,
    ckpt_path: str | None,
    out_dir: str,
    batch_size: int,
    hint: str = "",
) -> None:
    """`trainer.fit` with one clear message for an out-of-memory batch, Ctrl-C kept as an interruption
    (the last step checkpoint stays, nothing is exported), and a final out_dir/checkpoints/last.ckpt."""
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except torch.OutOfMemoryError as err:
        raise TrainingError(
            f"batch_size={batch_size} per device does not fit in memory ({str(err).splitlines()[0]}). "
            f"Lower it (e.g. batch_size={max(1, batch_size // 2)}{hint}), use precision=bf16-mixed, "
            f"or spread the batch over more devices (trainer.devices)."
        ) from err
    if trainer.interrupted:
        # Lightning returns from fit on Ctrl-C, possibly mid-step: keep the last step checkpoint, export nothing.
        raise KeyboardInterrupt
    trainer.save_checkpoint(Path(out_dir) / "checkpoints" / LAST)

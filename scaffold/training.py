"""The Lightning plumbing both trainings share: the run config, the Trainer, resumable batches, the EMA,
checkpoints that survive a kill or a full disk, resume, fit, image grids and the CLI entry.

`tokenizer/train.py` and `var/train.py` hold what a step of each does; everything around it lives here.

Checkpoints go through `AtomicCheckpointIO`, which writes them with the project's one atomic writer
(`scaffold.io`): the temporary file lies in the checkpoint folder itself, so the final rename never
crosses a filesystem. Lightning's own writer stages the file in `$TMPDIR` and, when that is another
filesystem, falls back to truncating `last.ckpt` and copying into it - a kill or a full disk during that
copy left a 0-byte or half-written `last.ckpt`.

What survives an interruption: every checkpoint file is either the old one or the new one. A kill can
leave a `.NAME.tmp-PID` temporary; the next start of the run removes it (`prepare_run_folder`). Step
checkpoints are pruned after each save to the `keep` newest (by modification time) besides `last.ckpt`.
Every checkpoint is read with `torch.load(weights_only=True)`: a file that holds anything but tensors and plain
values is refused naming it, never unpickled. Resuming is Lightning's own `trainer.fit(ckpt_path=...)`: `resume=last` (or `true`) passes "last", which
Lightning resolves through `StepCheckpoint`: the newest checkpoint of the run that loads, saying which it
skipped and why (Lightning alone would take the newest `last.ckpt` even when a kill cut it short).
`resume=PATH` passes that checkpoint, checked before the run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import inspect
import io
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .errors import UserError
from .io import atomic_path, remove_stale_temporaries, write_atomic
from .lock import folder_lock
from .loggers import LOGGERS, make_logger
from .precision import training_precision

__all__ = [
    "PRECISIONS",
    "AtomicCheckpointIO",
    "RunConfig",
    "StepBatchSampler",
    "StepCheckpoint",
    "TrainerConfig",
    "TrainingError",
    "check_finite_weights",
    "check_run_folder",
    "find_resume_checkpoint",
    "fit_and_checkpoint",
    "make_trainer",
    "newest_loadable",
    "ordered_loader",
    "parse_devices",
    "prepare_run_folder",
    "previous_run",
    "probe_checkpoint",
    "run_folder_lock",
    "run_training",
    "save_grid_rows",
    "skip_nonfinite",
    "start_run",
    "step_batch_loader",
    "throughput_monitor",
]

log = logging.getLogger(__name__)

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "auto")  # auto: scaffold.precision.training_precision
LAST = "last.ckpt"
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed_everything's range
EXPORTS = ("model", "tokenizer")  # the folders the trainings export into out_dir


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on for a reason the user can fix: memory, labels, a diverged loss, a resume path."""


# ------------------------------------------------------------------------------------------ config
@dataclass
class TrainerConfig:
    """`trainer:` in a config: where a run trains, and any other argument of `lightning.Trainer`.

    A key this class does not declare but `lightning.Trainer` takes (`trainer.accumulate_grad_batches=4`,
    `trainer.deterministic=true`, ...) goes into `extra` and through to the Trainer (scaffold.config's
    `extra_field`); a misspelt one is an error naming the nearest argument.
    """

    accelerator: str = "auto"  # "cpu", "gpu", "auto"
    devices: str = "auto"  # "auto", a count ("8") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"  # "auto", "ddp", "fsdp", "ddp_spawn", ...
    num_workers: int = 2  # DataLoader workers per device
    progress_bar: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # further lightning.Trainer arguments

    extra_field: ClassVar[str] = "extra"

    @staticmethod
    def extra_names() -> tuple[str, ...]:
        """The arguments `lightning.Trainer` takes."""
        return _trainer_arguments()

    def validate(self) -> None:
        for key in self.extra:
            if key not in _trainer_arguments():
                close = difflib.get_close_matches(key, _trainer_arguments(), n=1)
                hint = f"; did you mean 'trainer.{close[0]}'?" if close else ""
                raise ValueError(f"trainer.{key} is not an argument of lightning.Trainer{hint}")
        # The batches a step takes: StepBatchSampler's resume position and the lr's global batch count them.
        accumulate = self.extra.get("accumulate_grad_batches", 1)
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f"trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")


@functools.cache
def _trainer_arguments() -> tuple[str, ...]:
    return tuple(name for name in inspect.signature(L.Trainer.__init__).parameters if name != "self")


@dataclass
class RunConfig:
    """The settings of a training run that both stages have; each stage's config adds its model, data and
    optimizer, and sets its own defaults (out_dir, batch_size, ema_decay)."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    out_dir: str = "runs/train"
    resume: str = "false"  # "false", "last" or "true" (the latest step of out_dir that loads), or a path
    overwrite: bool = False  # start afresh in an out_dir that holds a run: its checkpoints are removed (logged)
    max_steps: int = 100_000
    batch_size: int = 16  # per device
    precision: str = "bf16-mixed"  # "32-true", "bf16-mixed", "16-mixed", or "auto" (bf16-mixed where native)
    ckpt_every_n_steps: int = 1000
    keep_checkpoints: int = 2  # step checkpoints kept besides last.ckpt (the newest)
    log_every_n_steps: int = 50
    logger: str = "csv"  # out_dir/logs as "csv" (metrics.csv), "tensorboard" or "wandb" (when installed), or "none"
    ema_decay: float = 0.999  # 0 turns the EMA off (then the live weights are evaluated and exported)
    seed: int = 0  # 0 to 2**32 - 1 (what every RNG of the run takes)
    nonfinite_steps: int = 0  # steps with a non-finite loss or gradient norm skipped (no update) before a stop

    # lightning.Trainer arguments a run sets from its own keys: trainer.<name> is refused, saying what to set instead.
    # (Those a stage's build_trainer sets besides are refused when the Trainer is built: `make_trainer`.)
    trainer_arguments_taken: ClassVar[dict[str, str]] = {
        "max_steps": "set max_steps instead",
        "max_epochs": "the batches never run out: max_steps ends a run",
        "precision": "set precision instead",
        "logger": "set logger instead (csv, tensorboard, wandb or none)",
        "log_every_n_steps": "set log_every_n_steps instead",
        "enable_checkpointing": "the run always checkpoints: set ckpt_every_n_steps and keep_checkpoints",
        "enable_progress_bar": "set trainer.progress_bar instead",
        "default_root_dir": "set out_dir instead",
        "use_distributed_sampler": "StepBatchSampler shards the batches by rank itself",
        "callbacks": "the run builds its callbacks itself",
        "plugins": "the run builds its plugins itself",
        "gradient_clip_val": "both trainings clip the global gradient norm to optim.grad_clip: set that instead",
        "gradient_clip_algorithm": "both trainings clip the global gradient norm to optim.grad_clip",
    }

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        for name in ("max_steps", "batch_size", "ckpt_every_n_steps", "keep_checkpoints", "log_every_n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.nonfinite_steps < 0:
            raise ValueError(f"nonfinite_steps must be >= 0 (0 stops at the first), got {self.nonfinite_steps}")
        if self.overwrite and _resume_value(self.resume) is not None:
            raise ValueError(f"overwrite=true starts afresh but resume={self.resume!r} continues a run: pick one")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger must be one of {', '.join(LOGGERS)}; got {self.logger!r}")
        for key in self.trainer.extra:
            if key in self.trainer_arguments_taken:
                raise ValueError(
                    f"trainer.{key} is not passed to lightning.Trainer: {self.trainer_arguments_taken[key]}"
                )

    def resume_path(self) -> str | None:
        """The checkpoint file the run resumes from, or None for a fresh run (`find_resume_checkpoint`)."""
        return find_resume_checkpoint(self.out_dir, self.resume)

    def ckpt_path(self) -> str | None:
        """What `trainer.fit(ckpt_path=...)` takes: None (a fresh run), "last" (see `StepCheckpoint`) or a
        checkpoint path, which must load (checked now: a wrong path is one message before anything starts)."""
        value = _resume_value(self.resume)
        if value == "last" and not _checkpoints(Path(self.out_dir) / "checkpoints"):
            log.info("resume=last: %s holds no checkpoint yet, starting a fresh run", Path(self.out_dir))
            return None
        if value not in (None, "last"):
            find_resume_checkpoint(self.out_dir, value)
        return value


# -------------------------------------------------------------------------------------------- data
class StepBatchSampler(Sampler[list[int]]):
    """Endless random batches that are a function of (seed, step, rank) only, so a resumed run sees
    exactly the batches the uninterrupted run would have seen. `start_step` skips the done steps.

    The global stream is one permutation of the dataset per pass; step s of rank r takes the
    positions `[(s*W + r) * B, (s*W + r + 1) * B)` of it (W ranks, B per-rank batch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        start = (step * self.world_size + self.rank) * self.batch_size
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.batch_size)]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def step_batch_loader(
    dataset: Dataset, trainer: L.Trainer | None, batch_size: int, seed: int, num_workers: int
) -> DataLoader:
    """The training DataLoader: `StepBatchSampler` batches from the trainer's step on, sharded by its rank.

    Lightning builds it after restoring a checkpoint (it sets up data last), so global_step is the resumed one;
    an optimizer step takes `trainer.accumulate_grad_batches` batches.
    """
    sampler = StepBatchSampler(
        len(dataset),
        batch_size,
        seed,
        start_step=trainer.global_step * trainer.accumulate_grad_batches if trainer else 0,
        rank=trainer.global_rank if trainer else 0,
        world_size=trainer.world_size if trainer else 1,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def ordered_loader(dataset: Dataset, trainer: L.Trainer | None, batch_size: int, num_workers: int) -> DataLoader:
    """A held-out split in order, each rank taking its share (`DistributedSampler`) when there are several."""
    sampler = None
    if trainer is not None and trainer.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


# ------------------------------------------------------------------------------------------ module
def save_grid_rows(img_RCB3HW: torch.Tensor, path: Path) -> None:
    """Images [rows, cols, 3, H, W] in [0, 1] as one PNG (row r of the grid = img[r]), written atomically."""
    rows = [torch.cat(list(r.detach().float().cpu().clamp(0, 1)), dim=2) for r in img_RCB3HW]  # [3, H, C*W] each
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()  # [R*H, C*W, 3]
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


# -------------------------------------------------------------------------------------- throughput
def _samples(batch) -> int:
    return len(batch[1])  # both stages' batches are (inputs, labels)


def _tokens(tokens_per_sample: int, batch) -> int:
    return len(batch[1]) * tokens_per_sample


def throughput_monitor(cfg: RunConfig, tokens_per_sample: int = 0) -> ThroughputMonitor:
    """Lightning's `ThroughputMonitor`, measured over the last `log_every_n_steps` batches and logged at the
    logging steps by rank 0: `train/device/samples_per_sec` (per device), with `tokens_per_sample`
    `train/device/items_per_sec` (tokens per second per device), on several devices also `train/samples_per_sec`
    and `train/items_per_sec` (all devices), besides the running totals `train/samples`, `train/batches`,
    `train/lengths` (tokens) and `train/time` (seconds); the same under `validate/` for a validation loop."""
    length_fn = partial(_tokens, tokens_per_sample) if tokens_per_sample else None
    return ThroughputMonitor(batch_size_fn=_samples, length_fn=length_fn, window_size=max(2, cfg.log_every_n_steps))


# ------------------------------------------------------------------------------------- checkpoints
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
            raise CheckpointError(f"cannot read checkpoint {path}: {_reason(err)}") from err


# What `torch.load(weights_only=True)` may build besides tensors, containers and plain values. A checkpoint of
# both trainings holds nothing else (their state is tensors, numbers, strings, lists and dicts): the list is
# empty on purpose, and a type is added here only when a checkpoint this project writes needs it.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def _reason(err: Exception) -> str:
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


# ------------------------------------------------------------------------------- non-finite values
def _kept(out_dir: str | os.PathLike) -> str:
    last = Path(out_dir) / "checkpoints" / LAST
    return f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"


def skip_nonfinite(module: L.LightningModule, what: str, value: torch.Tensor, hint: str) -> bool:
    """True when `value` (a loss, a gradient norm) is not finite on some rank: the caller skips this step's
    update. The run stops (TrainingError naming the step) once more than the config's `nonfinite_steps`
    steps were so; every rank decides alike."""
    bad = not bool(torch.isfinite(value.detach()).all())
    if not module.trainer.strategy.reduce_boolean_decision(bad, all=False):
        return False
    cfg = module.cfg
    module._nonfinite_steps = getattr(module, "_nonfinite_steps", 0) + 1
    shown = float(value.detach().float().flatten()[0]) if value.numel() else value
    if module._nonfinite_steps > cfg.nonfinite_steps:
        raise TrainingError(
            f"the {what} is {shown} at step {module.global_step}: training stopped before the update "
            f"({module._nonfinite_steps} non-finite steps, nonfinite_steps={cfg.nonfinite_steps}); "
            f"{_kept(cfg.out_dir)}. {hint}, then resume=true"
        )
    log.warning(
        "the %s is %s at step %d: its update is skipped (%d of nonfinite_steps=%d)",
        what, shown, module.global_step, module._nonfinite_steps, cfg.nonfinite_steps,
    )  # fmt: skip
    return True


def check_finite_weights(checkpoint: dict[str, Any], out_dir: str | os.PathLike, hint: str) -> None:
    """Refuse to write a checkpoint (or, through it, an export) whose weights are not finite: TrainingError
    naming the step and the first such tensor; the previous checkpoints stay as they were."""
    for key, value in checkpoint.get("state_dict", {}).items():
        if type(value) is torch.Tensor and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TrainingError(
                f"the weights are not finite after step {checkpoint.get('global_step')} ({key}): nothing is "
                f"saved or exported; {_kept(out_dir)}. {hint}, then resume=true"
            )


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
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(err)}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no state_dict and global_step)")
    return int(ckpt["global_step"])


def _resume_value(resume: str) -> str | None:
    """`resume` as Lightning's `ckpt_path`: None (fresh), "last" or the path given."""
    value = str(resume).strip()
    if value.lower() in ("", "false", "no", "none", "0"):
        return None
    return "last" if value.lower() in ("last", "true", "yes", "1") else value


def _checkpoints(folder: Path) -> list[Path]:
    """The run's checkpoints, newest first; last.ckpt wins a tie with the step checkpoint written just before it."""
    candidates = [p for p in [folder / LAST, *folder.glob("step*.ckpt")] if p.is_file()]
    return sorted(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST), reverse=True)


def newest_loadable(folder: Path) -> str | None:
    """The checkpoint in `folder` of the highest training step among those that load (last.ckpt on a tie;
    those that do not load are named in a warning with the reason), or None when it holds none; a
    TrainingError when none of them loads. The step is read from each file, not its time: a copied or
    touched file does not take a run back."""
    skipped, intact = [], []
    for path in _checkpoints(folder):
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
    value = _resume_value(resume)
    if value is None:
        return None
    if value == "last":
        return newest_loadable(Path(out_dir) / "checkpoints")
    if not Path(value).is_file():
        raise TrainingError(f"resume checkpoint not found: {value}")
    probe_checkpoint(value)
    return value


def prepare_run_folder(out_dir: str | os.PathLike) -> None:
    """Remove the temporaries that killed runs left in `out_dir` (checkpoints, grids, exports)."""
    for path in remove_stale_temporaries(out_dir, recursive=True):
        log.info("removed %s, left behind by an interrupted run", path)


def previous_run(out_dir: str | os.PathLike) -> list[Path]:
    """What of an earlier run `out_dir` holds: its checkpoints and its exported folders."""
    out = Path(out_dir)
    found = sorted(p for p in (out / "checkpoints").glob("*.ckpt") if p.is_file())
    return found + [out / name for name in EXPORTS if (out / name / "config.yaml").is_file()]


def check_run_folder(cfg: RunConfig) -> None:
    """Refuse to start a fresh run over another: a folder that holds a run takes `resume=true`
    or `overwrite=true`, which removes the old checkpoints and says so; a `resume=PATH` from elsewhere
    is refused there too (the new run's pruning would delete the folder's own checkpoints)."""
    found = previous_run(cfg.out_dir)
    if not found:
        return
    value = _resume_value(cfg.resume)
    names = ", ".join(str(p.relative_to(cfg.out_dir)) for p in found[:4]) + (", ..." if len(found) > 4 else "")
    if value is None and not cfg.overwrite:
        raise TrainingError(
            f"out_dir={cfg.out_dir} holds a run ({names}): pass resume=true to continue it, overwrite=true to "
            f"start afresh (its checkpoints are removed), or choose another out_dir"
        )
    own = (Path(cfg.out_dir) / "checkpoints").resolve()
    if value not in (None, "last") and Path(value).resolve().parent != own:
        raise TrainingError(
            f"resume={value} continues a checkpoint of another folder, but out_dir={cfg.out_dir} holds a run of "
            f"its own ({names}): choose an empty out_dir"
        )
    if cfg.overwrite:
        old = [p for p in found if p.suffix == ".ckpt"]
        for path in old:
            path.unlink(missing_ok=True)
        if old:
            log.warning("overwrite=true: removed the %d checkpoints of the previous run in %s", len(old), own)


def is_launching_process() -> bool:
    """Whether this process is the run's global rank 0, from the launchers' environment (torchrun's RANK,
    SLURM's SLURM_PROCID, Lightning's NODE_RANK and LOCAL_RANK): known before any process group exists."""
    env = os.environ
    for name in ("RANK", "SLURM_PROCID"):
        if env.get(name, "").strip().isdigit():
            return int(env[name]) == 0
    return all(int(env.get(name, "0") or 0) == 0 for name in ("NODE_RANK", "GROUP_RANK", "LOCAL_RANK"))


def run_folder_lock(out_dir: str | os.PathLike) -> contextlib.AbstractContextManager:
    """The lock a training holds on `out_dir` for its whole run (`scaffold.lock.folder_lock`), taken by
    global rank 0 only: the other ranks of the same run write there too."""
    return folder_lock(out_dir) if is_launching_process() else contextlib.nullcontext(None)


def start_run(cfg: RunConfig) -> str | None:
    """Seed every RNG, refuse a folder that holds another run (`check_run_folder`), remove what killed
    runs left in out_dir, and return `trainer.fit`'s `ckpt_path`. Call it holding `run_folder_lock`."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if is_launching_process():
        check_run_folder(cfg)
    prepare_run_folder(cfg.out_dir)
    return cfg.ckpt_path()


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
    """`trainer.fit` with one clear message for an out-of-memory batch or settings Lightning refuses (a
    `trainer.*` argument that does not fit the module, such as accumulate_grad_batches under manual
    optimization), Ctrl-C kept as an interruption (the last step checkpoint stays, nothing is exported),
    and a final out_dir/checkpoints/last.ckpt."""
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except MisconfigurationException as err:
        raise TrainingError(f"Lightning refused the run's settings: {' '.join(str(err).split())}") from err
    except torch.OutOfMemoryError as err:
        raise TrainingError(
            f"batch_size={batch_size} per device does not fit in memory ({str(err).splitlines()[0]}). "
            f"Lower it (e.g. batch_size={max(1, batch_size // 2)}{hint}), use precision=bf16-mixed, "
            f"or spread the batch over more devices (trainer.devices)."
        ) from err
    if trainer.interrupted:
        # Lightning returns from fit on Ctrl-C, possibly mid-step: keep the last step checkpoint, export nothing.
        raise KeyboardInterrupt
    trainer.save_checkpoint(Path(out_dir) / "checkpoints" / LAST, weights_only=False)


class _LightningChatter(logging.Filter):
    """Drops Lightning's lines that say nothing about the run: advertising tips, accelerators this
    project never uses, and the end-of-fit notice (the command says itself where its result went)."""

    NOISE = ("💡 Tip:", "TPU available:", "HPU available:", "`Trainer.fit` stopped:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


def quiet_lightning() -> None:
    """Only the project's progress and real warnings on the console: Lightning's chatter is
    filtered where it is logged, and its use of a torch API that torch deprecated (not ours to fix) is
    not reported on every run. Idempotent."""
    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _LightningChatter) for f in chatter.filters):
        chatter.addFilter(_LightningChatter())
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    # A resumed run reuses its own checkpoint folder, and its batches follow from (seed, step, rank) through
    # `StepBatchSampler`, so Lightning's "not empty" and "dataloader is not resumable" warnings are false here.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # `throughput_monitor` logs rates; the trainings measure no FLOPs (so no MFU) and need not be told so.
    warnings.filterwarnings(
        "ignore", message=r"When using the `ThroughputMonitor`, you need to define a `flops_per_batch`"
    )


def progress_bar(enabled: bool) -> list[Callback]:
    """A rich progress bar of training steps ("step 300/1200": the trainings run by max_steps in one endless
    epoch, where Lightning's own bar would say "Epoch 0/-2") when `rich` is installed, else (empty list)
    Lightning's default TQDM bar."""
    if not enabled:
        return []
    try:
        import rich  # noqa: F401
    except ImportError:
        return []
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        @property
        def total_train_batches(self):
            steps = self.trainer.max_steps
            return steps if steps and steps > 0 else super().total_train_batches

        def _get_train_description(self, current_epoch: int) -> str:
            return f"{'step':{len(self.validation_description)}}"

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            super().on_train_epoch_start(trainer, pl_module)
            self._update(self.train_progress_bar_id, trainer.global_step)  # a resumed run starts where it was

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self._update(self.train_progress_bar_id, trainer.global_step)

    return [StepProgressBar(leave=True)]


def make_trainer(cfg: RunConfig, callbacks: Sequence[Callback] = (), **kwargs) -> L.Trainer:
    """The Trainer of a run: step checkpoints (`StepCheckpoint`) written by `AtomicCheckpointIO`, the chosen
    logger (`make_logger`), the progress bar (`progress_bar`), no sanity validation, and batches sharded by `StepBatchSampler`; then the config's
    `trainer.extra` arguments, and `kwargs` add or override."""
    tc = cfg.trainer
    quiet_lightning()
    # The frozen tokenizer, the perceptual net and the EMA copy stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    args = dict(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        precision=training_precision(cfg.precision, tc.accelerator),
        accelerator=tc.accelerator,
        devices=parse_devices(tc.devices),
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        log_every_n_steps=cfg.log_every_n_steps,
        num_sanity_val_steps=0,
        callbacks=[
            StepCheckpoint(cfg.out_dir, cfg.ckpt_every_n_steps, cfg.keep_checkpoints),
            *progress_bar(tc.progress_bar),
            *callbacks,
        ],
        plugins=[AtomicCheckpointIO()],
        logger=make_logger(cfg.logger, cfg.out_dir),
        default_root_dir=cfg.out_dir,
        use_distributed_sampler=False,  # StepBatchSampler shards by rank itself
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
    )
    taken = set(tc.extra) & set(kwargs)
    if taken:
        key = sorted(taken)[0]
        raise ConfigError(
            f"trainer.{key} is not passed to lightning.Trainer: this training sets it ({key}={kwargs[key]!r})"
        )
    args.update(tc.extra)
    args.update(kwargs)
    try:
        return L.Trainer(**args)
    except (MisconfigurationException, TypeError, ValueError) as err:
        if not tc.extra:
            raise
        given = ", ".join(f"trainer.{key}={value!r}" for key, value in tc.extra.items())
        raise ConfigError(
            f"lightning.Trainer refused {given}: {str(err).splitlines()[0] if str(err) else err!r}"
        ) from err


def run_training(args: argparse.Namespace, schema: type, train: Callable[[Any], Path], what: str) -> int:
    """The `run` of a training subcommand: load the config (`--config` files in order, `key=value`s), train,
    say where `what` went."""
    cfg = load_config(schema, args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = train(cfg)
    if rank_zero_only.rank == 0:
        print(f"{what} written to {out}")
    return 0

"""A training run from start to end, as both trainings drive it: the command's entry (`run_training`), the
run folder (`run_folder_lock`, `start_run`), the Lightning Trainer (`make_trainer`) and the fit
(`fit_and_checkpoint`).

`tokenizer/train.py` and `var/train.py` hold what a step of each does; around it the scaffold gives the
run's config (`scaffold.run_config`), its batches (`scaffold.batches`), its checkpoints and resume
(`scaffold.resume`), its divergence checks (`scaffold.nonfinite`), what it reports (`scaffold.loggers`,
`scaffold.console`) and this module, which puts them together.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from .config import ConfigError, load_config
from .console import progress_bar, quiet_lightning
from .errors import TrainingError
from .io import remove_stale_temporaries
from .lock import folder_lock
from .loggers import make_logger
from .precision import training_precision
from .resume import LAST, AtomicCheckpointIO, StepCheckpoint, checkpoint_folder, resume_value
from .run_config import RunConfig

__all__ = [
    "check_run_folder",
    "fit_and_checkpoint",
    "is_launching_process",
    "make_trainer",
    "parse_devices",
    "prepare_run_folder",
    "previous_run",
    "run_folder_lock",
    "run_training",
    "start_run",
]

log = logging.getLogger(__name__)

EXPORTS = ("model", "tokenizer")  # the folders the trainings export into out_dir


# --------------------------------------------------------------------------------------- the run folder
def prepare_run_folder(out_dir: str | os.PathLike) -> None:
    """Remove the temporaries that killed runs left in `out_dir` (checkpoints, grids, exports)."""
    for path in remove_stale_temporaries(out_dir, recursive=True):
        log.info("removed %s, left behind by an interrupted run", path)


def previous_run(out_dir: str | os.PathLike) -> list[Path]:
    """What of an earlier run `out_dir` holds: its checkpoints and its exported folders."""
    out = Path(out_dir)
    found = sorted(p for p in checkpoint_folder(out).glob("*.ckpt") if p.is_file())
    return found + [out / name for name in EXPORTS if (out / name / "config.yaml").is_file()]


def check_run_folder(cfg: RunConfig) -> None:
    """Refuse to start a fresh run over another: a folder that holds a run takes `resume=true`
    or `overwrite=true`, which removes the old checkpoints and says so; a `resume=PATH` from elsewhere
    is refused there too (the new run's pruning would delete the folder's own checkpoints)."""
    found = previous_run(cfg.out_dir)
    if not found:
        return
    value = resume_value(cfg.resume)
    names = ", ".join(str(p.relative_to(cfg.out_dir)) for p in found[:4]) + (", ..." if len(found) > 4 else "")
    if value is None and not cfg.overwrite:
        raise TrainingError(
            f"out_dir={cfg.out_dir} holds a run ({names}): pass resume=true to continue it, overwrite=true to "
            f"start afresh (its checkpoints are removed), or choose another out_dir"
        )
    own = checkpoint_folder(cfg.out_dir).resolve()
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
    trainer.save_checkpoint(checkpoint_folder(out_dir) / LAST, weights_only=False)


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

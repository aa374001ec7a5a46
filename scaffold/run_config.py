"""The config keys every training run has (`RunConfig`) and its `trainer:` section (`TrainerConfig`).

Each stage's config (`tokenizer.train.TokenizerTrainConfig`, `var.train.VARTrainConfig`) subclasses
`RunConfig` and adds its model, data and optimizer; `scaffold.config.load_config` fills and validates them.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lightning as L

from .loggers import LOGGERS
from .precision import TRAINING_PRECISIONS
from .resume import checkpoint_files, checkpoint_folder, find_resume_checkpoint, resume_value

__all__ = ["RunConfig", "TrainerConfig"]

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed_everything's range


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
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}; got {self.precision!r}")
        for name in ("max_steps", "batch_size", "ckpt_every_n_steps", "keep_checkpoints", "log_every_n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.nonfinite_steps < 0:
            raise ValueError(f"nonfinite_steps must be >= 0 (0 stops at the first), got {self.nonfinite_steps}")
        if self.overwrite and resume_value(self.resume) is not None:
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
        value = resume_value(self.resume)
        if value == "last" and not checkpoint_files(checkpoint_folder(self.out_dir)):
            log.info("resume=last: %s holds no checkpoint yet, starting a fresh run", Path(self.out_dir))
            return None
        if value not in (None, "last"):
            find_resume_checkpoint(self.out_dir, value)
        return value

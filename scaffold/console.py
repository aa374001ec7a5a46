"""What a training run shows on the console: a progress bar counting steps, and only those of Lightning's
lines and warnings that say something about the run."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import Callback

__all__ = ["progress_bar", "quiet_lightning"]


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

"""A run that diverges: a non-finite loss or gradient norm skips its step's update, up to the config's
`nonfinite_steps`, then stops the run; non-finite weights are never checkpointed or exported.

Both messages name the step and the last good checkpoint, so the user knows what resuming keeps.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch

from .errors import TrainingError
from .resume import LAST, checkpoint_folder

__all__ = ["check_finite_weights", "skip_nonfinite"]

log = logging.getLogger(__name__)


def _kept(out_dir: str | os.PathLike) -> str:
    last = checkpoint_folder(out_dir) / LAST
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

"""What a training run reports under its out_dir: the metrics logger (`logger=csv|tensorboard|wandb|none`
in its config), the throughput it logs there, and image grids.

CSV needs nothing beyond Lightning; TensorBoard and W&B are optional packages, named in the error when
they are missing. Every logger writes under the run's out_dir. What the console shows (the progress bar,
Lightning's own lines) is `scaffold.console`.
"""

from __future__ import annotations

import importlib
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger, Logger
from PIL import Image

from .config import ConfigError
from .io import atomic_path

if TYPE_CHECKING:
    from .run_config import RunConfig

__all__ = ["LOGGERS", "make_logger", "save_grid_rows", "throughput_monitor"]

LOGGERS = ("csv", "tensorboard", "wandb", "none")

# The packages a logger runs on (the first importable one is used; the first is pip's name for it).
_LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def make_logger(kind: str, out_dir: str | os.PathLike) -> Logger | bool:
    """The run's metrics logger, writing under out_dir: `kind` is one of LOGGERS ("none": False, no logger).

    TensorBoard and W&B are optional packages: without them this is a ConfigError naming `logger` and the
    package to install. W&B takes its project from WANDB_PROJECT (default "nextscale") and names the run
    after out_dir; WANDB_MODE=offline keeps it on disk.
    """
    if kind == "csv":
        return CSVLogger(out_dir, name="logs")
    if kind == "none":
        return False
    if kind not in _LOGGER_PACKAGES:
        raise ConfigError(f"logger must be one of {', '.join(LOGGERS)}; got {kind!r}")
    if not any(_importable(package) for package in _LOGGER_PACKAGES[kind]):
        package = _LOGGER_PACKAGES[kind][0]
        raise ConfigError(f"logger={kind} needs the {package} package: pip install {package} (or logger=csv)")
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    if kind == "tensorboard":
        return TensorBoardLogger(out_dir, name="logs")
    project = os.environ.get("WANDB_PROJECT", "nextscale")
    return WandbLogger(name=Path(out_dir).resolve().name, save_dir=out_dir, project=project)


def _importable(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


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


def save_grid_rows(img_RCB3HW: torch.Tensor, path: Path) -> None:
    """Images [rows, cols, 3, H, W] in [0, 1] as one PNG (row r of the grid = img[r]), written atomically."""
    rows = [torch.cat(list(r.detach().float().cpu().clamp(0, 1)), dim=2) for r in img_RCB3HW]  # [3, H, C*W] each
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()  # [R*H, C*W, 3]
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")

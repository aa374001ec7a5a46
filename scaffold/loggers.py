"""The metrics logger a training run writes to: `logger=csv|tensorboard|wandb|none` in its config.

CSV needs nothing beyond Lightning; TensorBoard and W&B are optional packages, named in the error when
they are missing. Every logger writes under the run's out_dir.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

from .config import ConfigError

__all__ = ["LOGGERS", "make_logger"]

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

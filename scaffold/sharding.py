"""FSDP for the trainings: a strategy that shards the EMA copy exactly as the live weights, full weights on
demand for sampling, and the full state dict for the export.

`scaffold.ema.EMA` averages parameter by parameter. Lightning's `strategy="fsdp"` wraps the whole
LightningModule as one FSDP unit, which cuts the live model and its EMA copy at different places on each
rank; `fsdp_strategy` instead makes every instance of the given model classes its own unit, so that both
copies are flattened and sharded identically and each rank averages its own shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

__all__ = ["FSDP_STRATEGIES", "clip_gradients", "fsdp_strategy", "full_state_dict", "full_weights"]

FSDP_STRATEGIES = ("fsdp", "fsdp_cpu_offload")


def fsdp_strategy(name: str, units: set[type[nn.Module]]) -> FSDPStrategy | str:
    """`name` as Lightning takes it, except the FSDP strategies: those wrap each instance of `units` (the
    model class, of which the EMA holds a second instance) as its own FSDP unit, with the original parameters
    kept (`use_orig_params`, Lightning's default) so the optimizer and the EMA see them by name and identity."""
    if name not in FSDP_STRATEGIES:
        return name
    return FSDPStrategy(auto_wrap_policy=ModuleWrapPolicy(units), cpu_offload=name == "fsdp_cpu_offload")


def clip_gradients(module: L.LightningModule, optimizer, value: float | None, algorithm: str | None) -> None:
    """`LightningModule.configure_gradient_clipping` that also clips under FSDP, where Lightning's precision
    plugin refuses to clip by norm: the root FSDP module's `clip_grad_norm_` takes the norm over all shards."""
    root = module.trainer.strategy.model
    if isinstance(root, FullyShardedDataParallel) and value:
        if algorithm not in (None, "norm"):
            raise ValueError(f"under FSDP gradients are clipped by norm only, not by {algorithm!r}")
        root.clip_grad_norm_(value)
    else:
        module.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)


@contextlib.contextmanager
def full_weights(module: L.LightningModule, *units: nn.Module) -> Iterator[None]:
    """The whole weights, for the duration and not written back, of the parts of `module` outside every FSDP
    unit (such as a frozen tokenizer) and of `units` (FSDP units of `module`, such as the EMA's model).

    Under FSDP every rank must enter (the shards are all-gathered); otherwise there is nothing to gather.
    """
    root = module.trainer.strategy.model
    if not isinstance(root, FullyShardedDataParallel):
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(FullyShardedDataParallel.summon_full_params(root, writeback=False, recurse=False))
        for unit in units:
            stack.enter_context(FullyShardedDataParallel.summon_full_params(unit, writeback=False))
        yield


def full_state_dict(trainer: L.Trainer, prefix: str) -> dict[str, torch.Tensor]:
    """The weights under `prefix` (e.g. "ema.module.") of the trainer's LightningModule, without the prefix.

    Every rank must call it: under FSDP the shards are gathered onto rank 0 (the other ranks get an empty dict).
    """
    state = trainer.strategy.lightning_module_state_dict()
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

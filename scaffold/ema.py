"""The exponential moving average of a model's weights: `torch.optim.swa_utils.AveragedModel` with an EMA
averaging function whose decay warms up, so that short runs still average.

`EMA` is a submodule of the LightningModule (not Lightning's `WeightAveraging` callback, which keeps its
copy outside the strategy's wrapping and so cannot shard it): its weights are checkpointed, restored on
resume and sharded like every other weight of the module. Under FSDP each copy of the model must be its
own FSDP unit wrapped by the same policy (`var.train.build_trainer` wraps every `VAR`); then the EMA copy
and the live model are cut into identical local shards and the update is one elementwise lerp per rank,
with no communication.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["EMA", "ema_decay"]


def ema_decay(decay: float, warmup: int, n_averaged: int) -> float:
    """The decay of update `n_averaged` (counting the initial copy as 1): min(decay, n / (warmup + n))."""
    return min(decay, n_averaged / (warmup + n_averaged))


class EMA(AveragedModel):
    """`ema = d * ema + (1 - d) * model` after every optimizer step, with `d = ema_decay(decay, warmup, n)`.

    The copy starts as the model's weights (the first average, n = 1); `update_parameters(model)`
    averages the parameters (one `torch._foreach_lerp_` per device and dtype) and copies the buffers.
    Its state dict holds the averaged module under `module.` and the update count `n_averaged`.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: int = 10):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        super().__init__(model, multi_avg_fn=self._lerp, use_buffers=False)
        self.requires_grad_(False)
        self.update_parameters(model)  # AveragedModel's first update copies the weights

    def _lerp(self, ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay(self.decay, self.warmup, int(n_averaged))
        torch._foreach_lerp_(ema, [c.to(e.dtype) for e, c in zip(ema, current)], weight)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        for own, live in zip(self.module.buffers(), model.buffers(), strict=True):
            own.copy_(live)

"""The transformer's optimizer settings: AdamW groups with weight decay on matrices only, and the lr schedule.

Both follow the published VAR recipe (VAR train.py and utils/lr_control.py); `var.train` uses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

__all__ = ["NO_DECAY_KEYS", "OptimConfig", "lr_factor", "param_groups"]

# Parameters kept out of weight decay besides 1-D ones and embedding tables: the published `nowd_keys`
# (VAR train.py: pos_1LC, pos_start, lvl_embed, ada_gss, scale_mul, ...) plus the per-channel gains of the
# GSPN mixer, which are 2-D only because they stack one vector per scan direction.
NO_DECAY_KEYS = ("pos_start", "pos_1LC", "lvl_embed", "class_emb", "ada_gss", "scale_mul", "skip_d", "merge_w")


@dataclass
class OptimConfig:
    base_lr: float = 1e-4  # per 256 images of global batch (published tblr)
    lr: float = 0.0  # > 0 overrides base_lr * global_batch / 256
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.05  # matrices only (see param_groups)
    warmup_steps: int = 0
    warmup_start_ratio: float = 0.005  # lr ratio at step 0 of the warmup (published wp0)
    schedule: str = "cosine"  # after warmup: "cosine", "linear" or "constant"
    min_lr_ratio: float = 0.1  # final lr / peak lr (published wpe)
    grad_clip: float = 2.0  # max global grad norm (published tclip); 0 turns it off
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if self.base_lr <= 0 or self.lr < 0:
            raise ValueError("optim.base_lr must be > 0 and optim.lr >= 0")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 < self.warmup_start_ratio <= 1.0:
            raise ValueError("optim.min_lr_ratio must be in [0, 1] and optim.warmup_start_ratio in (0, 1]")
        if self.grad_clip < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("optim.grad_clip, optim.warmup_steps and optim.weight_decay must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], list[str], list[str]]:
    """AdamW groups: weight decay on matrices (Linear weights, conv kernels, memory slots) only.

    Not on 1-D parameters (biases, q/v biases), embedding tables (class, scale), position embeddings,
    or `NO_DECAY_KEYS`. Returns (groups, decayed names, undecayed names).
    """
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in tables or any(key in name for key in NO_DECAY_KEYS):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups, decay_names, no_decay_names


def lr_factor(step: int, o: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak lr at `step`: linear warmup from warmup_start_ratio, then the decay to min_lr_ratio."""
    if step < o.warmup_steps:
        return o.warmup_start_ratio + (1 - o.warmup_start_ratio) * step / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    t = min(1.0, (step - o.warmup_steps) / max(1, max_steps - 1 - o.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * t)) if o.schedule == "cosine" else 1 - t
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape

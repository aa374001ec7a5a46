"""Codebook health while training: per-scale usage over a window of recent steps, and dead-code restart.

The codebook is shared by all scales (docs/architecture.md section 4), so a code is dead only when no scale hit
it during the window. Dead codes are re-seeded from residual vectors the quantizer saw recently
(the `z_NC` of `QuantizerOutput`), as in Dhariwal et al. 2020 ("Jukebox", section 3.2, random
restarts) and Zeghidour et al. 2021 ("SoundStream", section 3.3). Under DDP the hit counts are
all-reduced before deciding, and rank 0's new codes are broadcast, so every rank keeps one codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["CodebookUsage", "restart_dead_codes", "usage_fractions"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CodebookUsage(nn.Module):
    """Hit counts of the last `window` steps per scale, and a pool of recent residual vectors.

    Both are buffers, so they travel in checkpoints and a resumed run decides exactly as an
    uninterrupted one. Memory: `window * S * V` floats (100 x 10 x 4096 = 16 MB) plus the pool.
    """

    def __init__(self, num_scales: int, vocab_size: int, c_vae: int, window: int = 100, pool_size: int = 4096):
        super().__init__()
        self.window, self.pool_size = window, pool_size
        self.register_buffer("hits_WSV", torch.zeros(window, num_scales, vocab_size))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("pool_NC", torch.zeros(pool_size, c_vae))
        self.register_buffer("pool_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("restarted_total", torch.zeros((), dtype=torch.long))  # codes re-seeded so far

    @torch.no_grad()
    def update(
        self,
        idx_Bl: list[torch.Tensor],
        z_NC: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Record one step's indices (and residuals); returns this step's hit counts [S, V].

        `generator` (CPU) picks the pooled residuals; seed it from the step for exact resumes.
        """
        V = self.hits_WSV.shape[2]
        hits_SV = torch.stack([torch.bincount(idx.flatten(), minlength=V)[:V] for idx in idx_Bl]).float()
        slot = int(self.steps_seen) % self.window
        self.hits_WSV[slot] = hits_SV.to(self.hits_WSV)
        self.steps_seen += 1
        if z_NC:
            # The newest residuals of every scale, at most pool_size of them (a random subset).
            z = torch.cat([t.float() for t in z_NC]).to(self.pool_NC)
            if z.shape[0] > self.pool_size:
                z = z[torch.randperm(z.shape[0], generator=generator)[: self.pool_size].to(z.device)]
            self.pool_NC[: z.shape[0]] = z
            self.pool_filled.fill_(z.shape[0])
        return hits_SV

    @property
    def window_full(self) -> bool:
        return int(self.steps_seen) >= self.window

    @torch.no_grad()
    def window_hits(self) -> torch.Tensor:
        """Hits per scale and code over the window, summed over all ranks under DDP: [S, V]."""
        hits_SV = self.hits_WSV[: min(int(self.steps_seen), self.window)].sum(0)
        if _distributed():
            dist.all_reduce(hits_SV, op=dist.ReduceOp.SUM)
        return hits_SV


def usage_fractions(hits_SV: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(fraction of the V codes hit at each scale [S], fraction hit by any scale)."""
    used_SV = hits_SV > 0
    return used_SV.float().mean(1), used_SV.any(0).float().mean().item()


@torch.no_grad()
def restart_dead_codes(
    embedding: nn.Embedding, hits_SV: torch.Tensor, pool_NC: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Re-seed every code that no scale hit (`hits_SV.sum(0) == 0`) with a vector drawn from `pool_NC`.

    Used codes are left untouched. Rank 0 draws the vectors and broadcasts them, so every rank
    writes the same rows (the dead set is the same everywhere when `hits_SV` was all-reduced).
    Returns the indices of the restarted codes.
    """
    dead_D = torch.nonzero(hits_SV.sum(0) == 0).flatten().to(embedding.weight.device)
    if dead_D.numel() == 0 or pool_NC.shape[0] == 0:
        return dead_D[:0]
    # Without replacement while the pool is large enough, so restarted codes start apart.
    n, D = pool_NC.shape[0], dead_D.numel()
    if n >= D:
        pick = torch.randperm(n, generator=generator)[:D]
    else:
        pick = torch.randint(n, (D,), generator=generator)
    new_DC = pool_NC[pick.to(pool_NC.device)].to(embedding.weight)
    if _distributed():
        dist.broadcast(new_DC, src=0)
    embedding.weight[dead_D] = new_DC
    return dead_D

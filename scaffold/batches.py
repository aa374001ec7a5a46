"""The batches a run reads: endless training batches that are a function of (seed, step, rank), so a resumed
run sees what the uninterrupted one would have, and held-out splits in order."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["StepBatchSampler", "ordered_loader", "step_batch_loader"]


class StepBatchSampler(Sampler[list[int]]):
    """Endless random batches that are a function of (seed, step, rank) only, so a resumed run sees
    exactly the batches the uninterrupted run would have seen. `start_step` skips the done steps.

    The global stream is one permutation of the dataset per pass; step s of rank r takes the
    positions `[(s*W + r) * B, (s*W + r + 1) * B)` of it (W ranks, B per-rank batch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        start = (step * self.world_size + self.rank) * self.batch_size
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.batch_size)]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def step_batch_loader(
    dataset: Dataset, trainer: L.Trainer | None, batch_size: int, seed: int, num_workers: int
) -> DataLoader:
    """The training DataLoader: `StepBatchSampler` batches from the trainer's step on, sharded by its rank.

    Lightning builds it after restoring a checkpoint (it sets up data last), so global_step is the resumed one;
    an optimizer step takes `trainer.accumulate_grad_batches` batches.
    """
    sampler = StepBatchSampler(
        len(dataset),
        batch_size,
        seed,
        start_step=trainer.global_step * trainer.accumulate_grad_batches if trainer else 0,
        rank=trainer.global_rank if trainer else 0,
        world_size=trainer.world_size if trainer else 1,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def ordered_loader(dataset: Dataset, trainer: L.Trainer | None, batch_size: int, num_workers: int) -> DataLoader:
    """A held-out split in order, each rank taking its share (`DistributedSampler`) when there are several."""
    sampler = None
    if trainer is not None and trainer.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )

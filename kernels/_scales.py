"""The token layout of a next-scale sequence, in one place: :class:`ScaleLayout` and the named schedules.

A patch schedule ``patch_nums`` lists the side of each square scale, coarse to fine; the sequence holds
``L = sum(p*p)`` tokens, the scales one after another and each scale row-major. Everything that needs
offsets, lengths, the scale of a token or the block-causal bounds asks :meth:`ScaleLayout.of` (the
tokenizer's quantizer, the transformer, the sampler, the kernels, the token cache, the benchmarks):
nothing else recomputes them. Layouts are immutable and cached, so asking costs a dict lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SCHEDULES", "ScaleLayout", "normalize_patch_nums"]

# The named patch schedules, typed once. 256 and 512 px are the published VAR models' (tokenizer and
# transformer); 1024 px is Infinity's square schedule up to 64x64 (VAR published no 1024 px model), used
# to measure how cost grows with resolution.
SCHEDULES: dict[str, tuple[int, ...]] = {
    "256": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),  # L = 680
    "512": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),  # L = 2240
    "1024": (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64),  # L = 10521
}


def normalize_patch_nums(patch_nums: Sequence[int]) -> tuple[int, ...]:
    """Return ``patch_nums`` as a tuple of positive Python ints, or raise ValueError naming it."""
    if isinstance(patch_nums, (str, bytes, torch.Tensor)) or not isinstance(patch_nums, Sequence):
        raise ValueError(f"patch_nums must be a list or tuple of positive ints, got {patch_nums!r}")
    if len(patch_nums) == 0:
        raise ValueError("patch_nums must hold at least one scale, got an empty sequence")
    for p in patch_nums:
        # bool is an int subclass; True as a scale size is certainly a mistake.
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(f"patch_nums must be a list or tuple of positive ints, got {tuple(patch_nums)!r}")
    return tuple(int(p) for p in patch_nums)


@dataclass(frozen=True)
class ScaleLayout:
    """Offsets, lengths and token-to-scale map of one patch schedule (build it with :meth:`of`).

    >>> layout = ScaleLayout.of((1, 2, 3))
    >>> layout.num_tokens, layout.sizes, layout.bounds
    (14, (1, 4, 9), ((0, 1), (1, 5), (5, 14)))
    """

    patch_nums: tuple[int, ...]
    sizes: tuple[int, ...]  # tokens of each scale, p*p
    bounds: tuple[tuple[int, int], ...]  # [begin, end) of each scale
    num_tokens: int  # L

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _build(patch_nums: tuple[int, ...]) -> ScaleLayout:
        sizes = tuple(p * p for p in patch_nums)
        bounds, begin = [], 0
        for n in sizes:
            bounds.append((begin, begin + n))
            begin += n
        return ScaleLayout(patch_nums, sizes, tuple(bounds), begin)

    @classmethod
    def of(cls, patch_nums: Sequence[int] | ScaleLayout) -> ScaleLayout:
        """The layout of ``patch_nums`` (checked: a non-empty sequence of positive ints), cached."""
        if isinstance(patch_nums, ScaleLayout):
            return patch_nums
        return cls._build(normalize_patch_nums(patch_nums))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def begin(self, si: int) -> int:
        """Offset of scale ``si``'s first token (the number of tokens before it)."""
        return self.bounds[si][0]

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where each scale begins, then L (``num_scales + 1`` entries)."""
        return (*(b for b, _ in self.bounds), self.num_tokens)

    def split(self, x: torch.Tensor, dim: int = 1) -> list[torch.Tensor]:
        """``x`` (``L`` long along ``dim``) cut into its scales."""
        return list(x.split(list(self.sizes), dim=dim))

    def scale_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Scale index of every token, a LongTensor ``[L]`` (the published VAR code's ``lvl_1L``)."""
        sizes_S = torch.tensor(self.sizes, device=device)
        # output_size: the length is known on the host, so no device sync (CUDA graphs, torch.compile).
        return torch.repeat_interleave(
            torch.arange(self.num_scales, device=device), sizes_S, output_size=self.num_tokens
        )

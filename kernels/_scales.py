"""Token layout of a next-scale sequence: scales coarse to fine, row-major inside each scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["normalize_patch_nums", "scale_boundaries", "token_scale_ids"]


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


def scale_boundaries(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
    """Per-scale ``[begin, end)`` token offsets: scale k holds tokens ``begin_k .. end_k - 1``.

    >>> scale_boundaries((1, 2, 3))
    [(0, 1), (1, 5), (5, 14)]
    """
    bounds = []
    begin = 0
    for p in normalize_patch_nums(patch_nums):
        bounds.append((begin, begin + p * p))
        begin += p * p
    return bounds


def token_scale_ids(patch_nums: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Scale index of every token, a LongTensor ``[L]`` (the published VAR code's ``lvl_1L``).

    The one token-layout helper of the project: the kernels and the model (``var.attention.scale_ids``)
    both use it."""
    pns = normalize_patch_nums(patch_nums)
    sizes_S = torch.tensor([p * p for p in pns], device=device)
    # output_size: the length is known on the host, so no device sync (CUDA graphs, torch.compile).
    return torch.repeat_interleave(torch.arange(len(pns), device=device), sizes_S, output_size=sum(p * p for p in pns))

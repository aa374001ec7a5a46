"""Host-built tile tables for Triton kernels over next-scale sequences (cached per patch_nums).

A tile is a run of at most ``block`` consecutive tokens that never straddles two scales, so a
program that owns a tile knows its scale's map size and offset from one table row.
"""

from __future__ import annotations

import functools

import torch

from ._scales import ScaleLayout

__all__ = ["TILE_COLUMNS", "scale_offsets", "tile_table"]

# Columns of a tile table row.
TILE_COLUMNS = ("scale_begin", "p", "tile_start", "scale_id")


@functools.lru_cache(maxsize=128)
def _tile_rows(patch_nums: tuple[int, ...], block: int) -> tuple[tuple[int, int, int, int], ...]:
    rows = []
    layout = ScaleLayout.of(patch_nums)
    for s, (p, n) in enumerate(zip(layout.patch_nums, layout.sizes)):
        rows += [(layout.begin(s), p, t0, s) for t0 in range(0, n, block)]
    return tuple(rows)


@functools.lru_cache(maxsize=128)
def tile_table(patch_nums: tuple[int, ...], block: int, device: torch.device) -> torch.Tensor:
    """``int32 [num_tiles, 4]`` rows ``(scale_begin, p, tile_start, scale_id)``; ``tile_start`` is
    the tile's first token inside its scale (row-major), the tile holds tokens
    ``tile_start .. min(tile_start + block, p*p) - 1`` of that scale."""
    return torch.tensor(_tile_rows(patch_nums, block), dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=128)
def scale_offsets(patch_nums: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``int32 [num_scales + 1]``: token offset where each scale begins, then L."""
    return torch.tensor(ScaleLayout.of(patch_nums).offsets, dtype=torch.int32, device=device)

"""Host-side helpers shared by the Triton launchers of every op (imported only by ``*/triton.py``).

Together with :mod:`kernels._precision` (the fp32 dot precision), :mod:`kernels._tiles` (tile tables
over next-scale sequences) and :mod:`kernels._scales` (the token layout), these are the one place
for what the ops' kernels have in common.
"""

from __future__ import annotations

import triton

__all__ = ["LOG2E", "dot_block"]

LOG2E = 1.4426950408889634  # 1 / ln(2): the softmax kernels work with exp2


def dot_block(n: int) -> int:
    """Block size covering ``n`` along a ``tl.dot`` dimension: a power of two, at least 16 (the
    smallest dot size); the kernels mask the padding."""
    return max(16, triton.next_power_of_2(n))

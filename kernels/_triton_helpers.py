"""Triton helpers shared by the kernels of every op (imported only by ``*/triton.py``).

Three parts:

- host side: :data:`LOG2E` and :func:`dot_block`, used by the launchers, and the launches of the
  flash-attention kernels of block-causal and neighborhood attention (:func:`attention_forward`,
  :func:`attention_backward_launch`), which share one argument order;
- device side: ``@triton.jit`` functions the kernels call (Triton inlines them into each kernel):
  row blocks of a row-major ``[rows, D]`` matrix loaded and stored with masks, the
  online softmax of flash attention (its start, step and stored end), the backward's loads of the
  query rows and its recomputation (P, dS), and the row of a
  :func:`kernels._tiles.tile_table`;
- one shared kernel: the ``delta = rowsum(dO * O)`` preprocess of the attention backwards.

Together with :mod:`kernels._precision` (the fp32 dot precision), :mod:`kernels._tiles` (tile tables
over next-scale sequences) and :mod:`kernels._scales` (the token layout), these are the one place
for what the ops' kernels have in common. Names: ``p_`` pointers, ``o_``
offsets, ``m_`` masks, ``b_`` blocks, UPPER for constexpr.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import triton_interpret
from ._precision import dot_precision

__all__ = [
    "LOG2E",
    "attention_backward_launch",
    "attention_delta",
    "attention_dscores",
    "attention_forward",
    "attention_probs",
    "dot_block",
    "load_query_rows",
    "load_rows",
    "load_rows_t",
    "online_softmax_init",
    "online_softmax_step",
    "store_rows",
    "store_softmax_rows",
    "tile_row",
]

LOG2E = 1.4426950408889634  # 1 / ln(2): the softmax kernels work with exp2


def dot_block(n: int) -> int:
    """Block size covering ``n`` along a ``tl.dot`` dimension: a power of two, at least 16 (the
    smallest dot size); the kernels mask the padding."""
    return max(16, triton.next_power_of_2(n))


# ----------------------------------------------------------------------------------------------
# Host side: launches of the flash-attention kernels (block-causal and neighborhood attention)
#
# Their kernels take, in this order: the tensors (q, k, v, then the outputs of the forward, or
# dO, lse, delta and the gradients of the backward), the op's tile-table arguments, L and D, the
# op's own scalars, the scale (backward only) and the logit scale in base 2, then the constexprs
# BLOCK_D, PRECISION and the op's block sizes and launch options ``cfg``. One program per tile
# (grid axis 0) and per (batch, head) (axis 1).


def _attention_launch(kernel, num_tiles: int, tensors: tuple, tiles: tuple, args: tuple, cfg: dict) -> None:
    B, H, L, D = tensors[0].shape
    meta = dict(BLOCK_D=dot_block(D), PRECISION=dot_precision(tensors[0].dtype), **cfg)
    kernel[(num_tiles, B * H)](*tensors, *tiles, L, D, *args, **meta)


def attention_forward(
    kernel, num_tiles: int, qkv: tuple, tiles: tuple, args: tuple, scale: float, cfg: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a forward ``kernel`` on ``qkv``, contiguous ``[B, H, L, D]`` q, k, v: the output
    ``[B, H, L, D]`` and the base-2 log-sum-exp of each query row's logits times ``scale * LOG2E``,
    fp32 ``[B, H, L]``."""
    q_BHLD = qkv[0]
    B, H, L, _ = q_BHLD.shape
    o_BHLD = torch.empty_like(q_BHLD)
    lse_BHL = torch.empty((B, H, L), dtype=torch.float32, device=q_BHLD.device)
    _attention_launch(kernel, num_tiles, (*qkv, o_BHLD, lse_BHL), tiles, (*args, scale * LOG2E), cfg)
    return o_BHLD, lse_BHL


def attention_backward_launch(
    kernel, num_tiles: int, saved: tuple, grads: tuple, tiles: tuple, args: tuple, scale: float, cfg: dict
) -> None:
    """Run a backward ``kernel``: ``saved`` is ``(q, k, v, dO, lse, delta)`` (:func:`attention_delta`),
    ``grads`` the gradient buffers it writes."""
    _attention_launch(kernel, num_tiles, (*saved, *grads), tiles, (*args, scale, scale * LOG2E), cfg)


# ----------------------------------------------------------------------------------------------
# Device side: row blocks of a row-major [rows, D] matrix (a head of [B, H, L, D], a memory [S, D])


@triton.jit
def load_rows(p_x, o_r, m_r, o_d, D):
    """``[R, BLOCK_D]`` block of rows ``o_r`` of the row-major ``[*, D]`` matrix at ``p_x``; masked
    rows (``m_r`` false) and columns past ``D`` read 0."""
    return tl.load(p_x + o_r[:, None] * D + o_d[None, :], mask=m_r[:, None] & (o_d < D)[None, :], other=0.0)


@triton.jit
def load_rows_t(p_x, o_r, m_r, o_d, D):
    """The same rows transposed, ``[BLOCK_D, R]``: the right operand of ``q @ k^T``."""
    return tl.load(p_x + o_r[None, :] * D + o_d[:, None], mask=m_r[None, :] & (o_d < D)[:, None], other=0.0)


@triton.jit
def store_rows(p_x, o_r, m_r, o_d, D, b_x):
    """Store the ``[R, BLOCK_D]`` block ``b_x``, cast to the matrix's dtype, into rows ``o_r``."""
    tl.store(
        p_x + o_r[:, None] * D + o_d[None, :], b_x.to(p_x.dtype.element_ty), mask=m_r[:, None] & (o_d < D)[None, :]
    )


# ----------------------------------------------------------------------------------------------
# Device side: flash attention in base 2 (logits already multiplied by scale * LOG2E)


@triton.jit
def online_softmax_init(M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The running softmax of ``M`` query rows before any key: ``(b_max, b_sum, b_acc)`` of
    :func:`online_softmax_step`, -inf, 0 and 0 (fp32)."""
    return tl.full([M], float("-inf"), tl.float32), tl.zeros([M], tl.float32), tl.zeros([M, BLOCK_D], tl.float32)


@triton.jit
def online_softmax_step(b_s, b_v, b_max, b_sum, b_acc, PRECISION: tl.constexpr, EMPTY_ROWS: tl.constexpr):
    """Fold one block of keys into the running softmax of every query row.

    ``b_s [M, N]`` are the base-2 logits with invisible keys at -inf, ``b_v [N, BLOCK_D]`` the values;
    ``b_max``, ``b_sum [M]`` and ``b_acc [M, BLOCK_D]`` (fp32) are the row max, the row sum of
    ``exp2(s - max)`` and the unnormalised output so far. Returns them updated. ``EMPTY_ROWS``: a row
    may see no key of a block before it saw any at all; the max stays -inf, and exp2 is kept off
    ``-inf - -inf``. Without it (every row sees a key of the first block) the guard is not compiled.
    """
    b_max_new = tl.maximum(b_max, tl.max(b_s, 1))
    if EMPTY_ROWS:
        b_max_new_safe = tl.where(b_max_new == float("-inf"), 0.0, b_max_new)
    else:
        b_max_new_safe = b_max_new
    b_alpha = tl.exp2(b_max - b_max_new_safe)
    b_p = tl.exp2(b_s - b_max_new_safe[:, None])
    b_sum = b_sum * b_alpha + tl.sum(b_p, 1)
    b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PRECISION)
    return b_max_new, b_sum, b_acc


@triton.jit
def store_softmax_rows(p_o, p_lse, row0, o_r, m_r, o_d, D, b_max, b_sum, b_acc):
    """The end of the forward for query rows ``row0 + o_r`` (``p_o`` and ``p_lse`` at this (batch,
    head)): the output ``b_acc / b_sum`` and the base-2 log-sum-exp ``b_max + log2(b_sum)`` that
    :func:`attention_probs` recomputes the probabilities from.

    ``row0`` comes apart from ``o_r`` so the lse address is summed ``(p_lse + row0) + o_r`` as the
    kernels always did: summing ``row0 + o_r`` first changes the compiled kernels' registers."""
    store_rows(p_o, row0 + o_r, m_r, o_d, D, b_acc / b_sum[:, None])
    tl.store(p_lse + row0 + o_r, b_max + tl.log2(b_sum), mask=m_r)


@triton.jit
def load_query_rows(p_q, p_do, p_lse, p_delta, base, base_row, row0, o_r, m_r, o_d, D):
    """What the backward reads of query rows ``row0 + o_r`` of the (batch, head) whose ``[L, D]``
    matrices start at ``base`` and ``[L]`` rows at ``base_row``: q and dO ``[R, BLOCK_D]``, the saved
    log-sum-exp and delta ``[R]``; masked rows read 0.

    The bases and ``row0`` come in apart, not as offset pointers and rows, to keep the address
    arithmetic in the order and association the kernels had: otherwise ptxas allocates the
    backward kernels' registers differently, with more spills in some configurations."""
    b_q = load_rows(p_q + base, row0 + o_r, m_r, o_d, D)
    b_do = load_rows(p_do + base, row0 + o_r, m_r, o_d, D)
    b_lse = tl.load(p_lse + base_row + row0 + o_r, mask=m_r, other=0.0)
    b_delta = tl.load(p_delta + base_row + row0 + o_r, mask=m_r, other=0.0)
    return b_q, b_do, b_lse, b_delta


@triton.jit
def attention_probs(b_q, b_k, b_lse, m_visible, qk_scale, PRECISION: tl.constexpr):
    """The backward's probabilities of one ``[M, N]`` block of (query, key) pairs, recomputed from
    the saved base-2 log-sum-exp ``b_lse [M]``: ``exp2(qk_scale * q k^T - lse)``, 0 where
    ``m_visible`` is false. ``b_q [M, BLOCK_D]``, ``b_k [N, BLOCK_D]``; fp32 ``[M, N]``.
    Then ``dV += P^T dO``."""
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale
    return tl.where(m_visible, tl.exp2(b_s - b_lse[:, None]), 0.0)


@triton.jit
def attention_dscores(b_p, b_do, b_v, b_delta, PRECISION: tl.constexpr):
    """``dS = P * (dO V^T - delta)``, fp32 ``[M, N]``, with ``delta = rowsum(dO * O)`` ``[M]``
    (:func:`attention_delta`). Then ``dK += scale * dS^T Q`` and ``dQ += scale * dS K``."""
    b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
    return b_p * (b_dp - b_delta[:, None])


# ----------------------------------------------------------------------------------------------
# Device side: tile tables


@triton.jit
def tile_row(p_tiles, i_tile):
    """Row ``i_tile`` of a :func:`kernels._tiles.tile_table`: ``(scale_begin, p, tile_start, scale_id)``."""
    p_row = p_tiles + i_tile * 4
    return tl.load(p_row), tl.load(p_row + 1), tl.load(p_row + 2), tl.load(p_row + 3)


# ----------------------------------------------------------------------------------------------
# The attention backwards' preprocess (block-causal and neighborhood attention)


@triton.jit
def _bwd_delta_kernel(p_o, p_do, p_delta, L, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta[i] = sum_d dO[i, d] * O[i, d] in fp32 (the softmax backward's row term)."""
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < L
    base = i_bh.to(tl.int64) * L * D
    b_o = load_rows(p_o + base, o_m, m_m, o_d, D).to(tl.float32)
    b_do = load_rows(p_do + base, o_m, m_m, o_d, D).to(tl.float32)
    tl.store(p_delta + i_bh.to(tl.int64) * L + o_m, tl.sum(b_o * b_do, 1), mask=m_m)


def attention_delta(o_BHLD: torch.Tensor, do_BHLD: torch.Tensor) -> torch.Tensor:
    """``rowsum(dO * O)`` in fp32, ``[B, H, L]``, of contiguous ``[B, H, L, D]`` tensors."""
    B, H, L, D = o_BHLD.shape
    delta_BHL = torch.empty((B, H, L), dtype=torch.float32, device=o_BHLD.device)
    block_m = 16 if triton_interpret() else 64
    _bwd_delta_kernel[(triton.cdiv(L, block_m), B * H)](
        o_BHLD, do_BHLD, delta_BHL, L, D, BLOCK_M=block_m, BLOCK_D=dot_block(D)
    )
    return delta_BHL

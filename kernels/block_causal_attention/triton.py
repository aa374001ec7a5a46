"""Triton flash attention with the block-causal mask (docs/architecture.md section 7.1).

Tiling along the scale structure. Query tiles never straddle a scale boundary: scale k
(tokens ``[begin_k, end_k)``) is cut into tiles of at most ``BLOCK_M`` queries, and every query of
the tile sees exactly the key prefix ``[0, end_k)``. The host builds the table of
``(q_start, q_len, kv_end)`` rows once per ``(patch_nums, BLOCK_M)`` (cached) and passes it as a
small int32 tensor; a program loops over key tiles only up to its ``kv_end``, so every key tile
lying entirely in a later scale is skipped and the only masking is on the ragged last key tile
(``kv_end`` is not a multiple of ``BLOCK_N``) and the ragged last query tile of a scale.
At 256 px (``L = 680``) 62% of the (query, key) pairs are allowed; with 64 x 64 tiles this scheme
computes 64% of them (:func:`visited_fraction`), where 128-token tiles blind to the scales skip <1%.

Forward: online softmax in base 2 with fp32 accumulation, never an ``L x L`` matrix; it saves
the row log-sum-exp (base 2, of the logits times ``scale * log2(e)``) for the backward.

Backward (flash-attention-2, no atomics, deterministic): the preprocess shared with neighborhood
attention (:func:`kernels._triton_helpers.attention_delta`) computes ``delta = rowsum(dO * O)``; a dK/dV kernel runs one program per key tile and loops over the query
tiles that can see it (a suffix of the tile table: the tiles of the scale holding the key tile's
first key and of every later scale); a dQ kernel runs one program per query tile and loops over its
visible key tiles like the forward. Probabilities are recomputed from the saved log-sum-exp.

Layers: :func:`block_causal_attention` (called by the public op in ``ops.py``)
-> :class:`BlockCausalAttentionFunction` -> launchers ``_forward`` / ``_backward`` -> the ``@triton.jit``
kernels. Inputs are made contiguous ``[B, H, L, D]``; ``D`` is padded to a power of
two (at least 16, the smallest ``tl.dot`` size) with masks.

Sampling (one scale of queries against the cached keys of all earlier scales) needs no mask:
every cached key is visible, so the sampler calls PyTorch's ``scaled_dot_product_attention``
directly and does not go through this kernel.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from .._precision import dot_precision
from .._scales import ScaleLayout
from .._triton_helpers import (
    attention_backward_launch,
    attention_delta,
    attention_dscores,
    attention_forward,
    attention_probs,
    dot_block,
    load_query_rows,
    load_rows,
    load_rows_t,
    online_softmax_init,
    online_softmax_step,
    store_rows,
    store_softmax_rows,
)

__all__ = ["BlockCausalAttentionFunction", "block_causal_attention", "query_tiles", "visited_fraction"]


# ----------------------------------------------------------------------------------------------
# Tile tables (host side, cached per scale list and tile size)


@functools.cache
def query_tiles(patch_nums: tuple[int, ...], block_m: int) -> tuple[tuple[int, int, int], ...]:
    """``(q_start, q_len, kv_end)`` per query tile: each scale cut into tiles of <= block_m queries.

    >>> query_tiles((1, 2, 3), 4)
    ((0, 1, 1), (1, 4, 5), (5, 4, 14), (9, 4, 14), (13, 1, 14))
    """
    return tuple(
        (q0, min(block_m, end - q0), end)
        for begin, end in ScaleLayout.of(patch_nums).bounds
        for q0 in range(begin, end, block_m)
    )


@functools.cache
def key_tiles(patch_nums: tuple[int, ...], block_m: int, block_n: int) -> tuple[int, ...]:
    """Per key tile ``[n0, n0 + block_n)``: the index of the first query tile that sees any of its keys.

    ``kv_end`` never decreases along the query tile table, so the query tiles that see a key tile
    are that index and every later one.
    """
    tiles = query_tiles(patch_nums, block_m)
    L = tiles[-1][2]
    return tuple(next(t for t, (_, _, kv_end) in enumerate(tiles) if kv_end > n0) for n0 in range(0, L, block_n))


def visited_fraction(patch_nums: tuple[int, ...], block_m: int, block_n: int) -> float:
    """Fraction of the ``L x L`` (query, key) pairs whose key tile the forward visits.

    A query tile of ``q_len`` queries visits the keys ``[0, ceil(kv_end / block_n) * block_n)``
    (clipped at L); compare with the allowed fraction ``sum_k l_k * end_k / L**2``.
    """
    tiles = query_tiles(tuple(patch_nums), block_m)
    L = tiles[-1][2]
    visited = sum(q_len * min(triton.cdiv(kv_end, block_n) * block_n, L) for _, q_len, kv_end in tiles)
    return visited / L**2


@functools.cache
def _table_tensors(
    patch_nums: tuple[int, ...], block_m: int, block_n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    q_tiles_T3 = torch.tensor(query_tiles(patch_nums, block_m), dtype=torch.int32, device=device)  # [T, 3]
    k_first_N = torch.tensor(key_tiles(patch_nums, block_m, block_n), dtype=torch.int32, device=device)  # [N]
    return q_tiles_T3, k_first_N


def _config(D: int, dtype: torch.dtype) -> dict[str, int]:
    """Block sizes by heuristic (no autotune: several configs fail under the interpreter).

    Chosen with the compile check (``python -m kernels.compile_check``) so that no kernel
    spills more than 1 KiB per thread or exceeds the A100's shared memory, with triton 3.7 and 3.9.
    """
    if triton_interpret():
        # Small tiles keep the interpreter fast and exercise the multi-tile paths on tiny shapes.
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    block_d = dot_block(D)
    if dot_precision(dtype) == "ieee" and dtype == torch.float32:
        # IEEE fp32 dots run on the FMA units with operands replicated across threads: 64 x 64 tiles
        # spilled ~30 KB per thread in the dK/dV kernel. Narrow key tiles hold K, V, dK, dV in registers.
        return dict(BLOCK_M=32, BLOCK_N=16, num_warps=4 if block_d <= 64 else 8, num_stages=1)
    if dtype == torch.float32 and block_d > 64:
        # TF32 operands are twice the size of half ones: 64 x 64 tiles at D = 128 spilled in dK/dV and
        # needed 192 KB of shared memory in dQ (A100 allows 163 KB).
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
    # FlashAttention-2's forward defaults for D <= 128 on A100/H100-class GPUs; a sweep on GPU is owed.
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)


# ----------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _query_tile(p_tiles, i_t):
    """Row ``i_t`` of the query tile table: ``(q_start, q_len, kv_end)``."""
    return tl.load(p_tiles + i_t * 3), tl.load(p_tiles + i_t * 3 + 1), tl.load(p_tiles + i_t * 3 + 2)


@triton.jit
def _fwd_kernel(
    p_q, p_k, p_v, p_o, p_lse,  # q, k, v, out [B, H, L, D]; lse [B, H, L]
    p_tiles,  # query tiles [T, 3]
    L, D, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    q_start, q_len, kv_end = _query_tile(p_tiles, i_t)
    base = i_bh.to(tl.int64) * L * D

    o_m = tl.arange(0, BLOCK_M)
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < q_len
    b_q = load_rows(p_q + base, q_start + o_m, m_m, o_d, D)

    b_max, b_sum, b_acc = online_softmax_init(BLOCK_M, BLOCK_D)
    for n0 in range(0, kv_end, BLOCK_N):
        m_n = (n0 + o_n) < kv_end
        b_kt = load_rows_t(p_k + base, n0 + o_n, m_n, o_d, D)  # [BLOCK_D, BLOCK_N]
        b_v = load_rows(p_v + base, n0 + o_n, m_n, o_d, D)
        b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * qk_scale  # logits in base 2
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        # Key 0 is in every tile's range, so the row max is finite from the first tile on.
        b_max, b_sum, b_acc = online_softmax_step(b_s, b_v, b_max, b_sum, b_acc, PRECISION, EMPTY_ROWS=False)

    store_softmax_rows(p_o + base, p_lse + i_bh.to(tl.int64) * L, q_start, o_m, m_m, o_d, D, b_max, b_sum, b_acc)


@triton.jit
def _bwd_dkdv_kernel(
    p_q, p_k, p_v, p_do, p_lse, p_delta, p_dk, p_dv,  # [B, H, L, D], lse and delta [B, H, L]
    p_tiles, p_first, n_tiles,  # query tiles [T, 3], each key tile's first query tile, T
    L, D, scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    base = i_bh.to(tl.int64) * L * D
    base_row = i_bh.to(tl.int64) * L
    o_m = tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_n = o_n < L
    b_k = load_rows(p_k + base, o_n, m_n, o_d, D)  # [BLOCK_N, BLOCK_D]
    b_v = load_rows(p_v + base, o_n, m_n, o_d, D)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    for i_t in range(tl.load(p_first + i_n), n_tiles):
        q_start, q_len, kv_end = _query_tile(p_tiles, i_t)
        m_m = o_m < q_len
        b_q, b_do, b_lse, b_delta = load_query_rows(
            p_q, p_do, p_lse, p_delta, base, base_row, q_start, o_m, m_m, o_d, D
        )
        m_visible = m_m[:, None] & (o_n[None, :] < kv_end)
        b_p = attention_probs(b_q, b_k, b_lse, m_visible, qk_scale, PRECISION)  # [BLOCK_M, BLOCK_N]
        b_dv += tl.dot(tl.trans(b_p.to(b_do.dtype)), b_do, input_precision=PRECISION)
        b_ds = attention_dscores(b_p, b_do, b_v, b_delta, PRECISION)
        b_dk += tl.dot(tl.trans(b_ds.to(b_q.dtype)), b_q, input_precision=PRECISION)

    store_rows(p_dk + base, o_n, m_n, o_d, D, b_dk * scale)
    store_rows(p_dv + base, o_n, m_n, o_d, D, b_dv)


@triton.jit
def _bwd_dq_kernel(
    p_q, p_k, p_v, p_do, p_lse, p_delta, p_dq,  # [B, H, L, D], lse and delta [B, H, L]
    p_tiles,  # query tiles [T, 3]
    L, D, scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    q_start, q_len, kv_end = _query_tile(p_tiles, i_t)
    base = i_bh.to(tl.int64) * L * D
    base_row = i_bh.to(tl.int64) * L

    o_m = tl.arange(0, BLOCK_M)
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < q_len
    b_q, b_do, b_lse, b_delta = load_query_rows(p_q, p_do, p_lse, p_delta, base, base_row, q_start, o_m, m_m, o_d, D)
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for n0 in range(0, kv_end, BLOCK_N):
        m_n = (n0 + o_n) < kv_end
        b_k = load_rows(p_k + base, n0 + o_n, m_n, o_d, D)
        b_v = load_rows(p_v + base, n0 + o_n, m_n, o_d, D)
        m_visible = m_m[:, None] & m_n[None, :]
        b_p = attention_probs(b_q, b_k, b_lse, m_visible, qk_scale, PRECISION)
        b_ds = attention_dscores(b_p, b_do, b_v, b_delta, PRECISION)
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=PRECISION)

    store_rows(p_dq + base, q_start + o_m, m_m, o_d, D, b_dq * scale)


# ----------------------------------------------------------------------------------------------
# Launchers


def _forward(
    q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor, patch_nums: tuple[int, ...], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = _config(q_BHLD.shape[3], q_BHLD.dtype)
    q_tiles_T3, _ = _table_tensors(patch_nums, cfg["BLOCK_M"], cfg["BLOCK_N"], q_BHLD.device)
    qkv = (q_BHLD, k_BHLD, v_BHLD)
    return attention_forward(_fwd_kernel, q_tiles_T3.shape[0], qkv, (q_tiles_T3,), (), scale, cfg)


def _backward(
    q_BHLD: torch.Tensor,
    k_BHLD: torch.Tensor,
    v_BHLD: torch.Tensor,
    o_BHLD: torch.Tensor,
    lse_BHL: torch.Tensor,
    do_BHLD: torch.Tensor,
    patch_nums: tuple[int, ...],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = _config(q_BHLD.shape[3], q_BHLD.dtype)
    q_tiles_T3, k_first_N = _table_tensors(patch_nums, cfg["BLOCK_M"], cfg["BLOCK_N"], q_BHLD.device)
    saved = (q_BHLD, k_BHLD, v_BHLD, do_BHLD, lse_BHL, attention_delta(o_BHLD, do_BHLD))
    dq_BHLD, dk_BHLD, dv_BHLD = (torch.empty_like(q_BHLD) for _ in range(3))
    n_tiles = q_tiles_T3.shape[0]
    dkdv_tiles = (q_tiles_T3, k_first_N, n_tiles)
    attention_backward_launch(
        _bwd_dkdv_kernel, k_first_N.shape[0], saved, (dk_BHLD, dv_BHLD), dkdv_tiles, (), scale, cfg
    )
    attention_backward_launch(_bwd_dq_kernel, n_tiles, saved, (dq_BHLD,), (q_tiles_T3,), (), scale, cfg)
    return dq_BHLD, dk_BHLD, dv_BHLD


# ----------------------------------------------------------------------------------------------
# Autograd and the entry the dispatcher calls


class BlockCausalAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_BHLD, k_BHLD, v_BHLD, patch_nums, scale):
        q_BHLD, k_BHLD, v_BHLD = (t.contiguous() for t in (q_BHLD, k_BHLD, v_BHLD))
        o_BHLD, lse_BHL = _forward(q_BHLD, k_BHLD, v_BHLD, patch_nums, scale)
        ctx.save_for_backward(q_BHLD, k_BHLD, v_BHLD, o_BHLD, lse_BHL)
        ctx.patch_nums, ctx.scale = patch_nums, scale
        return o_BHLD

    @staticmethod
    def backward(ctx, do_BHLD):
        q_BHLD, k_BHLD, v_BHLD, o_BHLD, lse_BHL = ctx.saved_tensors
        dq, dk, dv = _backward(q_BHLD, k_BHLD, v_BHLD, o_BHLD, lse_BHL, do_BHLD.contiguous(), ctx.patch_nums, ctx.scale)
        return dq, dk, dv, None, None


def block_causal_attention(
    q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor, patch_nums: tuple[int, ...], scale: float
) -> torch.Tensor:
    """Triton block-causal attention; arguments checked by :func:`kernels.block_causal_attention`."""
    return BlockCausalAttentionFunction.apply(q_BHLD, k_BHLD, v_BHLD, patch_nums, scale)

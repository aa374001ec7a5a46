"""Triton pyramid neighborhood attention, fused forward and backward (docs/architecture.md section 7.2).

Tiling. A program owns a ``BLOCK_R x BLOCK_C`` patch of one scale's map (scale k, side p):
``BLOCK_R * BLOCK_C`` queries that are neighbours, so their windows overlap. For each visible scale
s <= k (side n) the window start ``clamp(((2i+1)*n)//(2p) - K//2, 0, n - K)`` never decreases with
i, so the union of the patch's windows is the rectangle from the first row's start to the last
row's start + K (same for columns). The kernel walks that rectangle in chunks of ``BLOCK_N`` keys,
gathered straight from K and V by index arithmetic (no gathered copies in memory), and masks each
(query, key) pair with the query's own window. One online softmax (base 2, fp32) runs across the
windows of all visible scales; the row log-sum-exp is saved for the backward. Scales with
``n <= kernel_size`` have ``K = n``: the window is the whole map, so they are attended in full, and
``kernel_size >= max(patch_nums)`` gives exactly block-causal attention.

Backward: ``delta = rowsum(dO * O)`` (:func:`kernels._triton_helpers.attention_delta`, shared with
block-causal attention), then one program per query tile recomputes the probabilities from the
log-sum-exp, accumulates dQ in registers and adds its dK, dV contributions to fp32 buffers with
``tl.atomic_add``: the reverse map (which query tiles see a key) is irregular across scales, and the
coarse keys every query sees make a key-major pass no cheaper. Atomics make dK and dV
order-nondeterministic in the last bits on GPU.

Layers: :func:`neighborhood_attention` (called by the public op)
-> :class:`NeighborhoodAttentionFunction` -> launchers ``_forward`` / ``_backward`` -> the
``@triton.jit`` kernels. Inputs are made contiguous ``[B, H, L, D]``; D is padded to a power of two
with masks.

Sampling (the newest scale's queries against the cached keys of all scales) runs the PyTorch
reference's per-scale step: one scale of queries is small, and this kernel expects q, k and v of the
same full length.
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

__all__ = ["NeighborhoodAttentionFunction", "neighborhood_attention", "query_tiles"]


@functools.cache
def query_tiles(patch_nums: tuple[int, ...], block_r: int, block_c: int) -> tuple[tuple[int, int, int], ...]:
    """``(scale, r0, c0)`` per query tile: every scale's map cut into block_r x block_c patches."""
    return tuple(
        (s, r0, c0) for s, p in enumerate(patch_nums) for r0 in range(0, p, block_r) for c0 in range(0, p, block_c)
    )


@functools.cache
def _table_tensors(
    patch_nums: tuple[int, ...], block_r: int, block_c: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tiles_T3 = torch.tensor(query_tiles(patch_nums, block_r, block_c), dtype=torch.int32, device=device)  # [T, 3]
    side_S = torch.tensor(patch_nums, dtype=torch.int32, device=device)  # [S]
    begin_S = torch.tensor(ScaleLayout.of(patch_nums).offsets[:-1], dtype=torch.int32, device=device)  # [S]
    return tiles_T3, side_S, begin_S


def _config(D: int, dtype: torch.dtype) -> dict[str, int]:
    """Block sizes by heuristic (no autotune: several configs fail under the interpreter)."""
    if triton_interpret():
        return dict(BLOCK_R=4, BLOCK_C=4, BLOCK_N=16, num_warps=1, num_stages=1)
    # The union rectangle of a patch is (BLOCK_R + K - 1) x (BLOCK_C + K - 1) on the query's own
    # scale: small patches waste fewer keys per query, 32 queries keep tl.dot on tensor cores.
    # IEEE fp32 dots at D = 128 spilled 1.1-1.5 KB per thread with 4 warps (kernels/compile_check.py).
    # A sweep on GPU is owed.
    wide_fp32 = dtype == torch.float32 and dot_precision(dtype) == "ieee" and dot_block(D) > 64
    return dict(BLOCK_R=4, BLOCK_C=8, BLOCK_N=32, num_warps=8 if wide_fp32 else 4, num_stages=2)


# ----------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _window_start(x, p, n, K):
    """First row (or column) of the side-n scale in the window of query row x of a side-p scale."""
    return tl.minimum(tl.maximum(((2 * x + 1) * n) // (2 * p) - K // 2, 0), n - K)


@triton.jit
def _query_tile(p_tiles, p_side, p_begin, L, D, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's (batch, head) (grid axis 1) and the offset of its ``[L, D]`` matrices, and its
    query tile (axis 0): the tile's scale, first row and column, the scale's side ``p``, the tile's
    last row and column inside the map, and per query its row, column, token and mask."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    q_scale = tl.load(p_tiles + i_t * 3)
    r0 = tl.load(p_tiles + i_t * 3 + 1)
    c0 = tl.load(p_tiles + i_t * 3 + 2)
    p = tl.load(p_side + q_scale)
    q_begin = tl.load(p_begin + q_scale)
    o_m = tl.arange(0, BLOCK_R * BLOCK_C)
    b_i = r0 + o_m // BLOCK_C
    b_j = c0 + o_m % BLOCK_C
    m_m = (b_i < p) & (b_j < p)
    b_tok = q_begin + b_i * p + b_j
    r_last = tl.minimum(r0 + BLOCK_R, p) - 1
    c_last = tl.minimum(c0 + BLOCK_C, p) - 1
    base = i_bh.to(tl.int64) * L * D
    return i_bh, base, q_scale, r0, c0, r_last, c_last, p, b_i, b_j, b_tok, m_m


@triton.jit
def _key_window(p_side, p_begin, s, kernel_size, p, b_i, b_j, r0, c0, r_last, c_last):
    """The keys of scale ``s`` that a query tile of a side-``p`` scale sees: the first token and side
    ``n`` of scale s, the window size ``K``, each query's window start ``(b_wi, b_wj)``, and the union
    rectangle of the tile's windows (first row and column, columns, keys)."""
    n = tl.load(p_side + s)
    k_begin = tl.load(p_begin + s)
    K = tl.minimum(kernel_size, n)
    b_wi = _window_start(b_i, p, n, K)  # [BLOCK_M] each query's window rows [b_wi, b_wi + K)
    b_wj = _window_start(b_j, p, n, K)
    row0 = _window_start(r0, p, n, K)
    col0 = _window_start(c0, p, n, K)
    n_cols = _window_start(c_last, p, n, K) + K - col0
    n_keys = (_window_start(r_last, p, n, K) + K - row0) * n_cols
    return n, k_begin, K, b_wi, b_wj, row0, col0, n_cols, n_keys


@triton.jit
def _key_chunk(t0, o_n, n_keys, n_cols, row0, col0, k_begin, n):
    """Keys ``t0 .. t0 + BLOCK_N - 1`` of the union rectangle (row-major, ``n_cols`` wide, from map row
    ``row0`` and column ``col0`` of the side-``n`` scale starting at token ``k_begin``): their row,
    column and token, and the mask of those inside the rectangle."""
    o_t = t0 + o_n
    m_n = o_t < n_keys
    b_kr = row0 + o_t // n_cols
    b_kc = col0 + o_t % n_cols
    b_key = k_begin + b_kr * n + b_kc
    return b_kr, b_kc, b_key, m_n


@triton.jit
def _in_window(m_mn, b_kr, b_kc, b_wi, b_wj, K):
    """``[BLOCK_M, BLOCK_N]``: ``m_mn`` and key (row ``b_kr``, column ``b_kc``) lies in the ``K x K``
    window of the query whose window starts at ``(b_wi, b_wj)``."""
    return (
        m_mn
        & (b_kr[None, :] >= b_wi[:, None])
        & (b_kr[None, :] < b_wi[:, None] + K)
        & (b_kc[None, :] >= b_wj[:, None])
        & (b_kc[None, :] < b_wj[:, None] + K)
    )


@triton.jit
def _fwd_kernel(
    p_q, p_k, p_v, p_o, p_lse,  # q, k, v, out [B, H, L, D]; lse [B, H, L]
    p_tiles, p_side, p_begin,  # query tiles [T, 3]; each scale's side and first token [S]
    L, D, kernel_size, qk_scale,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    i_bh, base, q_scale, r0, c0, r_last, c_last, p, b_i, b_j, b_tok, m_m = _query_tile(
        p_tiles, p_side, p_begin, L, D, BLOCK_R, BLOCK_C
    )
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    b_q = load_rows(p_q + base, b_tok, m_m, o_d, D)

    b_max, b_sum, b_acc = online_softmax_init(BLOCK_R * BLOCK_C, BLOCK_D)
    for s in range(0, q_scale + 1):
        n, k_begin, K, b_wi, b_wj, row0, col0, n_cols, n_keys = _key_window(
            p_side, p_begin, s, kernel_size, p, b_i, b_j, r0, c0, r_last, c_last
        )
        for t0 in range(0, n_keys, BLOCK_N):
            b_kr, b_kc, b_key, m_n = _key_chunk(t0, o_n, n_keys, n_cols, row0, col0, k_begin, n)
            b_kt = load_rows_t(p_k + base, b_key, m_n, o_d, D)
            b_v = load_rows(p_v + base, b_key, m_n, o_d, D)
            m_visible = _in_window(m_n[None, :], b_kr, b_kc, b_wi, b_wj, K)
            b_s = tl.where(m_visible, tl.dot(b_q, b_kt, input_precision=PRECISION) * qk_scale, float("-inf"))
            # A row may see no key of a chunk before it saw any key at all.
            b_max, b_sum, b_acc = online_softmax_step(b_s, b_v, b_max, b_sum, b_acc, PRECISION, EMPTY_ROWS=True)

    # Every real query sees at least its own key; padding rows (m_m false) are never stored.
    b_sum = tl.where(m_m, b_sum, 1.0)
    store_softmax_rows(p_o + base, p_lse + i_bh.to(tl.int64) * L, 0, b_tok, m_m, o_d, D, b_max, b_sum, b_acc)


@triton.jit
def _bwd_kernel(
    p_q, p_k, p_v, p_do, p_lse, p_delta,  # [B, H, L, D], lse and delta [B, H, L]
    p_dq, p_dk, p_dv,  # dq [B, H, L, D]; dk, dv fp32 [B, H, L, D], zeroed (atomics)
    p_tiles, p_side, p_begin,  # query tiles [T, 3]; each scale's side and first token [S]
    L, D, kernel_size, scale, qk_scale,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    i_bh, base, q_scale, r0, c0, r_last, c_last, p, b_i, b_j, b_tok, m_m = _query_tile(
        p_tiles, p_side, p_begin, L, D, BLOCK_R, BLOCK_C
    )
    base_row = i_bh.to(tl.int64) * L
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_q, b_do, b_lse, b_delta = load_query_rows(p_q, p_do, p_lse, p_delta, base, base_row, 0, b_tok, m_m, o_d, D)
    b_dq = tl.zeros([BLOCK_R * BLOCK_C, BLOCK_D], tl.float32)

    for s in range(0, q_scale + 1):
        n, k_begin, K, b_wi, b_wj, row0, col0, n_cols, n_keys = _key_window(
            p_side, p_begin, s, kernel_size, p, b_i, b_j, r0, c0, r_last, c_last
        )
        for t0 in range(0, n_keys, BLOCK_N):
            b_kr, b_kc, b_key, m_n = _key_chunk(t0, o_n, n_keys, n_cols, row0, col0, k_begin, n)
            b_k = load_rows(p_k + base, b_key, m_n, o_d, D)  # [BLOCK_N, BLOCK_D]
            b_v = load_rows(p_v + base, b_key, m_n, o_d, D)
            m_visible = _in_window(m_m[:, None] & m_n[None, :], b_kr, b_kc, b_wi, b_wj, K)
            b_p = attention_probs(b_q, b_k, b_lse, m_visible, qk_scale, PRECISION)
            b_ds = attention_dscores(b_p, b_do, b_v, b_delta, PRECISION)
            b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=PRECISION)
            b_dv = tl.dot(tl.trans(b_p.to(b_do.dtype)), b_do, input_precision=PRECISION)
            b_dk = tl.dot(tl.trans(b_ds.to(b_q.dtype)), b_q, input_precision=PRECISION) * scale
            # Atomics, fp32 buffers: the key rows are added to by every query tile that sees them.
            p_kv = base + b_key[:, None] * D + o_d[None, :]
            m_nd = m_n[:, None] & m_d[None, :]
            tl.atomic_add(p_dv + p_kv, b_dv, mask=m_nd)
            tl.atomic_add(p_dk + p_kv, b_dk, mask=m_nd)

    store_rows(p_dq + base, b_tok, m_m, o_d, D, b_dq * scale)


# ----------------------------------------------------------------------------------------------
# Launchers


def _forward(q_BHLD, k_BHLD, v_BHLD, patch_nums, kernel_size, scale):
    cfg = _config(q_BHLD.shape[3], q_BHLD.dtype)
    tables = _table_tensors(patch_nums, cfg["BLOCK_R"], cfg["BLOCK_C"], q_BHLD.device)  # tiles, sides, begins
    qkv = (q_BHLD, k_BHLD, v_BHLD)
    return attention_forward(_fwd_kernel, tables[0].shape[0], qkv, tables, (kernel_size,), scale, cfg)


def _backward(q_BHLD, k_BHLD, v_BHLD, o_BHLD, lse_BHL, do_BHLD, patch_nums, kernel_size, scale):
    cfg = _config(q_BHLD.shape[3], q_BHLD.dtype)
    tables = _table_tensors(patch_nums, cfg["BLOCK_R"], cfg["BLOCK_C"], q_BHLD.device)
    saved = (q_BHLD, k_BHLD, v_BHLD, do_BHLD, lse_BHL, attention_delta(o_BHLD, do_BHLD))
    dq_BHLD = torch.empty_like(q_BHLD)
    # Accumulated by atomics from every query tile: fp32 and zeroed.
    dk_BHLD = torch.zeros(q_BHLD.shape, dtype=torch.float32, device=q_BHLD.device)
    dv_BHLD = torch.zeros(q_BHLD.shape, dtype=torch.float32, device=q_BHLD.device)
    grads = (dq_BHLD, dk_BHLD, dv_BHLD)
    attention_backward_launch(_bwd_kernel, tables[0].shape[0], saved, grads, tables, (kernel_size,), scale, cfg)
    return dq_BHLD, dk_BHLD.to(k_BHLD.dtype), dv_BHLD.to(v_BHLD.dtype)


# ----------------------------------------------------------------------------------------------
# Autograd and the entry the dispatcher calls


class NeighborhoodAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_BHLD, k_BHLD, v_BHLD, patch_nums, kernel_size, scale):
        q_BHLD, k_BHLD, v_BHLD = (t.contiguous() for t in (q_BHLD, k_BHLD, v_BHLD))
        o_BHLD, lse_BHL = _forward(q_BHLD, k_BHLD, v_BHLD, patch_nums, kernel_size, scale)
        ctx.save_for_backward(q_BHLD, k_BHLD, v_BHLD, o_BHLD, lse_BHL)
        ctx.patch_nums, ctx.kernel_size, ctx.scale = patch_nums, kernel_size, scale
        return o_BHLD

    @staticmethod
    def backward(ctx, do_BHLD):
        q_BHLD, k_BHLD, v_BHLD, o_BHLD, lse_BHL = ctx.saved_tensors
        grads = _backward(
            q_BHLD,
            k_BHLD,
            v_BHLD,
            o_BHLD,
            lse_BHL,
            do_BHLD.contiguous(),
            ctx.patch_nums,
            ctx.kernel_size,
            ctx.scale,
        )
        return (*grads, None, None, None)


def neighborhood_attention(
    q_BHLD: torch.Tensor,
    k_BHLD: torch.Tensor,
    v_BHLD: torch.Tensor,
    patch_nums: tuple[int, ...],
    kernel_size: int,
    scale: float,
) -> torch.Tensor:
    """Triton pyramid neighborhood attention; arguments checked by :func:`kernels.neighborhood_attention`."""
    return NeighborhoodAttentionFunction.apply(q_BHLD, k_BHLD, v_BHLD, patch_nums, kernel_size, scale)

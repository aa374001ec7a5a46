"""Triton kernels of block-causal external attention (docs/architecture.md section 7.3; reference.py is the spec).

Notation per (batch b, head h): ``a[n, m] = scale * q[n].mem_k[m]``; ``lse[s, m]`` is the
logsumexp of ``a[:, m]`` over the tokens of scales ``<= s`` (a running logaddexp over scale blocks);
``P[n, m] = exp(a[n, m] - lse[s(n), m])``; ``r[n] = sum_m P[n, m] + 1e-6``; ``A = P / r``;
``out = A @ mem_v``. The ``[B, H, L, S]`` map is never written to memory: every kernel recomputes
it tile by tile from q and the (tiny, cache-resident) memories.

Forward, two launches:

1. ``_lse_kernel``, grid ``(B*H,)``: one program walks the sequence coarse to fine with an online
   (max, sum) per memory slot and stores the prefix ``lse [B*H, num_scales, S]`` (fp32, tiny) after
   each scale. This is exactly the running state a sampler carries.
2. ``_fwd_kernel``, grid ``(num_tiles, B*H)``: tiles never straddle a scale (host-built table), so
   each program loads one ``lse`` row, recomputes ``a``, normalises over tokens then over memories
   and multiplies by ``mem_v``. Fully parallel over tokens.

Backward, one launch ``_bwd_kernel``, grid ``(B*H,)``, scales walked *fine to coarse*. With
``dA = dO @ mem_v^T`` and ``delta[n] = sum_m dA[n, m] A[n, m]``:
``dP = (dA - delta) / r``; the direct path gives ``da += dP * P``; the path through ``lse`` gives
``da -= P * R[s(n)]`` with ``G[s, m] = sum_{n in scale s} dP P`` and the suffix sum
``R[s] = G[s] + exp(lse[s] - lse[s+1]) * R[s+1]`` (all factors <= 1: lse grows with s). ``G[s]``
needs only scale s's tokens, so walking scales in reverse, each scale is visited twice: once for
``G[s]`` (and ``dmem_v``), once for ``dq`` (stored) and ``dmem_k``. ``dmem_k, dmem_v`` accumulate
in registers over the whole sequence (``[S, D]`` fp32 each) and are stored once per (b, h); the sum
over B is a second stage in PyTorch on ``[B, H, S, D]`` partials: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._precision import dot_precision
from .._tiles import scale_offsets, tile_table
from .._triton_helpers import dot_block, load_rows, load_rows_t, store_rows, tile_row
from .reference import L1_EPS

__all__ = ["ExternalAttentionFunction", "external_attention"]

BLOCK_T = 16  # tokens per tile; tl.dot needs >= 16. TODO(gpu): tune (32/64) on a real device.


@triton.jit
def _head_program(H, S, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (batch, head) (grid axis 0) and head, the memory slots and their mask, and
    the head-dim offsets: the start of the two kernels that walk a whole (batch, head)."""
    i_bh = tl.program_id(0)
    i_h = i_bh % H
    o_s = tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_s = o_s < S
    return i_bh, i_h, o_s, o_d, m_s


@triton.jit
def _lse_kernel(
    p_q, p_mem_k, p_lse, p_offsets,  # q [B, H, L, D], mem_k [H, S, D], lse [B*H, NUM_SCALES, S]
    H, L, S, D, NUM_SCALES, sm_scale,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    i_bh, i_h, o_s, o_d, m_s = _head_program(H, S, BLOCK_S, BLOCK_D)
    o_t = tl.arange(0, BLOCK_T)
    b_kT = load_rows_t(p_mem_k + i_h * S * D, o_s, m_s, o_d, D)  # [D, S]
    b_m = tl.full([BLOCK_S], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_S], tl.float32)
    for i_s in range(NUM_SCALES):
        begin = tl.load(p_offsets + i_s)
        end = tl.load(p_offsets + i_s + 1)
        for t0 in range(begin, end, BLOCK_T):
            o_n = t0 + o_t
            m_n = o_n < end
            b_q = load_rows(p_q + i_bh * L * D, o_n, m_n, o_d, D)
            b_a = tl.dot(b_q, b_kT, input_precision=PRECISION) * sm_scale  # [T, S] fp32
            b_a = tl.where(m_n[:, None], b_a, float("-inf"))
            b_m_new = tl.maximum(b_m, tl.max(b_a, 0))  # finite: every tile holds a token
            b_l = b_l * tl.exp(b_m - b_m_new) + tl.sum(tl.exp(b_a - b_m_new[None, :]), 0)
            b_m = b_m_new
        tl.store(p_lse + (i_bh * NUM_SCALES + i_s) * S + o_s, b_m + tl.log(b_l), mask=m_s)


@triton.jit
def _probs(
    p_q, p_k, p_lse, o_n, m_n,
    S, D, sm_scale, eps,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Recompute one tile: q [T, D], P [T, S] (0 outside the tile and past S), 1/r [T]. ``p_q`` is
    this (batch, head)'s q ``[L, D]``, ``p_k`` its memory keys ``[S, D]``, ``p_lse`` the row
    ``[S]`` of the tile's scale."""
    o_s = tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_s = o_s < S
    b_kT = load_rows_t(p_k, o_s, m_s, o_d, D)
    b_q = load_rows(p_q, o_n, m_n, o_d, D)
    b_lse = tl.load(p_lse + o_s, mask=m_s, other=0.0)
    b_a = tl.dot(b_q, b_kT, input_precision=PRECISION) * sm_scale
    b_p = tl.exp(b_a - b_lse[None, :])
    b_p = tl.where(m_n[:, None] & m_s[None, :], b_p, 0.0)
    b_rinv = 1.0 / (tl.sum(b_p, 1) + eps)
    return b_q, b_p, b_rinv


@triton.jit
def _fwd_kernel(
    p_q, p_mem_k, p_mem_v, p_lse, p_tiles, p_out,  # the tiles: a tile_table [T, 4]
    H, L, S, D, NUM_SCALES, sm_scale, eps,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    i_tile, i_bh = tl.program_id(0), tl.program_id(1)
    i_h = i_bh % H
    scale_begin, p, tile_start, i_s = tile_row(p_tiles, i_tile)
    o_t = tl.arange(0, BLOCK_T)
    o_s = tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_n = tile_start + o_t < p * p
    o_n = scale_begin + tile_start + o_t
    p_lse_s = p_lse + (i_bh * NUM_SCALES + i_s) * S
    _, b_p, b_rinv = _probs(
        p_q + i_bh * L * D, p_mem_k + i_h * S * D, p_lse_s, o_n, m_n, S, D, sm_scale, eps, BLOCK_S, BLOCK_D, PRECISION
    )
    b_A = b_p * b_rinv[:, None]
    b_v = load_rows(p_mem_v + i_h * S * D, o_s, o_s < S, o_d, D)  # [S, D]
    b_o = tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PRECISION)  # [T, D] fp32
    store_rows(p_out + i_bh * L * D, o_n, m_n, o_d, D, b_o)


@triton.jit
def _bwd_tile(
    p_q, p_k, p_lse, p_do, b_vT, t0, end,
    S, D, sm_scale, eps,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """What both visits of a tile (tokens ``t0 .. min(t0 + BLOCK_T, end) - 1``) recompute: the tile's
    tokens and mask, q, P, A = P / r, dO and dP = (dA - delta) / r. Pointers as in :func:`_probs`,
    ``p_do`` this (batch, head)'s dO ``[L, D]``."""
    o_n = t0 + tl.arange(0, BLOCK_T)
    m_n = o_n < end
    b_q, b_p, b_rinv = _probs(p_q, p_k, p_lse, o_n, m_n, S, D, sm_scale, eps, BLOCK_S, BLOCK_D, PRECISION)
    b_A = b_p * b_rinv[:, None]
    b_do = load_rows(p_do, o_n, m_n, tl.arange(0, BLOCK_D), D)
    b_dA = tl.dot(b_do, b_vT.to(b_do.dtype), input_precision=PRECISION)  # [T, S]
    b_delta = tl.sum(b_dA * b_A, 1)
    b_dP = (b_dA - b_delta[:, None]) * b_rinv[:, None]
    return o_n, m_n, b_q, b_p, b_A, b_do, b_dP


@triton.jit
def _bwd_kernel(
    p_q, p_mem_k, p_mem_v, p_lse, p_offsets, p_do,
    p_dq, p_dk_part, p_dv_part,  # dq [B, H, L, D]; fp32 partials [B, H, S, D] of dmem_k, dmem_v
    H, L, S, D, NUM_SCALES, sm_scale, eps,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    i_bh, i_h, o_s, o_d, m_s = _head_program(H, S, BLOCK_S, BLOCK_D)
    b_k = load_rows(p_mem_k + i_h * S * D, o_s, m_s, o_d, D)  # [S, D]
    b_vT = load_rows_t(p_mem_v + i_h * S * D, o_s, m_s, o_d, D)  # [D, S]
    b_dk = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    b_dv = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    b_R = tl.zeros([BLOCK_S], tl.float32)
    b_lse_next = tl.zeros([BLOCK_S], tl.float32)
    # This (batch, head)'s q and dO [L, D] and memory keys [S, D], for the tiles of both visits.
    p_q_bh, p_do_bh, p_k_h = p_q + i_bh * L * D, p_do + i_bh * L * D, p_mem_k + i_h * S * D
    for j in range(NUM_SCALES):
        i_s = NUM_SCALES - 1 - j
        begin = tl.load(p_offsets + i_s)
        end = tl.load(p_offsets + i_s + 1)
        p_lse_s = p_lse + (i_bh * NUM_SCALES + i_s) * S
        b_lse = tl.load(p_lse_s + o_s, mask=m_s, other=0.0)
        # Visit 1: G[s] = sum over the scale's tokens of dP * P, and dmem_v += A^T dO.
        b_G = tl.zeros([BLOCK_S], tl.float32)
        for t0 in range(begin, end, BLOCK_T):
            _, _, _, b_p, b_A, b_do, b_dP = _bwd_tile(
                p_q_bh, p_k_h, p_lse_s, p_do_bh, b_vT, t0, end, S, D, sm_scale, eps, BLOCK_T, BLOCK_S, BLOCK_D,
                PRECISION,
            )  # fmt: skip
            b_G += tl.sum(b_dP * b_p, 0)
            b_dv += tl.dot(tl.trans(b_A.to(b_do.dtype)), b_do, input_precision=PRECISION)
        b_R = b_G + tl.exp(b_lse - b_lse_next) * b_R  # b_R is 0 on the finest scale
        b_lse_next = b_lse
        # Visit 2: da = P * (dP - R[s]); dq = scale * da @ mem_k; dmem_k += scale * da^T q.
        for t0 in range(begin, end, BLOCK_T):
            o_n, m_n, b_q, b_p, _, _, b_dP = _bwd_tile(
                p_q_bh, p_k_h, p_lse_s, p_do_bh, b_vT, t0, end, S, D, sm_scale, eps, BLOCK_T, BLOCK_S, BLOCK_D,
                PRECISION,
            )  # fmt: skip
            b_da = b_p * (b_dP - b_R[None, :]) * sm_scale  # [T, S], includes the logit scale
            b_dq = tl.dot(b_da.to(b_k.dtype), b_k, input_precision=PRECISION)  # [T, D]
            store_rows(p_dq + i_bh * L * D, o_n, m_n, o_d, D, b_dq)
            b_dk += tl.dot(tl.trans(b_da.to(b_q.dtype)), b_q, input_precision=PRECISION)
    store_rows(p_dk_part + i_bh * S * D, o_s, m_s, o_d, D, b_dk)
    store_rows(p_dv_part + i_bh * S * D, o_s, m_s, o_d, D, b_dv)


def _meta(q_BHLD: torch.Tensor, mem_k_HSD: torch.Tensor) -> dict:
    return dict(
        BLOCK_T=BLOCK_T,
        BLOCK_S=dot_block(mem_k_HSD.shape[1]),
        BLOCK_D=dot_block(q_BHLD.shape[3]),
        PRECISION=dot_precision(q_BHLD.dtype),
    )


def _bwd_launch(q_BHLD: torch.Tensor) -> dict:
    """Warps and stages of the backward kernel, which holds dmem_k, dmem_v [S, D] fp32 all along.

    fp32 inputs at D = 128 with Triton's defaults: IEEE dots spilled ~2.8 KB per thread, and both
    IEEE and TF32 needed 165-173 KB of shared memory, over the A100's 163 KB (kernels/compile_check.py).
    """
    if q_BHLD.dtype == torch.float32 and dot_block(q_BHLD.shape[3]) > 64:
        return dict(num_warps=8, num_stages=1)
    return {}


def _forward(q, mem_k, mem_v, patch_nums, scale):
    B, H, L, D = q.shape
    S = mem_k.shape[1]
    offsets = scale_offsets(patch_nums, q.device)
    tiles = tile_table(patch_nums, BLOCK_T, q.device)
    lse = torch.empty(B * H, len(patch_nums), S, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    _lse_kernel[(B * H,)](q, mem_k, lse, offsets, H, L, S, D, len(patch_nums), scale, **_meta(q, mem_k))
    grid = (tiles.shape[0], B * H)
    _fwd_kernel[grid](q, mem_k, mem_v, lse, tiles, out, H, L, S, D, len(patch_nums), scale, L1_EPS, **_meta(q, mem_k))
    return out, lse


def _backward(q, mem_k, mem_v, lse, d_out, patch_nums, scale):
    B, H, L, D = q.shape
    S = mem_k.shape[1]
    offsets = scale_offsets(patch_nums, q.device)
    dq = torch.empty_like(q)
    dk_part = torch.empty(B, H, S, D, dtype=torch.float32, device=q.device)
    dv_part = torch.empty(B, H, S, D, dtype=torch.float32, device=q.device)
    _bwd_kernel[(B * H,)](
        q,
        mem_k,
        mem_v,
        lse,
        offsets,
        d_out,
        dq,
        dk_part,
        dv_part,
        H,
        L,
        S,
        D,
        len(patch_nums),
        scale,
        L1_EPS,
        **_meta(q, mem_k),
        **_bwd_launch(q),
    )
    # Second stage of the memory gradients: the sum over the batch (deterministic).
    return dq, dk_part.sum(0).to(mem_k.dtype), dv_part.sum(0).to(mem_v.dtype)


class ExternalAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, mem_k, mem_v, patch_nums, scale):
        q, mem_k, mem_v = (t.contiguous() for t in (q, mem_k, mem_v))
        out, lse = _forward(q, mem_k, mem_v, patch_nums, scale)
        ctx.save_for_backward(q, mem_k, mem_v, lse)
        ctx.patch_nums, ctx.scale = patch_nums, scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, mem_k, mem_v, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, mem_k, mem_v, lse, d_out.contiguous(), ctx.patch_nums, ctx.scale)
        return dq, dk, dv, None, None


def external_attention(
    q_BHLD: torch.Tensor, mem_k_HSD: torch.Tensor, mem_v_HSD: torch.Tensor, patch_nums: tuple[int, ...], scale: float
) -> torch.Tensor:
    """Triton version of :func:`kernels.external_attention` (arguments already checked)."""
    return ExternalAttentionFunction.apply(q_BHLD, mem_k_HSD, mem_v_HSD, patch_nums, scale)

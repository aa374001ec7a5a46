"""Triton kernels of the ragged depthwise conv (docs/architecture.md section 7.4; reference.py is the spec).

One launch covers every scale. Grid ``(num_tiles, B, cdiv(C, BLOCK_C))`` over a host-built, cached
tile table (``kernels._tiles.tile_table``): a tile is up to ``BLOCK_T`` consecutive tokens of ONE
scale, so the program knows its map size ``p`` and offset, and each of the ``k*k`` taps is a masked
``[BLOCK_T, BLOCK_C]`` load of the channel-last ``x [B, L, C]`` (contiguous along C: coalesced) at
the shifted map position; positions outside the ``p x p`` map read 0, so nothing crosses scales.
Accumulation is fp32 whatever the input dtype.

Backward:

- input: the same kernel with the spatially flipped filter (the adjoint of a 'same', symmetric-pad
  correlation), so it is ragged in exactly the same way and costs one more launch;
- weight and bias: ``_wgrad_kernel``, grid ``(num_tiles, cdiv(C, BLOCK_C))``, loops over the batch
  inside the program and stores one fp32 partial ``[k*k, BLOCK_C]`` (and ``[BLOCK_C]`` for the bias)
  per tile; the sum over tiles is a second stage in PyTorch on ``[num_tiles, k*k, C]``
  (~4 MB at 512 px, C = 1024, k = 7): deterministic, no atomics.

LKA (docs/architecture.md section 7.4) runs two depthwise convs back to back, 5x5 then 7x7 dilation 3. Fusing
them in one kernel would need, for an output tile, the 5x5 result on the tile plus a halo of
``3 * 3 = 9`` map rows/columns each side, i.e. for the maps that matter (p <= 32) nearly the whole
map per tile, recomputed by every tile (25 MACs per halo pixel), and the dilated taps would have to
gather from that on-chip intermediate at arbitrary offsets, which Triton cannot index in registers
(it would go through global scratch anyway). We keep two launches: the intermediate ``[B, L, C]``
is written once and read back mostly from L2. TODO(gpu): measure whether a fused kernel with one
program per (b, scale, channel block) and an L2-resident scratch wins at 256 px.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._tiles import tile_table
from .._triton_helpers import tile_row

__all__ = ["RaggedDepthwiseConv2dFunction", "ragged_depthwise_conv2d"]

BLOCK_T = 32  # tokens per tile. TODO(gpu): tune BLOCK_T / BLOCK_C / num_warps on a real device.
MAX_BLOCK_C = 64  # 64 channels of fp16 = 128 bytes per token row: one coalesced transaction


@triton.jit
def _tile_tokens(tiles, i_tile, i_c, C, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row ``i_tile`` of the tile table and channel block ``i_c``: the scale's first token and map side
    ``p``, the tile's tokens (index inside the scale, mask, map row and column), the channels and
    their mask."""
    scale_begin, p, tile_start, _ = tile_row(tiles, i_tile)
    o_t = tile_start + tl.arange(0, BLOCK_T)  # token index inside the scale
    m_t = o_t < p * p
    o_i = o_t // p
    o_j = o_t % p
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    return scale_begin, p, o_t, m_t, o_i, o_j, o_c, m_c


@triton.jit
def _tap(i_k, o_i, o_j, m_t, p, DIL, K: tl.constexpr):
    """Tap ``i_k`` of the ``K x K`` filter: the map row and column each token of the tile reads, and
    whether that position lies inside the ``p x p`` map (outside, the 'same' padding reads 0)."""
    ky = i_k // K
    kx = i_k % K
    o_ii = o_i + (ky - K // 2) * DIL
    o_jj = o_j + (kx - K // 2) * DIL
    m_in = m_t & (o_ii >= 0) & (o_ii < p) & (o_jj >= 0) & (o_jj < p)
    return o_ii, o_jj, m_in


@triton.jit
def _conv_kernel(
    x, w, bias, y, tiles,  # x, y [B, L, C]; w [C, K*K]; bias [C]; a tile_table [T, 4]
    L, C, DIL,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    i_tile, i_b, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    scale_begin, p, o_t, m_t, o_i, o_j, o_c, m_c = _tile_tokens(tiles, i_tile, i_c, C, BLOCK_T, BLOCK_C)
    b_y = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
    # A loop over the taps, not tl.static_range: unrolling 49 taps let the compiler hoist every
    # tap's load, 255 registers and spills (kernels/compile_check.py's table), and ~30 s of compile time.
    for i_k in range(K * K):
        o_ii, o_jj, m_in = _tap(i_k, o_i, o_j, m_t, p, DIL, K)
        p_x = x + (i_b * L + scale_begin + o_ii * p + o_jj)[:, None] * C + o_c[None, :]
        b_x = tl.load(p_x, mask=m_in[:, None] & m_c[None, :], other=0.0)
        b_w = tl.load(w + o_c * (K * K) + i_k, mask=m_c, other=0.0)
        b_y += b_x.to(tl.float32) * b_w.to(tl.float32)[None, :]
    if HAS_BIAS:
        b_y += tl.load(bias + o_c, mask=m_c, other=0.0).to(tl.float32)[None, :]
    p_y = y + (i_b * L + scale_begin + o_t)[:, None] * C + o_c[None, :]
    tl.store(p_y, b_y.to(y.dtype.element_ty), mask=m_t[:, None] & m_c[None, :])


@triton.jit
def _wgrad_kernel(
    x, dy, dw_part, db_part, tiles,  # x, dy [B, L, C]; fp32 partials [T, K*K, C], [T, C]
    B, L, C, DIL,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    i_tile, i_c = tl.program_id(0), tl.program_id(1)
    scale_begin, p, o_t, m_t, o_i, o_j, o_c, m_c = _tile_tokens(tiles, i_tile, i_c, C, BLOCK_T, BLOCK_C)
    m_tc = m_t[:, None] & m_c[None, :]
    p_dy = dy + (scale_begin + o_t)[:, None] * C + o_c[None, :]
    for i_k in range(K * K):  # a loop, not unrolled: see _conv_kernel
        o_ii, o_jj, m_in = _tap(i_k, o_i, o_j, m_t, p, DIL, K)
        p_x = x + (scale_begin + o_ii * p + o_jj)[:, None] * C + o_c[None, :]
        b_acc = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
        for i_b in range(B):
            b_dy = tl.load(p_dy + i_b * L * C, mask=m_tc, other=0.0).to(tl.float32)
            b_x = tl.load(p_x + i_b * L * C, mask=m_in[:, None] & m_c[None, :], other=0.0).to(tl.float32)
            b_acc += b_dy * b_x
        tl.store(dw_part + (i_tile * K * K + i_k) * C + o_c, tl.sum(b_acc, 0), mask=m_c)
    if HAS_BIAS:
        b_acc = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
        for i_b in range(B):
            b_acc += tl.load(p_dy + i_b * L * C, mask=m_tc, other=0.0).to(tl.float32)
        tl.store(db_part + i_tile * C + o_c, tl.sum(b_acc, 0), mask=m_c)


def _meta(K: int, has_bias: bool, C: int) -> dict:
    """The constexprs both kernels take: filter size, bias or not, and the token and channel blocks."""
    return dict(K=K, HAS_BIAS=has_bias, BLOCK_T=BLOCK_T, BLOCK_C=min(MAX_BLOCK_C, triton.next_power_of_2(C)))


def _forward(x_BLC, patch_nums, weight_Ckk, bias_C, dilation):
    """The conv, one launch over every scale; also the input gradient (with the flipped filter)."""
    B, L, C = x_BLC.shape
    K = weight_Ckk.shape[-1]
    tiles = tile_table(patch_nums, BLOCK_T, x_BLC.device)
    y_BLC = torch.empty_like(x_BLC)
    has_bias = bias_C is not None
    meta = _meta(K, has_bias, C)
    grid = (tiles.shape[0], B, triton.cdiv(C, meta["BLOCK_C"]))
    bias_or_weight = bias_C if has_bias else weight_Ckk  # a valid pointer the kernel never reads
    _conv_kernel[grid](x_BLC, weight_Ckk, bias_or_weight, y_BLC, tiles, L, C, dilation, **meta)
    return y_BLC


def _weight_grad(x_BLC, dy_BLC, patch_nums, K, dilation, has_bias):
    """dweight ``[C, K, K]`` and dbias ``[C]`` (None without a bias): fp32 partials per tile, summed here."""
    B, L, C = x_BLC.shape
    tiles = tile_table(patch_nums, BLOCK_T, x_BLC.device)
    num_tiles = tiles.shape[0]
    dw_part = torch.empty(num_tiles, K * K, C, dtype=torch.float32, device=x_BLC.device)
    db_part = torch.empty(num_tiles, C, dtype=torch.float32, device=x_BLC.device) if has_bias else dw_part
    meta = _meta(K, has_bias, C)
    grid = (num_tiles, triton.cdiv(C, meta["BLOCK_C"]))
    _wgrad_kernel[grid](x_BLC, dy_BLC, dw_part, db_part, tiles, B, L, C, dilation, **meta)
    # Second stage: the sum over tiles (deterministic).
    return dw_part.sum(0).t().reshape(C, K, K), db_part.sum(0) if has_bias else None


def _backward(x_BLC, weight_Ckk, dy_BLC, patch_nums, dilation, has_bias, needs_dx, needs_dw):
    """``(dx, dweight, dbias)``, each None when not needed (dbias also without a bias)."""
    dx = dw = db = None
    if needs_dx:
        # Adjoint of a symmetric-pad 'same' correlation = correlation with the flipped filter.
        dx = _forward(dy_BLC, patch_nums, weight_Ckk.flip(1, 2).contiguous(), None, dilation)
    if needs_dw:
        dw, db = _weight_grad(x_BLC, dy_BLC, patch_nums, weight_Ckk.shape[-1], dilation, has_bias)
        dw = dw.to(weight_Ckk.dtype)
        db = None if db is None else db.to(weight_Ckk.dtype)
    return dx, dw, db


class RaggedDepthwiseConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BLC, patch_nums, weight_Ckk, bias_C, dilation):
        x_BLC, weight_Ckk = x_BLC.contiguous(), weight_Ckk.contiguous()
        bias_C = None if bias_C is None else bias_C.contiguous()
        ctx.save_for_backward(x_BLC, weight_Ckk)
        ctx.patch_nums, ctx.dilation, ctx.has_bias = patch_nums, dilation, bias_C is not None
        return _forward(x_BLC, patch_nums, weight_Ckk, bias_C, dilation)

    @staticmethod
    def backward(ctx, dy_BLC):
        x_BLC, weight_Ckk = ctx.saved_tensors
        needs_dw = ctx.needs_input_grad[2] or (ctx.has_bias and ctx.needs_input_grad[3])
        dx, dw, db = _backward(
            x_BLC, weight_Ckk, dy_BLC.contiguous(), ctx.patch_nums, ctx.dilation, ctx.has_bias,
            ctx.needs_input_grad[0], needs_dw,
        )  # fmt: skip
        return dx, None, dw, db, None


def ragged_depthwise_conv2d(
    x_BLC: torch.Tensor,
    patch_nums: tuple[int, ...],
    weight_Ckk: torch.Tensor,
    bias_C: torch.Tensor | None,
    dilation: int,
) -> torch.Tensor:
    """Triton version of :func:`kernels.ragged_depthwise_conv2d` (arguments already checked)."""
    return RaggedDepthwiseConv2dFunction.apply(x_BLC, patch_nums, weight_Ckk, bias_C, dilation)

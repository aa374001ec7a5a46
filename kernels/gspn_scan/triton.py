"""Triton kernels of the GSPN line scan and gate normalisation (docs/architecture.md section 7.5; reference.py is
the spec).

Scan, forward: ONE launch, grid ``(N*C,)``. The recurrence couples neighbouring rows (g0 reads row
r-1, g2 row r+1 of the previous column), so a program owns all H rows of one ``(n, c)`` map (H
padded to a power of two) and walks the W columns in order. Its own row's previous value stays in
registers; the row-shifted neighbours ``h[r-1, c-1]`` and ``h[r+1, c-1]`` are re-read with masked,
shifted loads of the column it has just stored (h is written anyway). Shifting a register vector
across lanes has no Triton primitive (a one-hot reduction would be O(H^2) per column), so the
program stores, calls ``tl.debug_barrier()`` (a CTA barrier on GPU: the store of one thread is then
visible to the others), and reloads; the reloaded column is in L1. The hidden state is kept and
re-read in fp32 (a scratch ``[N, C, H, W]`` fp32, also saved for the backward), so fp16 inputs do
not round h at every step; the output is its cast to the input dtype. Chunked scans restart
(``h = lam*x``) at every column ``c % chunk == 0``; ``chunk=None`` is ``chunk=W``.

Scan, backward: ONE launch, same grid, columns right to left (the adjoint recurrence):
``dh[r,c] = dy[r,c] + g0[r+1,c+1] dh[r+1,c+1] + g1[r,c+1] dh[r,c+1] + g2[r-1,c+1] dh[r-1,c+1]``
(nothing propagates into c from a restart column c+1), again with an fp32 scratch for the shifted
reads of ``dh``; then ``dx = lam dh``, ``dlam = x dh``, ``dg0 = dh h[r-1,c-1]``, ``dg1 = dh h[r,c-1]``,
``dg2 = dh h[r+1,c-1]`` (zero on restart columns), all written in the same pass.

Memory access on GPU: a column of a ``[H, W]`` map is strided by W, so each step touches H cache
lines per tensor and relies on L1/L2 to reuse them over the next columns. TODO(gpu): measure; a
W-major layout (transposed by the caller, which already flips/transposes for the four directions)
would make every column load contiguous.

Gate normalisation: an elementwise kernel over ``[N, CHW]`` blocks, reading the three gates of a
pixel at once; its backward is a second elementwise kernel that recomputes the sigmoids. In eager
PyTorch the same is ~6 kernels (sigmoid, mask, sum, clamp, divide, cast) each re-reading the
``[N, 3, C, H, W]`` tensor, and its autograd saves several intermediates; fused it is one read and
one write forward, two reads and one write backward, and nothing saved but the raw gates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import GATE_SUM_MIN

__all__ = ["GspnNormalizeGatesFunction", "GspnScanFunction", "gspn_normalize_gates", "gspn_scan"]

BLOCK_GATES = 256  # pixels per program of the gate kernels. TODO(gpu): tune.


def _num_warps(block_h: int) -> int:
    return max(1, min(4, block_h // 32))


@triton.jit
def _scan_lines(C, H, W, BLOCK_H: tl.constexpr):
    """The rows of this program's ``(n, c)`` map: row masks (all rows, rows with a row above, rows
    with a row below), the offset of each row's first column in the ``[N, C, H, W]`` tensors and
    in gate g0 of ``[N, 3, C, H, W]`` (g1 and g2 are ``C*H*W`` further each), and ``C*H*W``."""
    i_nc = tl.program_id(0)
    i_n = i_nc // C
    i_c = i_nc % C
    HW = H * W
    o_r = tl.arange(0, BLOCK_H)
    m_r = o_r < H
    m_up = m_r & (o_r >= 1)
    m_dn = o_r + 1 < H
    o_line = i_nc * HW + o_r * W
    o_g0 = (i_n * 3 * C + i_c) * HW + o_r * W
    return o_r, m_r, m_up, m_dn, o_line, o_g0, C * HW


@triton.jit
def _scan_fwd_kernel(x, lam, g, h, C, H, W, CHUNK, BLOCK_H: tl.constexpr):
    o_r, m_r, m_up, m_dn, o_line, o_g0, CHW = _scan_lines(C, H, W, BLOCK_H)
    p_x = x + o_line
    p_lam = lam + o_line
    p_h = h + o_line
    p_g0 = g + o_g0
    p_g1 = p_g0 + CHW
    p_g2 = p_g1 + CHW
    b_h = tl.zeros([BLOCK_H], tl.float32)
    for c in range(W):
        b_in = tl.load(p_lam + c, mask=m_r, other=0.0).to(tl.float32) * tl.load(p_x + c, mask=m_r, other=0.0).to(
            tl.float32
        )
        # False on restart columns (c = 0 among them); a vector, so it combines with vector masks.
        carry = ((o_r * 0 + c) % CHUNK) != 0
        b_up = tl.load(p_h + c - 1 - W, mask=m_up & carry, other=0.0)  # h[r-1, c-1]
        b_dn = tl.load(p_h + c - 1 + W, mask=m_dn & carry, other=0.0)  # h[r+1, c-1]
        b_g0 = tl.load(p_g0 + c, mask=m_r & carry, other=0.0).to(tl.float32)
        b_g1 = tl.load(p_g1 + c, mask=m_r & carry, other=0.0).to(tl.float32)
        b_g2 = tl.load(p_g2 + c, mask=m_r & carry, other=0.0).to(tl.float32)
        b_h = b_g0 * b_up + b_g1 * b_h + b_g2 * b_dn + b_in
        tl.store(p_h + c, b_h, mask=m_r)
        tl.debug_barrier()  # the next column reads this one's neighbours written by other threads


@triton.jit
def _scan_bwd_kernel(x, lam, g, h, dy, dh, dx, dlam, dg, C, H, W, CHUNK, BLOCK_H: tl.constexpr):
    o_r, m_r, m_up, m_dn, o_line, o_g0, CHW = _scan_lines(C, H, W, BLOCK_H)
    o_g1 = o_g0 + CHW
    o_g2 = o_g1 + CHW
    b_dh = tl.zeros([BLOCK_H], tl.float32)  # dh of column c+1
    for j in range(W):
        c = W - 1 - j
        # What column c+1 sends back, unless c+1 is past the end or a restart column.
        o_next = o_r * 0 + c + 1  # column c+1, as a vector (masks must be vectors)
        prop = (o_next < W) & (o_next % CHUNK != 0)
        b_g1n = tl.load(g + o_g1 + c + 1, mask=m_r & prop, other=0.0).to(tl.float32)
        b_g0n = tl.load(g + o_g0 + c + 1 + W, mask=m_dn & prop, other=0.0).to(tl.float32)  # g0[r+1, c+1]
        b_g2n = tl.load(g + o_g2 + c + 1 - W, mask=m_up & prop, other=0.0).to(tl.float32)  # g2[r-1, c+1]
        b_dh_dn = tl.load(dh + o_line + c + 1 + W, mask=m_dn & prop, other=0.0)  # dh[r+1, c+1]
        b_dh_up = tl.load(dh + o_line + c + 1 - W, mask=m_up & prop, other=0.0)  # dh[r-1, c+1]
        b_dy = tl.load(dy + o_line + c, mask=m_r, other=0.0).to(tl.float32)
        b_dh = b_dy + b_g1n * b_dh + b_g0n * b_dh_dn + b_g2n * b_dh_up
        tl.store(dh + o_line + c, b_dh, mask=m_r)
        b_x = tl.load(x + o_line + c, mask=m_r, other=0.0).to(tl.float32)
        b_lam = tl.load(lam + o_line + c, mask=m_r, other=0.0).to(tl.float32)
        tl.store(dx + o_line + c, (b_lam * b_dh).to(dx.dtype.element_ty), mask=m_r)
        tl.store(dlam + o_line + c, (b_x * b_dh).to(dlam.dtype.element_ty), mask=m_r)
        carry = ((o_r * 0 + c) % CHUNK) != 0
        b_h_up = tl.load(h + o_line + c - 1 - W, mask=m_up & carry, other=0.0)
        b_h_mid = tl.load(h + o_line + c - 1, mask=m_r & carry, other=0.0)
        b_h_dn = tl.load(h + o_line + c - 1 + W, mask=m_dn & carry, other=0.0)
        tl.store(dg + o_g0 + c, (b_dh * b_h_up).to(dg.dtype.element_ty), mask=m_r)
        tl.store(dg + o_g1 + c, (b_dh * b_h_mid).to(dg.dtype.element_ty), mask=m_r)
        tl.store(dg + o_g2 + c, (b_dh * b_h_dn).to(dg.dtype.element_ty), mask=m_r)
        tl.debug_barrier()  # the next (left) column reads this one's dh of neighbouring rows


def _scan_forward(x, lam, g, chunk):
    """The scan's hidden state ``h`` in fp32 ``[N, C, H, W]``, one program per (image, channel)."""
    N, C, H, W = x.shape
    h32 = torch.empty(N, C, H, W, dtype=torch.float32, device=x.device)
    block_h = triton.next_power_of_2(H)
    _scan_fwd_kernel[(N * C,)](x, lam, g, h32, C, H, W, chunk or W, BLOCK_H=block_h, num_warps=_num_warps(block_h))
    return h32


def _scan_backward(x, lam, g, h32, dy, chunk):
    N, C, H, W = x.shape
    dh32 = torch.empty_like(h32)
    dx, dlam, dg = torch.empty_like(x), torch.empty_like(lam), torch.empty_like(g)
    block_h = triton.next_power_of_2(H)
    _scan_bwd_kernel[(N * C,)](
        x,
        lam,
        g,
        h32,
        dy,
        dh32,
        dx,
        dlam,
        dg,
        C,
        H,
        W,
        chunk or W,
        BLOCK_H=block_h,
        num_warps=_num_warps(block_h),
    )
    return dx, dlam, dg


class GspnScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam, g, chunk):
        x, lam, g = (t.contiguous() for t in (x, lam, g))
        h32 = _scan_forward(x, lam, g, chunk)
        ctx.save_for_backward(x, lam, g, h32)
        ctx.chunk = chunk
        return h32.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, lam, g, h32 = ctx.saved_tensors
        return (*_scan_backward(x, lam, g, h32, dy.contiguous(), ctx.chunk), None)


def gspn_scan(x_NCHW: torch.Tensor, lam_NCHW: torch.Tensor, g_N3CHW: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Triton version of :func:`kernels.gspn_scan` (arguments already checked)."""
    return GspnScanFunction.apply(x_NCHW, lam_NCHW, g_N3CHW, chunk)


@triton.jit
def _gates(g_raw, i_n, o, m, CHW, H, W):
    """Sigmoids of a pixel's three raw gates with the out-of-map neighbour zeroed, and the pixels' row."""
    o_row = (o // W) % H
    p = g_raw + i_n * 3 * CHW + o
    b_s0 = tl.sigmoid(tl.load(p, mask=m, other=0.0).to(tl.float32))
    b_s1 = tl.sigmoid(tl.load(p + CHW, mask=m, other=0.0).to(tl.float32))
    b_s2 = tl.sigmoid(tl.load(p + 2 * CHW, mask=m, other=0.0).to(tl.float32))
    b_in0 = tl.where(o_row == 0, 0.0, 1.0)  # g0 reads row r-1: none on row 0
    b_in2 = tl.where(o_row == H - 1, 0.0, 1.0)  # g2 reads row r+1: none on the last row
    return b_s0, b_s1, b_s2, b_in0, b_in2


@triton.jit
def _gates_fwd_kernel(g_raw, g, CHW, H, W, eps, BLOCK: tl.constexpr):
    i_n = tl.program_id(0)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = o < CHW
    b_s0, b_s1, b_s2, b_in0, b_in2 = _gates(g_raw, i_n, o, m, CHW, H, W)
    b_s0 *= b_in0
    b_s2 *= b_in2
    b_rden = 1.0 / tl.maximum(b_s0 + b_s1 + b_s2, eps)
    p = g + i_n * 3 * CHW + o
    tl.store(p, (b_s0 * b_rden).to(g.dtype.element_ty), mask=m)
    tl.store(p + CHW, (b_s1 * b_rden).to(g.dtype.element_ty), mask=m)
    tl.store(p + 2 * CHW, (b_s2 * b_rden).to(g.dtype.element_ty), mask=m)


@triton.jit
def _gates_bwd_kernel(g_raw, dg, dg_raw, CHW, H, W, eps, BLOCK: tl.constexpr):
    i_n = tl.program_id(0)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = o < CHW
    b_s0, b_s1, b_s2, b_in0, b_in2 = _gates(g_raw, i_n, o, m, CHW, H, W)
    b_t0 = b_s0 * b_in0
    b_t2 = b_s2 * b_in2
    b_sum = b_t0 + b_s1 + b_t2
    b_rden = 1.0 / tl.maximum(b_sum, eps)
    p = dg + i_n * 3 * CHW + o
    b_dg0 = tl.load(p, mask=m, other=0.0).to(tl.float32)
    b_dg1 = tl.load(p + CHW, mask=m, other=0.0).to(tl.float32)
    b_dg2 = tl.load(p + 2 * CHW, mask=m, other=0.0).to(tl.float32)
    # y_k = t_k / max(sum, eps): d t_k = (dy_k - sum_j dy_j y_j [sum > eps]) / max(sum, eps).
    b_dot = (b_dg0 * b_t0 + b_dg1 * b_s1 + b_dg2 * b_t2) * b_rden
    b_dot = tl.where(b_sum > eps, b_dot, 0.0)
    p_raw = dg_raw + i_n * 3 * CHW + o
    dtype = dg_raw.dtype.element_ty
    tl.store(p_raw, ((b_dg0 - b_dot) * b_rden * b_in0 * b_s0 * (1.0 - b_s0)).to(dtype), mask=m)
    tl.store(p_raw + CHW, ((b_dg1 - b_dot) * b_rden * b_s1 * (1.0 - b_s1)).to(dtype), mask=m)
    tl.store(p_raw + 2 * CHW, ((b_dg2 - b_dot) * b_rden * b_in2 * b_s2 * (1.0 - b_s2)).to(dtype), mask=m)


def _gates_forward(g_raw):
    N, _, C, H, W = g_raw.shape
    g = torch.empty_like(g_raw)
    grid = (N, triton.cdiv(C * H * W, BLOCK_GATES))
    _gates_fwd_kernel[grid](g_raw, g, C * H * W, H, W, GATE_SUM_MIN, BLOCK=BLOCK_GATES)
    return g


def _gates_backward(g_raw, dg):
    N, _, C, H, W = g_raw.shape
    dg_raw = torch.empty_like(g_raw)
    grid = (N, triton.cdiv(C * H * W, BLOCK_GATES))
    _gates_bwd_kernel[grid](g_raw, dg, dg_raw, C * H * W, H, W, GATE_SUM_MIN, BLOCK=BLOCK_GATES)
    return dg_raw


class GspnNormalizeGatesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g_raw):
        g_raw = g_raw.contiguous()
        ctx.save_for_backward(g_raw)
        return _gates_forward(g_raw)

    @staticmethod
    def backward(ctx, dg):
        (g_raw,) = ctx.saved_tensors
        return _gates_backward(g_raw, dg.contiguous())


def gspn_normalize_gates(g_raw_N3CHW: torch.Tensor) -> torch.Tensor:
    """Triton version of :func:`kernels.gspn_normalize_gates` (arguments already checked)."""
    return GspnNormalizeGatesFunction.apply(g_raw_N3CHW)

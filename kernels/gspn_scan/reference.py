"""PyTorch reference of the GSPN line scan and its gate normalisation (docs/architecture.md section 7.5).

The scan runs along the width W of each ``H x W`` map. Column c mixes three neighbours of column
c-1 (rows r-1, r, r+1; rows outside the map read as 0) with weights ``g0, g1, g2`` and adds the
input ``lam * x``:

    h[r, 0] = lam[r, 0] * x[r, 0]
    h[r, c] = g0[r,c]*h[r-1,c-1] + g1[r,c]*h[r,c-1] + g2[r,c]*h[r+1,c-1] + lam[r,c]*x[r,c]

With ``chunk``, the scan restarts (``h = lam * x``) at every column ``c % chunk == 0``.

The reference loops over columns in a column-major copy (``[W, H, N, C]``, each column contiguous)
and has a hand-written backward: autograd through the loop would record a dozen nodes per column,
and the backward of each column slice fills a zero tensor the size of the whole map, which made the
scan the slowest part of a CPU training step at the digits' sizes. The backward is the adjoint
recurrence, run from the last column to the first (see :class:`_GSPNScan`). The forward adds the
same products in the same order as the formula above: bit for bit the column-by-column scan.
Gates broadcast over the channels (stride 0) are read in place, not copied per channel.
"""

from __future__ import annotations

import torch

__all__ = ["GATE_SUM_MIN", "gspn_normalize_gates", "gspn_scan"]

GATE_SUM_MIN = 1e-7  # docs/architecture.md section 7.5: the gate sum is clamped here before dividing


def _scan_columns(inject_WHNC: torch.Tensor, g_W3HNC: torch.Tensor, restart_W: list[bool]) -> torch.Tensor:
    """The recurrence over columns, written into a row-padded buffer ``[W, H + 2, N, C]``, returned.

    Column c reads its gates at ``g_W3HNC[c - 1]`` (column 0 always restarts and has none). Rows 0
    and H + 1 of the buffer stay 0: they are the rows outside the map that rows 0 and H - 1 read.
    """
    W, H, N, C = inject_WHNC.shape
    h_buf = inject_WHNC.new_empty(W, H + 2, N, C)
    h_buf[:, 0] = 0
    h_buf[:, H + 1] = 0
    for c in range(W):
        h_HNC = h_buf[c, 1 : H + 1]
        if restart_W[c]:
            h_HNC.copy_(inject_WHNC[c])
            continue
        prev_HNC = h_buf[c - 1]
        g_up, g_mid, g_down = g_W3HNC[c - 1]
        # ((g0 * h[r-1] + g1 * h[r]) + g2 * h[r+1]) + lam * x: the formula's order, so the same rounding.
        torch.mul(g_up, prev_HNC[:H], out=h_HNC)
        h_HNC.add_(g_mid * prev_HNC[1 : H + 1])
        h_HNC.add_(g_down * prev_HNC[2:])
        h_HNC.add_(inject_WHNC[c])
    return h_buf


def _adjoint_columns(dh_WHNC: torch.Tensor, g_W3HNC: torch.Tensor, restart_W: list[bool]) -> torch.Tensor:
    """The backward recurrence, from the last column to the first: ``a[c-1] = dh[c-1] + G[c]^T a[c]``."""
    W = dh_WHNC.shape[0]
    a_WHNC = torch.empty_like(dh_WHNC)
    a_WHNC[W - 1] = dh_WHNC[W - 1]
    for c in range(W - 1, 0, -1):
        a_HNC, out_HNC = a_WHNC[c], a_WHNC[c - 1]
        out_HNC.copy_(dh_WHNC[c - 1])
        if restart_W[c]:
            continue
        g_up, g_mid, g_down = g_W3HNC[c]
        # row r of column c-1 feeds row r (through g1), row r+1 (through its g0) and row r-1 (its g2)
        out_HNC.add_(g_mid * a_HNC)
        out_HNC[:-1].add_(g_up[1:] * a_HNC[1:])
        out_HNC[1:].add_(g_down[:-1] * a_HNC[:-1])
    return a_WHNC


class _GSPNScan(torch.autograd.Function):
    """``h = scan(inject, g)`` on column-major tensors (``[W, H, N, C]``), with a hand-written backward.

    With ``a[c] = dL/dh[c]`` (everything that reaches column c), the adjoint runs right to left,
    ``a[c-1] = dh[c-1] + G[c]^T a[c]`` (``G[c]``: column c's tridiagonal mixing, none across a
    restart), one column at a time; then ``d inject = a`` and ``d g_k[c] = a[c] * h[c-1]`` read at
    the row that gate k reads (0 on restart columns), three whole-tensor products.
    """

    @staticmethod
    def forward(ctx, inject_WHNC: torch.Tensor, g_W3HNC: torch.Tensor, restart_W: list[bool]) -> torch.Tensor:
        h_buf = _scan_columns(inject_WHNC, g_W3HNC[1:], restart_W)
        ctx.save_for_backward(g_W3HNC, h_buf)
        ctx.restart_W = restart_W
        return h_buf[:, 1:-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh_WHNC: torch.Tensor):
        g_W3HNC, h_buf = ctx.saved_tensors
        restart_W = ctx.restart_W
        W, H = h_buf.shape[0], h_buf.shape[1] - 2
        a_WHNC = _adjoint_columns(dh_WHNC, g_W3HNC, restart_W)
        d_g = None
        if ctx.needs_input_grad[1]:
            d_g = a_WHNC.new_empty(g_W3HNC.shape)  # per channel, also where g is one gate broadcast
            for k in range(3):  # gate k of column c reads row r - 1 + k of column c - 1
                torch.mul(a_WHNC[1:], h_buf[:-1, k : k + H], out=d_g[1:, k])
            for c in range(W):
                if restart_W[c]:  # column 0 among them
                    d_g[c].zero_()
        return a_WHNC, d_g, None


def gspn_scan(x_NCHW: torch.Tensor, lam_NCHW: torch.Tensor, g_N3CHW: torch.Tensor, chunk: int | None) -> torch.Tensor:
    acc_dtype = torch.promote_types(x_NCHW.dtype, torch.float32)
    x, lam, g = (t.to(acc_dtype) for t in (x_NCHW, lam_NCHW, g_N3CHW))
    W = x.shape[-1]
    restart_W = [c == 0 or (chunk is not None and c % chunk == 0) for c in range(W)]
    # Column-major copies (no copy when the caller's memory is already in this order). Gates that
    # are one value broadcast over the channels (stride 0, as GSPN's gates per head) are read as
    # they are: a per-channel copy would be 3 N C H W floats written and read back for nothing.
    inject_WHNC = (lam * x).permute(3, 2, 0, 1).contiguous()
    g_W3HNC = g.permute(4, 1, 3, 0, 2)
    if g.stride(2) != 0 or g.shape[2] == 1:
        g_W3HNC = g_W3HNC.contiguous()
    h_WHNC = _GSPNScan.apply(inject_WHNC, g_W3HNC, restart_W)
    return h_WHNC.permute(2, 3, 1, 0).to(x_NCHW.dtype)  # [N, C, H, W]


def gspn_normalize_gates(g_raw_N3CHW: torch.Tensor) -> torch.Tensor:
    acc_dtype = torch.promote_types(g_raw_N3CHW.dtype, torch.float32)
    H = g_raw_N3CHW.shape[3]
    # The out-of-map neighbour gets weight 0 so each pixel's three weights still sum to 1 over the
    # neighbours that exist: g0 (row r-1) on row 0, g2 (row r+1) on row H-1; both when H == 1.
    in_map_3H = torch.ones(3, H, dtype=acc_dtype, device=g_raw_N3CHW.device)
    in_map_3H[0, 0] = 0
    in_map_3H[2, H - 1] = 0
    g_N3CHW = torch.sigmoid(g_raw_N3CHW.to(acc_dtype)) * in_map_3H[None, :, None, :, None]
    g_N3CHW = g_N3CHW / g_N3CHW.sum(dim=1, keepdim=True).clamp_min(GATE_SUM_MIN)
    return g_N3CHW.to(g_raw_N3CHW.dtype)

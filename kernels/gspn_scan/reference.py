"""PyTorch reference of the GSPN line scan and its gate normalisation (DESIGN.md section 7.5).

The scan runs along the width W of each ``H x W`` map. Column c mixes three neighbours of column
c-1 (rows r-1, r, r+1; rows outside the map read as 0) with weights ``g0, g1, g2`` and adds the
input ``lam * x``:

    h[r, 0] = lam[r, 0] * x[r, 0]
    h[r, c] = g0[r,c]*h[r-1,c-1] + g1[r,c]*h[r,c-1] + g2[r,c]*h[r+1,c-1] + lam[r,c]*x[r,c]

With ``chunk``, the scan restarts (``h = lam * x``) at every column ``c % chunk == 0``. The reference
loops over columns, so autograd differentiates it as written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["GATE_SUM_MIN", "gspn_normalize_gates", "gspn_scan"]

GATE_SUM_MIN = 1e-7  # DESIGN.md section 7.5: the gate sum is clamped here before dividing


def gspn_scan(x_NCHW: torch.Tensor, lam_NCHW: torch.Tensor, g_N3CHW: torch.Tensor, chunk: int | None) -> torch.Tensor:
    acc_dtype = torch.promote_types(x_NCHW.dtype, torch.float32)
    x, lam, g = (t.to(acc_dtype) for t in (x_NCHW, lam_NCHW, g_N3CHW))
    W = x.shape[-1]
    g_up, g_mid, g_down = g.unbind(dim=1)  # each [N, C, H, W]: weights of rows r-1, r, r+1
    h_cols = []
    h_NCH = None
    for c in range(W):
        inject_NCH = lam[..., c] * x[..., c]
        if h_NCH is None or (chunk is not None and c % chunk == 0):
            h_NCH = inject_NCH
        else:
            from_up_NCH = F.pad(h_NCH[..., :-1], (1, 0))  # row r reads h[r-1]; row 0 reads 0
            from_down_NCH = F.pad(h_NCH[..., 1:], (0, 1))  # row r reads h[r+1]; row H-1 reads 0
            h_NCH = g_up[..., c] * from_up_NCH + g_mid[..., c] * h_NCH + g_down[..., c] * from_down_NCH + inject_NCH
        h_cols.append(h_NCH)
    return torch.stack(h_cols, dim=-1).to(x_NCHW.dtype)  # [N, C, H, W]


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

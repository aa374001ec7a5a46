"""Public entries of the GSPN line scan and gate normalisation: argument checks, then dispatch."""

from __future__ import annotations

import torch

from .._backend import get_impl
from .._checks import check_same_dtype_device, check_tensor

__all__ = ["gspn_normalize_gates", "gspn_scan"]


def gspn_scan(
    x: torch.Tensor,
    lam: torch.Tensor,
    g: torch.Tensor,
    chunk: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Generalized spatial propagation: a 3-neighbour linear recurrence along the width.

    ``h[r, 0] = lam[r,0]*x[r,0]``;
    ``h[r, c] = g0[r,c]*h[r-1,c-1] + g1[r,c]*h[r,c-1] + g2[r,c]*h[r+1,c-1] + lam[r,c]*x[r,c]``,
    rows outside the map reading as 0. With ``chunk``, the scan restarts at every column
    ``c % chunk == 0``. Other directions are obtained by flipping/transposing the inputs.

    Args:
        x: ``[N, C, H, W]`` input maps.
        lam: ``[N, C, H, W]`` input weights, shape, dtype and device of x.
        g: ``[N, 3, C, H, W]`` gates ``g0, g1, g2`` for rows r-1, r, r+1, already normalised
            (see :func:`gspn_normalize_gates`).
        chunk: restart period along W (int >= 1), or None for one scan over the whole width.
        backend: "auto" | "triton" | "torch" (overridden by the environment variable VAR_KERNEL_BACKEND).

    Returns:
        h: ``[N, C, H, W]``.
    """
    x_NCHW = check_tensor("x", x, "[N, C, H, W]")
    lam_NCHW = check_tensor("lam", lam, "[N, C, H, W]")
    g_N3CHW = check_tensor("g", g, "[N, 3, C, H, W]")
    if lam_NCHW.shape != x_NCHW.shape:
        raise ValueError(f"lam must have the shape of x {tuple(x_NCHW.shape)}, got {tuple(lam_NCHW.shape)}")
    N, C, H, W = x_NCHW.shape
    if g_N3CHW.shape != (N, 3, C, H, W):
        raise ValueError(
            f"g must be [N, 3, C, H, W] = {(N, 3, C, H, W)} from x {tuple(x_NCHW.shape)}, got {tuple(g_N3CHW.shape)}"
        )
    check_same_dtype_device(x=x_NCHW, lam=lam_NCHW, g=g_N3CHW)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be an int >= 1 or None, got {chunk!r}")
    impl = get_impl("gspn_scan", backend, x_NCHW.device)
    return impl(x_NCHW, lam_NCHW, g_N3CHW, chunk)


def gspn_normalize_gates(g_raw: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Turn raw gates into GSPN's stable propagation weights.

    ``sigmoid(g_raw)``, then the neighbour outside the map set to 0 (g0 on row 0, g2 on row H-1),
    then each pixel's three gates divided by their sum (clamped at 1e-7): positive, summing to 1.

    Args:
        g_raw: ``[N, 3, C, H, W]`` raw gates.
        backend: "auto" | "triton" | "torch" (overridden by the environment variable VAR_KERNEL_BACKEND).

    Returns:
        ``[N, 3, C, H, W]`` normalised gates, ready for :func:`gspn_scan`.
    """
    g_raw_N3CHW = check_tensor("g_raw", g_raw, "[N, 3, C, H, W]")
    if g_raw_N3CHW.shape[1] != 3:
        raise ValueError(f"g_raw must be [N, 3, C, H, W] (3 gates on dim 1), got {tuple(g_raw_N3CHW.shape)}")
    if g_raw_N3CHW.shape[3] < 1:
        raise ValueError(f"g_raw must have at least one row (H >= 1), got shape {tuple(g_raw_N3CHW.shape)}")
    impl = get_impl("gspn_normalize_gates", backend, g_raw_N3CHW.device)
    return impl(g_raw_N3CHW)

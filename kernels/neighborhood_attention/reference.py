"""PyTorch reference of pyramid neighborhood attention (docs/architecture.md section 7.2, the executable spec).

A query of scale k at (i, j) sees, for every scale s <= k of side n, a window of
``K_s = min(kernel_size, n)`` rows and columns. The window is centred on the projected position
``c_i = ((2i+1)*n) // (2*p_k)`` (the cell of scale s that contains the query cell's centre) and
starts at ``clamp(c_i - K_s//2, 0, n - K_s)``: shifted inward at borders as in NATTEN, so every
query keeps a full window. One softmax runs over the union of its windows.

The reference builds, per query scale, a boolean ``[L_k, end_k]`` visibility mask by index
arithmetic and runs a masked softmax over ``L_k x end_k`` logits: at most 1024 x 2240 at the 512 px
scale list, never an ``L x L x D`` tensor.
"""

from __future__ import annotations

import torch

from .._scales import ScaleLayout

__all__ = ["neighborhood_attention", "neighborhood_mask"]


def _window_1d(p_query: int, n: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """``[p_query, n]`` bool: row r of a side-n scale lies in the window of query row i."""
    K = min(kernel_size, n)
    i_P = torch.arange(p_query, device=device)
    centre_P = ((2 * i_P + 1) * n) // (2 * p_query)
    start_P = (centre_P - K // 2).clamp(0, n - K)
    r_N = torch.arange(n, device=device)
    return (r_N[None, :] >= start_P[:, None]) & (r_N[None, :] < start_P[:, None] + K)  # [P, N]


def neighborhood_mask(
    patch_nums: tuple[int, ...], kernel_size: int, k: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``[L_k, end_k]`` bool: which keys (scales <= k) each query of scale k attends to."""
    p_k = patch_nums[k]
    blocks = []
    for n in patch_nums[: k + 1]:
        rows_PN = _window_1d(p_k, n, kernel_size, torch.device(device or "cpu"))
        # The window is a square: key (r, c) is visible to query (i, j) iff row r is in i's window and
        # column c in j's window (the same 1-D rule on both axes).
        mask_PPNN = rows_PN[:, None, :, None] & rows_PN[None, :, None, :]
        blocks.append(mask_PPNN.reshape(p_k * p_k, n * n))
    return torch.cat(blocks, dim=1)  # [L_k, end_k]


def neighborhood_attention(
    q_BHLD: torch.Tensor,
    k_BHLD: torch.Tensor,
    v_BHLD: torch.Tensor,
    patch_nums: tuple[int, ...],
    kernel_size: int,
    scale: float,
) -> torch.Tensor:
    # Half-precision inputs are computed in float32 (the reference is the accurate side of tests).
    acc_dtype = torch.promote_types(q_BHLD.dtype, torch.float32)
    q, k, v = (t.to(acc_dtype) for t in (q_BHLD, k_BHLD, v_BHLD))
    out_per_scale = []
    for s, (begin, end) in enumerate(ScaleLayout.of(patch_nums).bounds):
        visible_lE = neighborhood_mask(patch_nums, kernel_size, s, q.device)
        logits_BHlE = torch.matmul(q[:, :, begin:end], k[:, :, :end].transpose(-1, -2)) * scale
        # Every query sees at least itself, so no row is all -inf and softmax stays finite.
        logits_BHlE = logits_BHlE.masked_fill(~visible_lE, float("-inf"))
        out_per_scale.append(torch.matmul(logits_BHlE.softmax(dim=-1), v[:, :, :end]))  # [B, H, l, D]
    return torch.cat(out_per_scale, dim=2).to(q_BHLD.dtype)  # [B, H, L, D]

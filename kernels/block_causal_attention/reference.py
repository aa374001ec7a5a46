"""PyTorch reference of block-causal softmax attention (docs/architecture.md section 7.1, the executable spec).

Key j is visible to query i iff scale(j) <= scale(i). The queries of scale k see exactly the
prefix of keys ``[:end_k]``, so the op is one dense attention per scale: ``L_k x end_k`` logits at
a time, never an ``L x L`` mask and never an ``L x L x D`` tensor.
"""

from __future__ import annotations

import torch

from .._scales import ScaleLayout

__all__ = ["block_causal_attention"]


def block_causal_attention(
    q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor, patch_nums: tuple[int, ...], scale: float
) -> torch.Tensor:
    # Half-precision inputs are computed in float32 so the reference is the accurate side of every
    # comparison with a kernel; float32/float64 stay as they are.
    acc_dtype = torch.promote_types(q_BHLD.dtype, torch.float32)
    q, k, v = (t.to(acc_dtype) for t in (q_BHLD, k_BHLD, v_BHLD))
    out_per_scale = []
    for begin, end in ScaleLayout.of(patch_nums).bounds:
        logits_BHlE = torch.matmul(q[:, :, begin:end], k[:, :, :end].transpose(-1, -2)) * scale  # E = end
        out_per_scale.append(torch.matmul(logits_BHlE.softmax(dim=-1), v[:, :, :end]))  # [B, H, l, D]
    return torch.cat(out_per_scale, dim=2).to(q_BHLD.dtype)  # [B, H, L, D]

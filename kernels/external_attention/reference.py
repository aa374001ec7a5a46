"""PyTorch reference of block-causal external attention (docs/architecture.md section 7.3, the executable spec).

Per head, learned memories ``mem_k, mem_v [S, D]``; ``a[n, m] = scale * q[n].mem_k[m]``.
Double normalisation, made block-causal:

1. softmax over the *token* axis, restricted to the tokens visible to n:
   ``A[n, m] = exp(a[n, m] - logsumexp_{n' : scale(n') <= scale(n)} a[n', m])``;
2. L1 over memories: ``A[n, m] /= sum_m' A[n, m'] + 1e-6``;
3. ``out[n] = sum_m A[n, m] mem_v[m]``.

The restricted logsumexp of step 1 is one logsumexp per scale block followed by a running
``logaddexp`` over blocks: exactly the running (max, sum) per memory slot a sampler carries.
"""

from __future__ import annotations

import torch

from .._scales import ScaleLayout

__all__ = ["L1_EPS", "external_attention"]

L1_EPS = 1e-6  # docs/architecture.md section 7.3: added to the memory-axis sum before dividing


def external_attention(
    q_BHLD: torch.Tensor, mem_k_HSD: torch.Tensor, mem_v_HSD: torch.Tensor, patch_nums: tuple[int, ...], scale: float
) -> torch.Tensor:
    # Half-precision inputs are computed in float32 (the reference is the accurate side of tests).
    acc_dtype = torch.promote_types(q_BHLD.dtype, torch.float32)
    q, mem_k, mem_v = (t.to(acc_dtype) for t in (q_BHLD, mem_k_HSD, mem_v_HSD))
    a_BHLS = torch.einsum("bhld,hsd->bhls", q, mem_k) * scale
    lse_prefix_BH1S = None
    A_per_scale = []
    for begin, end in ScaleLayout.of(patch_nums).bounds:
        a_BHlS = a_BHLS[:, :, begin:end]
        lse_block_BH1S = a_BHlS.logsumexp(dim=2, keepdim=True)
        lse_prefix_BH1S = (
            lse_block_BH1S if lse_prefix_BH1S is None else torch.logaddexp(lse_prefix_BH1S, lse_block_BH1S)
        )
        A_per_scale.append(torch.exp(a_BHlS - lse_prefix_BH1S))  # token-axis softmax over visible tokens
    A_BHLS = torch.cat(A_per_scale, dim=2)
    A_BHLS = A_BHLS / (A_BHLS.sum(dim=-1, keepdim=True) + L1_EPS)
    return torch.einsum("bhls,hsd->bhld", A_BHLS, mem_v).to(q_BHLD.dtype)  # [B, H, L, D]

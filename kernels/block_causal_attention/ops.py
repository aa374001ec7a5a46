"""Public entry of block-causal attention: argument checks, then dispatch to reference or Triton."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._backend import get_impl
from .._checks import check_patch_nums, check_qkv, check_scale

__all__ = ["block_causal_attention"]


def block_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patch_nums: Sequence[int],
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Softmax attention where a token of scale k sees every token of scales <= k.

    Args:
        q, k, v: ``[B, H, L, D]``, same shape, dtype and device; ``L = sum(p*p for p in patch_nums)``,
            tokens ordered coarse to fine, row-major inside each scale.
        patch_nums: side lengths of the square scales, e.g. ``(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)``.
        scale: logit scale, default ``D ** -0.5``.
        backend: "auto" | "triton" | "torch" (overridden by the environment variable VAR_KERNEL_BACKEND).

    Returns:
        ``[B, H, L, D]``; ``out[i] = softmax_j(scale * q[i].k[j] over scale(j) <= scale(i)) @ v``.
    """
    q_BHLD, k_BHLD, v_BHLD = check_qkv(q, k, v)
    pns = check_patch_nums(patch_nums, q_BHLD.shape[2], "q [B, H, L, D]")
    scale = check_scale(scale, q_BHLD.shape[3])
    impl = get_impl("block_causal_attention", backend, q_BHLD.device)
    return impl(q_BHLD, k_BHLD, v_BHLD, pns, scale)

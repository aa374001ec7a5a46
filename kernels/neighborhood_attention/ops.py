"""Public entry of pyramid neighborhood attention: argument checks, then dispatch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._backend import get_impl
from .._checks import check_kernel_size, check_patch_nums, check_qkv, check_scale

__all__ = ["neighborhood_attention"]


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patch_nums: Sequence[int],
    kernel_size: int,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Block-causal attention restricted to a window around the query's position on every scale.

    A query of scale k at (i, j) attends, on each scale s <= k of side n, to the
    ``min(kernel_size, n)``-square window centred on ``((2i+1)*n) // (2*p_k)`` (same for j) and shifted
    inward at the borders; one softmax over the union of these windows. With
    ``kernel_size >= max(patch_nums)`` this is :func:`kernels.block_causal_attention`.

    Args:
        q, k, v: ``[B, H, L, D]``, same shape, dtype and device; ``L = sum(p*p for p in patch_nums)``.
        patch_nums: side lengths of the square scales, coarse to fine.
        kernel_size: odd window side >= 1.
        scale: logit scale, default ``D ** -0.5``.
        backend: "auto" | "triton" | "torch" (overridden by the environment variable VAR_KERNEL_BACKEND).

    Returns:
        ``[B, H, L, D]``.
    """
    q_BHLD, k_BHLD, v_BHLD = check_qkv(q, k, v)
    pns = check_patch_nums(patch_nums, q_BHLD.shape[2], "q [B, H, L, D]")
    kernel_size = check_kernel_size("kernel_size", kernel_size)
    scale = check_scale(scale, q_BHLD.shape[3])
    impl = get_impl("neighborhood_attention", backend, q_BHLD.device)
    return impl(q_BHLD, k_BHLD, v_BHLD, pns, kernel_size, scale)

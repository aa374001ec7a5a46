"""Public entry of block-causal external attention: argument checks, then dispatch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._backend import get_impl
from .._checks import check_patch_nums, check_same_dtype_device, check_scale, check_tensor

__all__ = ["external_attention"]


def external_attention(
    q: torch.Tensor,
    mem_k: torch.Tensor,
    mem_v: torch.Tensor,
    patch_nums: Sequence[int],
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """External attention with learned memories and block-causal double normalisation.

    ``a[n, m] = scale * q[n].mem_k[m]``; softmax of ``a[:, m]`` over the tokens n' with
    ``scale(n') <= scale(n)``; then each row is divided by its sum over memories plus 1e-6;
    ``out[n] = sum_m A[n, m] mem_v[m]``.

    Args:
        q: ``[B, H, L, D]``; ``L = sum(p*p for p in patch_nums)``.
        mem_k, mem_v: ``[H, S, D]`` per-head memories (S slots), dtype and device of q.
        patch_nums: side lengths of the square scales, coarse to fine.
        scale: logit scale, default ``D ** -0.5``.
        backend: "auto" | "triton" | "torch" (overridden by the environment variable VAR_KERNEL_BACKEND).

    Returns:
        ``[B, H, L, D]``.
    """
    q_BHLD = check_tensor("q", q, "[B, H, L, D]")
    mem_k_HSD = check_tensor("mem_k", mem_k, "[H, S, D]")
    mem_v_HSD = check_tensor("mem_v", mem_v, "[H, S, D]")
    _B, H, L, D = q_BHLD.shape
    if mem_k_HSD.shape[0] != H or mem_k_HSD.shape[2] != D:
        raise ValueError(
            f"mem_k must be [H, S, D] with H = {H} and D = {D} from q {tuple(q_BHLD.shape)}, "
            f"got {tuple(mem_k_HSD.shape)}"
        )
    if mem_v_HSD.shape != mem_k_HSD.shape:
        raise ValueError(f"mem_v must have the shape of mem_k {tuple(mem_k_HSD.shape)}, got {tuple(mem_v_HSD.shape)}")
    check_same_dtype_device(q=q_BHLD, mem_k=mem_k_HSD, mem_v=mem_v_HSD)
    pns = check_patch_nums(patch_nums, L, "q [B, H, L, D]")
    scale = check_scale(scale, D)
    impl = get_impl("external_attention", backend, q_BHLD.device)
    return impl(q_BHLD, mem_k_HSD, mem_v_HSD, pns, scale)

"""Public entry of the ragged depthwise conv: argument checks, then dispatch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._backend import get_impl
from .._checks import check_dilation, check_kernel_size, check_patch_nums, check_same_dtype_device, check_tensor

__all__ = ["ragged_depthwise_conv2d"]


def ragged_depthwise_conv2d(
    x: torch.Tensor,
    patch_nums: Sequence[int],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Depthwise 2-D convolution of every scale's ``p x p`` map separately, 'same' size.

    Zero padding ``dilation * (k // 2)`` at each map's border; no token of one scale is read when
    computing another scale, so the op is block-causal (in fact block-diagonal).

    Args:
        x: ``[B, L, C]`` tokens, ``L = sum(p*p for p in patch_nums)``, row-major inside each scale.
        patch_nums: side lengths of the square scales, coarse to fine.
        weight: ``[C, k, k]`` one filter per channel, k odd; dtype and device of x.
        bias: ``[C]`` or None.
        dilation: int >= 1.
        backend: "auto" | "triton" | "torch" (overridden by the environment variable VAR_KERNEL_BACKEND).

    Returns:
        ``[B, L, C]``.
    """
    x_BLC = check_tensor("x", x, "[B, L, C]")
    weight_Ckk = check_tensor("weight", weight, "[C, k, k]")
    C = x_BLC.shape[2]
    if weight_Ckk.shape[0] != C or weight_Ckk.shape[1] != weight_Ckk.shape[2]:
        raise ValueError(
            f"weight must be [C, k, k] with C = {C} from x {tuple(x_BLC.shape)}, got {tuple(weight_Ckk.shape)}"
        )
    check_kernel_size("weight's kernel size k", weight_Ckk.shape[1])
    bias_C = None
    if bias is not None:
        bias_C = check_tensor("bias", bias, "[C]")
        if bias_C.shape[0] != C:
            raise ValueError(f"bias must be [C] with C = {C} from x {tuple(x_BLC.shape)}, got {tuple(bias.shape)}")
    check_same_dtype_device(x=x_BLC, weight=weight_Ckk, bias=bias_C)
    pns = check_patch_nums(patch_nums, x_BLC.shape[1], "x [B, L, C]")
    dilation = check_dilation(dilation)
    impl = get_impl("ragged_depthwise_conv2d", backend, x_BLC.device)
    return impl(x_BLC, pns, weight_Ckk, bias_C, dilation)

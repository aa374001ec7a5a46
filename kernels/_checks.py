"""Argument checks shared by the public ops.

Every failure is a ValueError that names the argument and shows the offending values, so a wrong
call fails at the op's boundary instead of deep inside a kernel with an index error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._scales import ScaleLayout

__all__ = [
    "check_dilation",
    "check_kernel_size",
    "check_patch_nums",
    "check_qkv",
    "check_same_dtype_device",
    "check_scale",
    "check_tensor",
]


def check_tensor(name: str, t: object, layout: str) -> torch.Tensor:
    """Check that ``t`` is a floating-point tensor whose rank matches ``layout`` (e.g. "[B, H, L, D]")."""
    rank = len(layout.strip("[]").split(","))
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have {rank} dims {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    return t


def check_same_dtype_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors (None entries skipped) share the dtype and device of the first one."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}; they must match")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; they must match")


def check_qkv(q: object, k: object, v: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries, keys and values of an attention op: ``[B, H, L, D]`` tensors of one shape, dtype
    and device."""
    q_BHLD = check_tensor("q", q, "[B, H, L, D]")
    k_BHLD = check_tensor("k", k, "[B, H, L, D]")
    v_BHLD = check_tensor("v", v, "[B, H, L, D]")
    for name, t in (("k", k_BHLD), ("v", v_BHLD)):
        if t.shape != q_BHLD.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q_BHLD.shape)}, got {tuple(t.shape)}")
    check_same_dtype_device(q=q_BHLD, k=k_BHLD, v=v_BHLD)
    return q_BHLD, k_BHLD, v_BHLD


def check_patch_nums(patch_nums: Sequence[int], L: int, source: str) -> tuple[int, ...]:
    """``sum(p*p for p in patch_nums)`` must equal the sequence length L read from ``source``."""
    layout = ScaleLayout.of(patch_nums)
    if layout.num_tokens != L:
        raise ValueError(
            f"patch_nums {layout.patch_nums} gives sum(p*p) = {layout.num_tokens} tokens but {source} has L = {L}"
        )
    return layout.patch_nums


def check_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale, defaulting to ``head_dim ** -0.5``."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a float or None, got {scale!r}")
    return float(scale)


def check_kernel_size(name: str, kernel_size: object) -> int:
    """An odd int >= 1, so a window has a centre."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name} must be an odd int >= 1, got {kernel_size!r}")
    return int(kernel_size)


def check_dilation(dilation: object) -> int:
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    return int(dilation)

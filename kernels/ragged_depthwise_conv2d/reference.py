"""PyTorch reference of the ragged depthwise conv (docs/architecture.md section 7.4, the executable spec).

Each scale's tokens form a ``p x p`` map, convolved depthwise with zero padding ``d*(k//2)`` ('same'
size); nothing is read across scales, so the op is one ``F.conv2d(groups=C)`` per scale.

A tap whose offset ``d*(t - k//2)`` is at least ``p`` away reads only padding for every output of a
``p x p`` map, so each scale convolves with the central taps that can reach it (exactly the same
result and gradients, the cropped taps' gradient being zero). On the small scales that is most of
the kernel: a 7x7 kernel with dilation 3 keeps 3x3 taps on a 4x4 map and 1 tap on a 3x3 one, and
CPU convolutions with a padding far larger than the map are slow. Where only the centre tap is left
(a 1x1 map, or a dilation at least the map's size), the conv is a per-channel product plus bias,
computed as such: a CPU conv call and its backward cost far more than that on maps this small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._scales import ScaleLayout

__all__ = ["ragged_depthwise_conv2d"]


def ragged_depthwise_conv2d(
    x_BLC: torch.Tensor,
    patch_nums: tuple[int, ...],
    weight_Ckk: torch.Tensor,
    bias_C: torch.Tensor | None,
    dilation: int,
) -> torch.Tensor:
    B, _, C = x_BLC.shape
    k = weight_Ckk.shape[-1]
    # Half-precision inputs are computed in float32 (the reference is the accurate side of tests).
    acc_dtype = torch.promote_types(x_BLC.dtype, torch.float32)
    x = x_BLC.to(acc_dtype)
    bias = None if bias_C is None else bias_C.to(acc_dtype)
    weight_C1kk = weight_Ckk.to(acc_dtype).unsqueeze(1)  # conv2d's depthwise layout [C_out, C_in / groups, k, k]
    out_per_scale = []
    for p, (begin, end) in zip(patch_nums, ScaleLayout.of(patch_nums).bounds):
        r = min(k // 2, (p - 1) // dilation)  # taps within reach of the map on each side of the centre
        if r == 0:  # the centre tap alone: a per-channel scale and shift, in the token layout
            x_BlC, w_C = x[:, begin:end], weight_C1kk[:, 0, k // 2, k // 2]
            out_per_scale.append(x_BlC * w_C if bias is None else torch.addcmul(bias, x_BlC, w_C))
            continue
        x_BCpp = x[:, begin:end].transpose(1, 2).reshape(B, C, p, p)
        w = weight_C1kk[..., k // 2 - r : k // 2 + r + 1, k // 2 - r : k // 2 + r + 1]
        y_BCpp = F.conv2d(x_BCpp, w, bias, padding=dilation * r, dilation=dilation, groups=C)
        out_per_scale.append(y_BCpp.reshape(B, C, p * p).transpose(1, 2))  # [B, p*p, C]
    return torch.cat(out_per_scale, dim=1).to(x_BLC.dtype)  # [B, L, C]

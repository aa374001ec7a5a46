"""The transformer's linear layers, with their fp32 GEMM on x86 CPUs routed to the faster of two libraries.

PyTorch's CPU wheel runs an fp32 ``F.linear`` through MKL. On AMD CPUs MKL takes its AVX2 code path and
leaves the AVX-512 units idle: on a 2-core AMD EPYC (Zen 5, 2026-12-02) ``F.linear`` reached 101-168 GFLOP/s
at d16's shapes (2048 rows; 1024 -> 3072, 1024 -> 4096, 4096 -> 1024), where oneDNN - the library PyTorch's
own convolutions and bf16 matmuls already use - reached 285-380 GFLOP/s, in exact fp32, and d16 sampling went
from 1.12x to 1.70x the published sampler (``benchmarks/results/sample-d16-cpu-amd-epyc-family-26-*``). On Intel CPUs MKL runs
at the machine's fp32 peak (375 GFLOP/s on a 2-core Xeon), so it stays there.

Rule (:func:`kernels.cpu_gemm`; ``kernels/_backend.py`` holds every choice of compute backend): ``"onednn"``
on x86 CPUs whose vendor is not Intel, ``"blas"`` (PyTorch's own ``F.linear``) everywhere else; the
environment variable ``VAR_CPU_GEMM`` (auto | onednn | blas) overrides it.
oneDNN is only used where it computes what ``F.linear`` computes, in fp32, without autograd:

- a CPU tensor, fp32 input and weight, no autocast on the CPU (under autocast ``F.linear`` casts to bf16 and
  oneDNN runs it already);
- no gradient to record (``torch.no_grad``, ``torch.inference_mode``, or nothing requiring grad): sampling,
  editing and evaluation. Training keeps ``F.linear`` and its backward;
- not inside ``torch.compile``: a compiled graph keeps ``F.linear`` and the compiler picks the GEMM.

Both libraries compute the same fp32 product; they differ in the order of the additions (about 1e-6 relative),
as two BLAS builds would. oneDNN also fuses the FFN's tanh-GELU into the GEMM (``activation="gelu_tanh"``).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kernels import cpu_gemm

__all__ = ["Linear", "linear"]

Activation = Optional[Literal["gelu_tanh"]]


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        not torch.compiler.is_compiling()  # a compiled graph: F.linear, and the compiler picks the GEMM
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and cpu_gemm() == "onednn"
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, activation: Activation = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ``activation`` (None or ``"gelu_tanh"``, fused into the GEMM on
    oneDNN), on the library :func:`cpu_gemm` picks for fp32 inference on a CPU; ``F.linear`` anywhere else."""
    if activation not in (None, "gelu_tanh"):
        raise ValueError(f"activation must be None or 'gelu_tanh', got {activation!r}")
    if _use_onednn(x, weight):
        post_op, algorithm = ("gelu", "tanh") if activation else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, post_op, [], algorithm)
    y = F.linear(x, weight, bias)
    return F.gelu(y, approximate="tanh") if activation else y


class Linear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear` (same parameters, same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

"""The one fp32 precision rule of every Triton kernel that uses ``tl.dot`` (docs/architecture.md section 7).

Matrix products on fp32 inputs follow torch's own switch, as ``torch.matmul`` does on a GPU:
``torch.get_float32_matmul_precision()`` "highest" -> IEEE fp32 (no tensor cores), "high" or
"medium" -> TF32 on the tensor cores. fp16/bf16 inputs always run on the tensor cores and
accumulate in fp32; for them ``input_precision`` changes nothing and the rule returns "tf32" so
that one compiled variant serves both settings. The value is read at every launch (a kernel
constexpr), so ``torch.set_float32_matmul_precision`` takes effect on the next call.
"""

from __future__ import annotations

import torch

__all__ = ["DOT_PRECISIONS", "dot_precision"]

# torch's fp32 matmul precision setting -> Triton's tl.dot input_precision for fp32 operands.
DOT_PRECISIONS: dict[str, str] = {"highest": "ieee", "high": "tf32", "medium": "tf32"}


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot`` on operands of ``dtype``: "ieee" or "tf32"."""
    if dtype != torch.float32:
        return "tf32"
    return DOT_PRECISIONS[torch.get_float32_matmul_precision()]

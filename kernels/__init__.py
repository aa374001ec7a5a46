"""Token-mixing ops of the next-scale transformer (docs/architecture.md section 7).

Each op lives in its own folder: ``reference.py`` is the plain PyTorch version and the executable
specification; ``triton.py`` holds the fused kernels (both registered in ``_backend.OPS``). Every
``triton.py`` has the same layers and names: the function the dispatcher calls,
named after the op -> ``<Op>Function``, its ``torch.autograd.Function`` -> module-level launchers
``_forward`` and ``_backward`` (``_<part>_forward`` where one module holds two Functions) that build
grids -> the ``@triton.jit`` kernels ``_*_kernel``. What the kernels share lives in
``_triton_helpers`` (host helpers, among them the launches of the two flash attentions' kernels,
``@triton.jit`` device functions, the attention backwards' delta kernel), ``_precision`` and
``_tiles``. The public functions below
check their arguments and dispatch with ``backend="auto" | "triton" | "torch"``; the environment
variable ``VAR_KERNEL_BACKEND`` overrides the argument (see :mod:`kernels._backend`).

Sequences are next-scale token sequences: ``patch_nums`` lists the side of each square scale,
``L = sum(p*p)``, tokens coarse to fine and row-major inside a scale; a token of scale k may depend
on tokens of scales <= k only.
"""

from ._backend import (
    BACKENDS,
    CPU_GEMM_ENV_VAR,
    ENV_VAR,
    BackendUnavailableError,
    cpu_gemm,
    cpu_info,
    onednn_linear_available,
    resolve_backend,
)
from ._scales import SCHEDULES, ScaleLayout
from .block_causal_attention import block_causal_attention
from .external_attention import external_attention
from .gspn_scan import gspn_normalize_gates, gspn_scan
from .neighborhood_attention import neighborhood_attention
from .ragged_depthwise_conv2d import ragged_depthwise_conv2d

__all__ = [
    "BACKENDS",
    "CPU_GEMM_ENV_VAR",
    "ENV_VAR",
    "SCHEDULES",
    "BackendUnavailableError",
    "ScaleLayout",
    "block_causal_attention",
    "cpu_gemm",
    "cpu_info",
    "external_attention",
    "gspn_normalize_gates",
    "gspn_scan",
    "neighborhood_attention",
    "onednn_linear_available",
    "ragged_depthwise_conv2d",
    "resolve_backend",
]

"""Which floating-point precision a device computes fast: the one rule both training and sampling ask.

bf16 only where the device has it natively (CUDA compute capability 8.0+, or an x86 CPU with AVX512-BF16 or
AMX-BF16); elsewhere bf16 is emulated and slower than fp32, so "auto" never picks it there.
"""

from __future__ import annotations

from typing import Union

import torch

__all__ = ["native_bf16", "training_precision"]


def native_bf16(device: Union[torch.device, str]) -> bool:
    """Whether ``device`` computes bf16 natively, from torch's own capability queries: CUDA with compute
    capability 8.0 or more (Ampere), or an x86 CPU with AVX512-BF16 or AMX-BF16 (``torch.cpu.get_capabilities``).

    Not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: it asks oneDNN whether bf16 *runs*, which is true on
    any AVX-512 CPU, where oneDNN emulates bf16 and a d16 sample was 3.8x slower than fp32.
    Other CPUs (no AVX-512, ARM) answer False: bf16 there is unmeasured, and fp32 is never the slow choice.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def training_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision for a run: as given, or for "auto" "bf16-mixed" where the accelerator (its first
    device) has native bf16 and "32-true" elsewhere."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        device = "cuda"
    elif accelerator in ("cpu", "auto"):
        device = "cpu"
    else:
        return "32-true"
    return "bf16-mixed" if native_bf16(device) else "32-true"

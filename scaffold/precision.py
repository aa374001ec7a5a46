"""The precision policy, in one place: what each device and mode computes in.

Every stage asks this module; none decides on its own.

==================  ========================================================================================
sampling            ``SAMPLING_PRECISIONS``: "fp32" (exact, bit-for-bit the published sampler), "bf16" and
                    "fp16" (autocast over the transformer and the VAE decoder), "auto" = "bf16" where the
                    device has native bf16 (:func:`native_bf16`), "fp32" elsewhere (:func:`resolve_precision`,
                    :func:`autocast`).
training            ``TRAINING_PRECISIONS``: Lightning's "32-true", "bf16-mixed", "16-mixed", and "auto" =
                    "bf16-mixed" where the accelerator has native bf16, "32-true" elsewhere
                    (:func:`training_precision`).
fp32 islands        the transformer's input embedding and its head (the logits), the quantizer (nearest-code
                    search, VQ loss, the lookups that build the transformer's input) run in fp32 whatever
                    the autocast around them (:func:`full_precision`): a bf16 argmin over 4,096 codes or a
                    bf16 softmax over them changes which token is chosen (the published code does the same).
TF32                never switched on by the library: ``torch.set_float32_matmul_precision`` is the user's.
                    The Triton kernels follow it (``kernels/_precision.py`` maps it to their dot precision),
                    so "highest" (torch's default) keeps every fp32 path IEEE and parity exact.
==================  ========================================================================================

bf16 is "native" only where the hardware has it (CUDA compute capability 8.0+, or an x86 CPU with
AVX512-BF16 or AMX-BF16); elsewhere it is emulated and slower than fp32, so "auto" never picks it there.
"""

from __future__ import annotations

import contextlib
from typing import Union

import torch

from .errors import UserError

__all__ = [
    "AUTOCAST_DTYPES",
    "SAMPLING_PRECISIONS",
    "TRAINING_PRECISIONS",
    "PrecisionError",
    "autocast",
    "full_precision",
    "native_bf16",
    "resolve_precision",
    "training_precision",
]

SAMPLING_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAINING_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "auto")


class PrecisionError(UserError, ValueError):
    """A sampling precision that is not one of :data:`SAMPLING_PRECISIONS`."""


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


def resolve_precision(precision: str, device: Union[torch.device, str]) -> str:
    """The precision to sample with: "fp32", "bf16" or "fp16" as given; "auto" is "bf16" where the device
    has native bf16 (:func:`native_bf16`) and "fp32" (exact) everywhere else, so that it never slows a
    machine down. Anything else raises :class:`PrecisionError`."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in AUTOCAST_DTYPES:
        raise PrecisionError(f"precision must be one of {', '.join(SAMPLING_PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: Union[torch.device, str], precision: str) -> torch.autocast:
    """The autocast context of a sampling ``precision`` (after :func:`resolve_precision`): disabled for
    "fp32", bf16 or fp16 autocast otherwise. The published sampling notebook runs under fp16 autocast on
    GPU; on a CPU with AVX512-BF16 or AMX, "bf16" is about twice as fast as fp32, and 3.8x slower without."""
    device = torch.device(device)
    dtype = AUTOCAST_DTYPES[resolve_precision(precision, device)]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def full_precision(device: Union[torch.device, str]) -> contextlib.AbstractContextManager:
    """A region that computes in the dtype of its inputs whatever autocast is around it (the fp32 islands:
    logits, the VQ search, the losses); the caller casts its inputs to fp32 where they may be half."""
    return torch.autocast(torch.device(device).type, enabled=False)


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

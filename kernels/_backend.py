"""Backend choice for the ops: "torch" (the reference, runs everywhere) or "triton" (fused kernels).

Rules (docs/architecture.md section 7):

- ``backend="auto"`` runs Triton when the tensors are on CUDA and Triton is installed; otherwise
  the PyTorch reference. On CPU tensors auto always picks the reference,
  also under ``TRITON_INTERPRET=1``: the interpreter is for tests that ask for Triton explicitly.
- ``backend="triton"`` runs Triton or raises :class:`BackendUnavailableError` saying why. There is
  no silent fallback: a kernel that fails to compile or launch raises.
- Under ``auto`` on CUDA, a kernel that fails to compile or launch (Triton's ``CompilationError``,
  ``OutOfResources``, ``PTXASError``) is a loud fallback: one warning per op and input signature
  naming the op, the shapes, the error and ``VAR_KERNEL_BACKEND``, then the reference runs, and
  keeps running for that signature without retrying the compile. This covers the launches of the
  op's forward call; a backward kernel that fails raises from ``loss.backward()``.
- The environment variable ``VAR_KERNEL_BACKEND`` (auto | triton | torch), when set, overrides the
  argument, so a whole run can be switched to the reference without touching code.

The CPU GEMM (:func:`cpu_gemm`): which library runs the transformer's fp32 inference linears on a CPU,
``"onednn"`` on x86 CPUs whose vendor is not Intel and ``"blas"`` (PyTorch's own ``F.linear``, MKL)
everywhere else; ``VAR_CPU_GEMM`` (auto | onednn | blas) overrides it, and a bad value is named. The
measurements behind the rule, and where oneDNN may run, are in ``var/linear.py``.

Registering an op: one row of :data:`OPS` names the modules of its two implementations, each
defining a function named after the op with the same signature (arguments already checked and
normalised by the public op, no ``backend``). Nothing is found by file-name convention; a module
that fails to import, or lacks the function, raises.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Literal

import torch

__all__ = [
    "BACKENDS",
    "CPU_GEMM_ENV_VAR",
    "ENV_VAR",
    "OPS",
    "BackendUnavailableError",
    "KernelFallbackWarning",
    "cpu_gemm",
    "cpu_info",
    "cpu_vendor",
    "get_impl",
    "onednn_linear_available",
    "resolve_backend",
    "torch_unavailable_reason",
    "triton_installed",
    "triton_unavailable_reason",
]

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
ENV_VAR = "VAR_KERNEL_BACKEND"
CPU_GEMM_ENV_VAR = "VAR_CPU_GEMM"
CpuGemm = Literal["onednn", "blas"]

# op name -> (module of the PyTorch reference, module of the Triton kernels), relative to kernels/.
OPS: dict[str, tuple[str, str]] = {
    "block_causal_attention": ("block_causal_attention.reference", "block_causal_attention.triton"),
    "neighborhood_attention": ("neighborhood_attention.reference", "neighborhood_attention.triton"),
    "external_attention": ("external_attention.reference", "external_attention.triton"),
    "ragged_depthwise_conv2d": ("ragged_depthwise_conv2d.reference", "ragged_depthwise_conv2d.triton"),
    "gspn_scan": ("gspn_scan.reference", "gspn_scan.triton"),
    "gspn_normalize_gates": ("gspn_scan.reference", "gspn_scan.triton"),
}


class BackendUnavailableError(RuntimeError):
    """A backend was requested explicitly (argument or VAR_KERNEL_BACKEND) but cannot run here."""


class KernelFallbackWarning(RuntimeWarning):
    """``auto`` ran the PyTorch reference because a Triton kernel failed to compile or launch."""


def _truthy(value: str | None) -> bool:
    # Same spelling of "on" as Triton's own environment knobs.
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on", "y")


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to run kernels on CPU tensors."""
    return _truthy(os.environ.get("TRITON_INTERPRET"))


@functools.cache
def triton_installed() -> bool:
    # find_spec, not import: importing triton costs a second and is only needed to run a kernel.
    return importlib.util.find_spec("triton") is not None


def _impl(op: str, which: int) -> Callable:
    return getattr(importlib.import_module(f"{__package__}.{OPS[op][which]}"), op)


@functools.cache
def _triton_impl(op: str) -> Callable:
    """The op's Triton function; only called once Triton is known to be installed."""
    return _impl(op, 1)


def _reference_impl(op: str) -> Callable:
    return _impl(op, 0)


def _check_op(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(OPS)}")
    return op


# One predicate per backend: None when it can run ``op`` on tensors on ``device``, else the reason.


def torch_unavailable_reason(op: str, device: torch.device) -> str | None:
    """The PyTorch reference runs on every device."""
    _check_op(op)
    return None


def triton_unavailable_reason(op: str, device: torch.device) -> str | None:
    """Why the Triton kernel of ``op`` cannot run on ``device`` (None when it can)."""
    _check_op(op)
    if not triton_installed():
        return "Triton is not installed"
    device = torch.device(device)
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        return None if triton_interpret() else "tensors are on cpu and TRITON_INTERPRET is not set"
    return f"tensors are on {device.type}; Triton runs on cuda, or on cpu with TRITON_INTERPRET=1"


def _requested_backend(backend: str) -> tuple[str, str]:
    """The backend in force and where it came from (for error messages)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS}, got {env!r}")
        return env, f"{ENV_VAR}={env}"
    return backend, f"backend={backend!r}"


def resolve_backend(op: str, backend: str, device: torch.device | str) -> Literal["triton", "torch"]:
    """The backend that ``op`` will run with on tensors on ``device``: "triton" or "torch".

    Raises BackendUnavailableError when "triton" is requested and cannot run, ValueError for an
    unknown op or backend name. Modules call this in ``extra_repr`` to say which backend is active.
    """
    _check_op(op)
    device = torch.device(device)
    requested, source = _requested_backend(backend)
    if requested == "torch":
        return "torch"
    if requested == "auto":
        # Triton only for real GPU tensors; the interpreter on CPU is opt-in via backend="triton".
        # Checking the device first also spares CPU runs the import of triton.py.
        if device.type != "cuda":
            return "torch"
        return "triton" if triton_unavailable_reason(op, device) is None else "torch"
    reason = triton_unavailable_reason(op, device)
    if reason is not None:
        raise BackendUnavailableError(
            f"{op}: the triton backend was requested ({source}) but cannot run: {reason}. "
            f"Use backend='torch' (or unset {ENV_VAR}) to run the PyTorch reference."
        )
    return "triton"


def get_impl(op: str, backend: str, device: torch.device | str) -> Callable:
    """The function that runs ``op``: its ``reference.py`` or ``triton.py`` function of the same name.

    Under ``auto`` the Triton function comes wrapped in the loud fallback (see the module docstring).
    """
    if resolve_backend(op, backend, device) == "triton":
        impl = _triton_impl(op)
        if _requested_backend(backend)[0] == "auto":
            return functools.partial(_run_with_fallback, op, impl)
        return impl
    return _reference_impl(op)


@functools.cache
def _kernel_failures() -> tuple[type[BaseException], ...]:
    """Triton's errors for a kernel that cannot be built or launched on this device.

    ``InterpreterError`` is what the interpreter raises where a compile would fail (it lets CPU tests
    make a real kernel fail); a run on CUDA never sees it.
    """
    from triton.compiler.errors import CompilationError
    from triton.runtime import errors

    names = ("OutOfResources", "PTXASError", "InterpreterError")
    return (CompilationError, *(getattr(errors, n) for n in names if hasattr(errors, n)))


# (op, input signature) pairs whose Triton kernel failed; they run the reference from then on.
_FAILED: set[tuple[str, str]] = set()


def _signature(args: tuple) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append(f"{tuple(a.shape)} {str(a.dtype).removeprefix('torch.')}")
        elif a is not None:
            parts.append(repr(a))
    return ", ".join(parts)


def _run_with_fallback(op: str, impl: Callable, *args):
    # The signature is only built once something failed: the common path stays one call.
    if not (_FAILED and (op, _signature(args)) in _FAILED):
        try:
            return impl(*args)
        except _kernel_failures() as e:
            key = (op, _signature(args))
            _FAILED.add(key)
            first_line = (str(e).strip().splitlines() or [""])[0]
            warnings.warn(
                f"{op}: the Triton kernel failed on inputs ({key[1]}) with {type(e).__name__}: {first_line}; "
                f"running the PyTorch reference instead for these inputs. Set {ENV_VAR}=torch to choose the "
                f"reference up front, or {ENV_VAR}=triton to make this an error.",
                KernelFallbackWarning,
                stacklevel=3,
            )
    return _reference_impl(op)(*args)


# ----------------------------------------------------------------------------------------------
# The CPU GEMM: oneDNN or BLAS for fp32 inference linears (module docstring)


@functools.cache
def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (``vendor_id``, ``cpu family``, ``model name``, ...);
    empty where there is no such file (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...) from ``/proc/cpuinfo``; "" elsewhere."""
    return cpu_info().get("vendor_id", "")


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN and its fused linear op (``torch.ops.mkldnn._linear_pointwise``)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018 - raises where the build lacks the op
    except (AttributeError, RuntimeError):
        return False
    return True


def cpu_gemm() -> CpuGemm:
    """Which library runs the fp32 linear layers of inference on this CPU: oneDNN on x86 CPUs that are not
    Intel's, BLAS elsewhere; ``VAR_CPU_GEMM`` overrides it (the module docstring)."""
    choice = os.environ.get(CPU_GEMM_ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in ("auto", "onednn", "blas"):
        raise ValueError(f"{CPU_GEMM_ENV_VAR} must be auto, onednn or blas, got {choice!r}")
    if choice == "blas" or not onednn_linear_available():
        return "blas"
    if choice == "onednn":
        return "onednn"
    vendor = cpu_vendor()  # "" where there is no vendor_id line: not an x86 CPU on Linux
    return "onednn" if vendor and vendor != "GenuineIntel" else "blas"

"""Backend dispatch and argument checks of the kernels package (docs/architecture.md section 7)."""

from __future__ import annotations

import importlib
import inspect
import sys
import types
import warnings

import pytest
import torch

import kernels
from kernels import _backend

# Imported now, under conftest's TRITON_INTERPRET=1: the fixture below unsets it for each test, and
# @triton.jit decides between interpreted and compiled kernels when the module is first imported.
BLOCK_CAUSAL_TRITON = importlib.import_module("kernels.block_causal_attention.triton")


@pytest.fixture(autouse=True)
def _clean_env_and_caches(monkeypatch):
    monkeypatch.delenv("VAR_KERNEL_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _backend._triton_impl.cache_clear()
    yield
    _backend._triton_impl.cache_clear()


PN = (1, 2, 3)  # L = 14


def _qkv(L=14, dtype=torch.float32):
    return [torch.randn(1, 2, L, 8, dtype=dtype) for _ in range(3)]


def _call_op(op: str, backend: str) -> torch.Tensor:
    """Run ``op`` on small valid CPU inputs (the same ones every call) with ``backend``."""
    torch.manual_seed(0)
    q, k, v = _qkv()
    if op == "block_causal_attention":
        return kernels.block_causal_attention(q, k, v, PN, backend=backend)
    if op == "neighborhood_attention":
        return kernels.neighborhood_attention(q, k, v, PN, 3, backend=backend)
    if op == "external_attention":
        return kernels.external_attention(q, k[0, :, :5], v[0, :, :5], PN, backend=backend)
    if op == "ragged_depthwise_conv2d":
        return kernels.ragged_depthwise_conv2d(q[0], PN, torch.randn(8, 3, 3), backend=backend)  # x [2, 14, 8]
    if op == "gspn_scan":
        return kernels.gspn_scan(q, k, torch.stack([v] * 3, dim=1) / 3, backend=backend)
    assert op == "gspn_normalize_gates"
    return kernels.gspn_normalize_gates(torch.stack([q] * 3, dim=1), backend=backend)


ALL_OPS = list(_backend.OPS)


@pytest.fixture
def fake_triton_kernel(monkeypatch):
    """Register a stand-in Triton implementation of block_causal_attention the way a real one is
    registered: a row of ``_backend.OPS`` naming a module that defines the function. The stand-in
    records its arguments and returns zeros, so the test can tell it ran."""
    name = "kernels.fake_block_causal_triton"
    module = types.ModuleType(name)
    calls = []

    def block_causal_attention(q_BHLD, k_BHLD, v_BHLD, patch_nums, scale):
        calls.append((patch_nums, scale))
        return torch.zeros_like(q_BHLD)

    module.block_causal_attention = block_causal_attention
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(
        _backend.OPS, "block_causal_attention", ("block_causal_attention.reference", "fake_block_causal_triton")
    )
    monkeypatch.setattr(_backend, "triton_installed", lambda: True)
    return calls


# ----------------------------------------------------------------------------------------------
# Backend choice


@pytest.mark.parametrize("op", ALL_OPS)
def test_auto_on_cpu_runs_the_reference(op):
    assert kernels.resolve_backend(op, "auto", "cpu") == "torch"
    torch.testing.assert_close(_call_op(op, "auto"), _call_op(op, "torch"), rtol=0, atol=0)


@pytest.mark.parametrize("op", ALL_OPS)
def test_both_registered_implementations_share_the_signature(op):
    reference, fused = _backend._reference_impl(op), _backend._triton_impl(op)
    assert reference.__name__ == fused.__name__ == op
    params = [list(inspect.signature(f).parameters) for f in (reference, fused)]
    assert len(params[0]) == len(params[1]), params


@pytest.mark.parametrize("op", ALL_OPS)
def test_real_triton_kernel_on_cpu_needs_the_interpreter(op):
    with pytest.raises(kernels.BackendUnavailableError, match="tensors are on cpu and TRITON_INTERPRET is not set"):
        _call_op(op, "triton")


def test_env_torch_overrides_a_triton_argument(monkeypatch):
    monkeypatch.setenv("VAR_KERNEL_BACKEND", "torch")
    assert kernels.resolve_backend("neighborhood_attention", "triton", "cpu") == "torch"
    assert _call_op("neighborhood_attention", "triton").shape == (1, 2, 14, 8)


def test_env_triton_overrides_a_torch_argument_and_says_so(monkeypatch):
    monkeypatch.setenv("VAR_KERNEL_BACKEND", "triton")
    # TRITON_INTERPRET is unset here, so no op's Triton kernel can run on CPU tensors.
    with pytest.raises(kernels.BackendUnavailableError, match=r"VAR_KERNEL_BACKEND=triton.*cannot run"):
        _call_op("external_attention", "torch")


def test_invalid_backend_names_are_value_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of .*'cuda'"):
        _call_op("block_causal_attention", "cuda")
    monkeypatch.setenv("VAR_KERNEL_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"VAR_KERNEL_BACKEND must be one of .*'fast'"):
        _call_op("block_causal_attention", "auto")


def test_unknown_op_is_a_value_error():
    with pytest.raises(ValueError, match="unknown op 'flash'"):
        kernels.resolve_backend("flash", "auto", "cpu")


def test_registered_triton_kernel_needs_interpreter_on_cpu(fake_triton_kernel):
    with pytest.raises(kernels.BackendUnavailableError, match="tensors are on cpu and TRITON_INTERPRET is not set"):
        _call_op("block_causal_attention", "triton")
    assert fake_triton_kernel == []


def test_registered_triton_kernel_runs_under_interpreter_when_asked(fake_triton_kernel, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v = _qkv()
    out = kernels.block_causal_attention(q, k, v, [1, 2, 3], backend="triton")
    assert torch.equal(out, torch.zeros_like(q))
    # The kernel receives the checked, normalised arguments: patch_nums as a tuple, the default scale.
    assert fake_triton_kernel == [((1, 2, 3), 8**-0.5)]
    # auto keeps CPU tensors on the reference even under the interpreter.
    assert kernels.resolve_backend("block_causal_attention", "auto", "cpu") == "torch"
    kernels.block_causal_attention(q, k, v, PN)
    assert len(fake_triton_kernel) == 1


def test_auto_picks_the_registered_triton_kernel_for_cuda_tensors(fake_triton_kernel):
    assert kernels.resolve_backend("block_causal_attention", "auto", "cuda") == "triton"
    assert kernels.resolve_backend("block_causal_attention", "triton", "cuda:0") == "triton"
    assert kernels.resolve_backend("block_causal_attention", "torch", "cuda") == "torch"
    q, k, v = _qkv()
    # On CUDA, auto runs the registered kernel (the stand-in runs on any tensors).
    out = _backend.get_impl("block_causal_attention", "auto", "cuda")(q, k, v, PN, 0.5)
    assert torch.equal(out, torch.zeros_like(q)) and fake_triton_kernel == [(PN, 0.5)]


def test_triton_not_installed(fake_triton_kernel, monkeypatch):
    monkeypatch.setattr(_backend, "triton_installed", lambda: False)
    assert kernels.resolve_backend("block_causal_attention", "auto", "cuda") == "torch"
    with pytest.raises(kernels.BackendUnavailableError, match="Triton is not installed"):
        kernels.resolve_backend("block_causal_attention", "triton", "cuda")


def test_triton_on_other_devices_says_where_it_runs(fake_triton_kernel):
    with pytest.raises(kernels.BackendUnavailableError, match="tensors are on mps; Triton runs on cuda"):
        kernels.resolve_backend("block_causal_attention", "triton", "mps")


def test_registered_module_without_the_function_fails_loudly(fake_triton_kernel, monkeypatch):
    del sys.modules["kernels.fake_block_causal_triton"].block_causal_attention
    q, k, v = _qkv()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(AttributeError, match="block_causal_attention"):
        kernels.block_causal_attention(q, k, v, PN, backend="triton")


def test_backend_errors_are_runtime_errors_for_callers(monkeypatch):
    # A run switched to Triton where it cannot run fails with a RuntimeError a caller can catch.
    monkeypatch.setenv(kernels.ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="gspn_scan: the triton backend was requested"):
        _call_op("gspn_scan", "auto")


# ----------------------------------------------------------------------------------------------
# Argument errors: ValueError naming the argument and the values


def _q(L=14, dtype=torch.float32, D=8, device="cpu"):
    return torch.randn(1, 2, L, D, dtype=dtype, device=device)


def _x(L=14, C=4, dtype=torch.float32):
    return torch.randn(2, L, C, dtype=dtype)


def _g(N=1, C=2, H=3, W=4):
    return torch.full((N, 3, C, H, W), 1 / 3)


ARG_ERRORS = [
    # patch_nums vs L
    (
        "bca-sum",
        lambda: kernels.block_causal_attention(_q(15), _q(15), _q(15), PN),
        r"patch_nums \(1, 2, 3\) gives sum\(p\*p\) = 14 tokens but q \[B, H, L, D\] has L = 15",
    ),
    ("na-sum", lambda: kernels.neighborhood_attention(_q(), _q(), _q(), (1, 2), 3), r"sum\(p\*p\) = 5 .* L = 14"),
    ("ea-sum", lambda: kernels.external_attention(_q(), _q()[0], _q()[0], (2, 3)), r"sum\(p\*p\) = 13 .* L = 14"),
    (
        "conv-sum",
        lambda: kernels.ragged_depthwise_conv2d(_x(), (1, 3), torch.randn(4, 3, 3)),
        r"patch_nums \(1, 3\) gives sum\(p\*p\) = 10 tokens but x \[B, L, C\] has L = 14",
    ),
    ("pn-zero", lambda: kernels.block_causal_attention(_q(1), _q(1), _q(1), (0, 1)), "patch_nums must be .* positive"),
    ("pn-empty", lambda: kernels.block_causal_attention(_q(1), _q(1), _q(1), []), "patch_nums must hold at least"),
    ("pn-float", lambda: kernels.block_causal_attention(_q(1), _q(1), _q(1), (1.0,)), "patch_nums must be"),
    (
        "pn-tensor",
        lambda: kernels.block_causal_attention(_q(5), _q(5), _q(5), torch.tensor([1, 2])),
        "patch_nums must be",
    ),
    # kernel sizes and other ints
    (
        "ks-even",
        lambda: kernels.neighborhood_attention(_q(), _q(), _q(), PN, 4),
        "kernel_size must be an odd int >= 1, got 4",
    ),
    ("ks-zero", lambda: kernels.neighborhood_attention(_q(), _q(), _q(), PN, 0), "kernel_size must be an odd int"),
    (
        "conv-k-even",
        lambda: kernels.ragged_depthwise_conv2d(_x(), PN, torch.randn(4, 2, 2)),
        "weight's kernel size k must be an odd int >= 1, got 2",
    ),
    (
        "conv-dilation",
        lambda: kernels.ragged_depthwise_conv2d(_x(), PN, torch.randn(4, 3, 3), dilation=0),
        "dilation must be an int >= 1, got 0",
    ),
    (
        "chunk-value",
        lambda: kernels.gspn_scan(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), _g(), chunk=0),
        "chunk must be an int >= 1 or None, got 0",
    ),
    ("scale", lambda: kernels.block_causal_attention(_q(), _q(), _q(), PN, scale="0.5"), "scale must be a float"),
    # ranks and shapes
    (
        "q-rank",
        lambda: kernels.block_causal_attention(_q()[0], _q(), _q(), PN),
        r"q must have 4 dims \[B, H, L, D\], got shape \(2, 14, 8\)",
    ),
    ("q-not-tensor", lambda: kernels.block_causal_attention([[1.0]], _q(), _q(), PN), "q must be a torch.Tensor"),
    (
        "k-shape",
        lambda: kernels.block_causal_attention(_q(), _q(D=4), _q(), PN),
        r"k must have the shape of q \(1, 2, 14, 8\), got \(1, 2, 14, 4\)",
    ),
    ("v-shape", lambda: kernels.neighborhood_attention(_q(), _q(), _q()[:, :1], PN, 3), "v must have the shape of q"),
    (
        "mem_k-heads",
        lambda: kernels.external_attention(_q(), torch.randn(3, 5, 8), torch.randn(3, 5, 8), PN),
        r"mem_k must be \[H, S, D\] with H = 2 and D = 8",
    ),
    (
        "mem_v-shape",
        lambda: kernels.external_attention(_q(), torch.randn(2, 5, 8), torch.randn(2, 6, 8), PN),
        r"mem_v must have the shape of mem_k \(2, 5, 8\), got \(2, 6, 8\)",
    ),
    (
        "mem_k-rank",
        lambda: kernels.external_attention(_q(), torch.randn(5, 8), torch.randn(5, 8), PN),
        r"mem_k must have 3 dims \[H, S, D\]",
    ),
    (
        "conv-weight-C",
        lambda: kernels.ragged_depthwise_conv2d(_x(), PN, torch.randn(3, 3, 3)),
        r"weight must be \[C, k, k\] with C = 4",
    ),
    (
        "conv-bias",
        lambda: kernels.ragged_depthwise_conv2d(_x(), PN, torch.randn(4, 3, 3), torch.randn(5)),
        r"bias must be \[C\] with C = 4",
    ),
    (
        "gspn-lam",
        lambda: kernels.gspn_scan(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5), _g()),
        r"lam must have the shape of x \(1, 2, 3, 4\), got \(1, 2, 3, 5\)",
    ),
    (
        "gspn-g",
        lambda: kernels.gspn_scan(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), _g(W=5)),
        r"g must be \[N, 3, C, H, W\] = \(1, 3, 2, 3, 4\)",
    ),
    (
        "g_raw-gates",
        lambda: kernels.gspn_normalize_gates(torch.randn(1, 2, 2, 3, 4)),
        r"g_raw must be \[N, 3, C, H, W\] \(3 gates on dim 1\)",
    ),
    # dtypes and devices
    (
        "q-int",
        lambda: kernels.block_causal_attention(*[torch.ones(1, 1, 14, 8, dtype=torch.long)] * 3, PN),
        "q must have a floating dtype, got torch.int64",
    ),
    (
        "x-int",
        lambda: kernels.ragged_depthwise_conv2d(torch.ones(1, 14, 4, dtype=torch.int32), PN, torch.randn(4, 3, 3)),
        "x must have a floating dtype",
    ),
    (
        "g_raw-bool",
        lambda: kernels.gspn_normalize_gates(torch.ones(1, 3, 1, 2, 2, dtype=torch.bool)),
        "g_raw must have a floating dtype",
    ),
    (
        "k-dtype",
        lambda: kernels.block_causal_attention(_q(), _q(dtype=torch.float64), _q(), PN),
        "k has dtype torch.float64 but q has dtype torch.float32",
    ),
    (
        "weight-dtype",
        lambda: kernels.ragged_depthwise_conv2d(_x(), PN, torch.randn(4, 3, 3, dtype=torch.float16)),
        "weight has dtype torch.float16 but x has dtype torch.float32",
    ),
    (
        "g-dtype",
        lambda: kernels.gspn_scan(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), _g().double()),
        "g has dtype torch.float64 but x has dtype torch.float32",
    ),
    (
        "v-device",
        lambda: kernels.block_causal_attention(_q(), _q(), _q(device="meta"), PN),
        "v is on meta but q is on cpu",
    ),
    (
        "mem_v-device",
        lambda: kernels.external_attention(_q(), torch.randn(2, 5, 8), torch.randn(2, 5, 8, device="meta"), PN),
        "mem_v is on meta but q is on cpu",
    ),
]


@pytest.mark.parametrize("call, match", [pytest.param(c, m, id=i) for i, c, m in ARG_ERRORS])
def test_argument_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------------------------
# Loud fallback of auto on CUDA


@pytest.fixture
def failing_block_causal_compile(monkeypatch):
    """Make the real block-causal kernel fail to build: a 12-query tile is no power of two, which
    Triton rejects while compiling (under the interpreter: InterpreterError; on a GPU: CompilationError).
    Counts how often the launcher tried."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # run the real kernel on CPU tensors
    monkeypatch.setattr(_backend, "_FAILED", set())
    module = BLOCK_CAUSAL_TRITON
    tries = []

    def bad_config(D, dtype):
        tries.append(D)
        return dict(BLOCK_M=12, BLOCK_N=16, num_warps=1, num_stages=1)

    monkeypatch.setattr(module, "_config", bad_config)
    return tries


def test_auto_on_cuda_warns_once_and_runs_the_reference_when_a_kernel_fails(failing_block_causal_compile):
    q, k, v = _qkv()
    # auto resolves on the device alone: "cuda" picks the (wrapped) Triton kernel; the CPU tensors
    # let it run under the interpreter here.
    impl = _backend.get_impl("block_causal_attention", "auto", "cuda")
    expected = kernels.block_causal_attention(q, k, v, PN, backend="torch")
    pattern = (
        r"block_causal_attention: the Triton kernel failed on inputs \(\(1, 2, 14, 8\) float32, .*\(1, 2, 3\), "
        r"0\.35\d*\) with InterpreterError: .*power of 2.*VAR_KERNEL_BACKEND=torch"
    )
    with pytest.warns(_backend.KernelFallbackWarning, match=pattern):
        out = impl(q, k, v, PN, 8**-0.5)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert len(failing_block_causal_compile) == 1
    # Once: the same inputs go straight to the reference, without a warning or a new compile.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(impl(q, k, v, PN, 8**-0.5), expected, rtol=0, atol=0)
    assert len(failing_block_causal_compile) == 1
    # Other inputs are tried (and warned about) on their own.
    with pytest.warns(_backend.KernelFallbackWarning, match=r"\(1, 2, 14, 8\) float64"):
        impl(*(t.double() for t in (q, k, v)), PN, 8**-0.5)


def test_explicit_triton_keeps_raising_when_a_kernel_fails(failing_block_causal_compile):
    from triton.runtime.errors import InterpreterError

    q, k, v = _qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        with pytest.raises(InterpreterError, match="power of 2"):
            kernels.block_causal_attention(q, k, v, PN, backend="triton")
        with pytest.raises(InterpreterError, match="power of 2"):
            _backend.get_impl("block_causal_attention", "triton", "cuda")(q, k, v, PN, 8**-0.5)


def test_auto_does_not_hide_other_errors(monkeypatch):
    """Only Triton's build/launch failures fall back; a bug in a kernel's Python raises as it is."""
    monkeypatch.setattr(_backend, "_FAILED", set())
    module = BLOCK_CAUSAL_TRITON

    def broken(*args):
        raise IndexError("a bug, not a compile failure")

    monkeypatch.setattr(module, "block_causal_attention", broken)
    _backend._triton_impl.cache_clear()
    with pytest.raises(IndexError, match="a bug"):
        _backend.get_impl("block_causal_attention", "auto", "cuda")(*_qkv(), PN, 0.5)


# ----------------------------------------------------------------------------------------------
# The fp32 precision rule (docs/architecture.md section 7, kernels/_precision.py)


@pytest.mark.parametrize(
    ("setting", "fp32", "half"), [("highest", "ieee", "tf32"), ("high", "tf32", "tf32"), ("medium", "tf32", "tf32")]
)
def test_dot_precision_follows_torch_matmul_precision(setting, fp32, half):
    from kernels._precision import dot_precision

    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(setting)
        assert dot_precision(torch.float32) == fp32
        assert dot_precision(torch.float16) == half and dot_precision(torch.bfloat16) == half
    finally:
        torch.set_float32_matmul_precision(saved)


# ----------------------------------------------------------------------------------------------
# The CPU GEMM choice: oneDNN or BLAS for fp32 inference linears (var/linear.py runs it)

needs_onednn = pytest.mark.skipif(
    not _backend.onednn_linear_available(), reason="this torch build has no oneDNN linear"
)


@pytest.fixture
def vendor(monkeypatch):
    def set_vendor(name: str) -> None:
        monkeypatch.setattr(_backend, "cpu_vendor", lambda: name)

    monkeypatch.delenv(_backend.CPU_GEMM_ENV_VAR, raising=False)
    return set_vendor


@pytest.mark.parametrize(("name", "expected"), [("AuthenticAMD", "onednn"), ("GenuineIntel", "blas"), ("", "blas")])
@needs_onednn
def test_the_rule_picks_onednn_on_x86_cpus_that_are_not_intel(vendor, name, expected):
    vendor(name)
    assert _backend.cpu_gemm() == expected


@needs_onednn
def test_the_environment_overrides_the_rule_and_a_bad_value_is_named(vendor, monkeypatch):
    vendor("GenuineIntel")
    monkeypatch.setenv(_backend.CPU_GEMM_ENV_VAR, "onednn")
    assert _backend.cpu_gemm() == "onednn"
    vendor("AuthenticAMD")
    monkeypatch.setenv(_backend.CPU_GEMM_ENV_VAR, "blas")
    assert _backend.cpu_gemm() == "blas"
    monkeypatch.setenv(_backend.CPU_GEMM_ENV_VAR, "mkl")
    with pytest.raises(ValueError, match=r"VAR_CPU_GEMM.*'mkl'"):
        _backend.cpu_gemm()


def test_cpu_info_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 25\n\nvendor_id\t: Other\n")
    assert _backend.cpu_info.__wrapped__(str(info)) == {"vendor_id": "AuthenticAMD", "cpu family": "25"}
    assert _backend.cpu_info.__wrapped__(str(tmp_path / "missing")) == {}

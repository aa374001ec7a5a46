"""Triton kernels of external attention, the ragged depthwise conv and the GSPN scan against the references.

Each op runs with ``backend="triton"`` (on CPU under ``TRITON_INTERPRET=1``, set by conftest.py) and
``backend="torch"`` on the same inputs; outputs and the gradients of every input are compared with
a per-dtype tolerance. ``torch.empty``/``torch.empty_like`` are poisoned with NaN so an output a
kernel forgets to write fails, and every test checks that the Triton kernels really launched,
forward and backward. bf16 is not covered: ``tl.dot`` in bf16 is wrong in the interpreter.
Shapes are tiny on purpose: the interpreter runs every program in Python.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import KERNEL_TOLERANCE

import kernels
from kernels._tiles import tile_table

pytest.importorskip("triton")

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]

TRITON_MODULES = {
    "external_attention": "kernels.external_attention.triton",
    "ragged_depthwise_conv2d": "kernels.ragged_depthwise_conv2d.triton",
    "gspn_scan": "kernels.gspn_scan.triton",
}
# Import the kernel modules at collection, while conftest's TRITON_INTERPRET=1 holds: @triton.jit
# picks interpreted or compiled mode when the module is imported, and the dispatch tests unset the
# variable (a module first imported there would hold compiled kernels that cannot run on CPU).
for _module_name in TRITON_MODULES.values():
    importlib.import_module(_module_name)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("VAR_KERNEL_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _poisoned(nan_poisoned_empty):
    """Every test here runs with NaN-filled torch.empty (tests/conftest.py)."""


@pytest.fixture
def launches(kernel_launches) -> list[str]:
    return kernel_launches(*TRITON_MODULES.values())


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).requires_grad_()


def _compare(fn, inputs: list[torch.Tensor], dtype, launches: list[str], fwd_kernels, bwd_kernels):
    """Run ``fn(*inputs, backend=...)`` with both backends; compare outputs and all input gradients."""
    tol = KERNEL_TOLERANCE[("misc", dtype)]
    out_ref = fn(*inputs, backend="torch")
    assert launches == []
    out = fn(*inputs, backend="triton")
    assert sorted(set(launches)) == sorted(fwd_kernels), launches
    assert out.dtype == out_ref.dtype and out.shape == out_ref.shape
    torch.testing.assert_close(out, out_ref, **tol)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    # materialize_grads: an input the reference ignores (the gates of a chunk=1 scan) gets zeros.
    grads_ref = torch.autograd.grad(out_ref, inputs, cotangent, allow_unused=True, materialize_grads=True)
    launches.clear()
    grads = torch.autograd.grad(out, inputs, cotangent)
    assert sorted(set(launches)) == sorted(bwd_kernels), launches
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert g.dtype == g_ref.dtype, i
        torch.testing.assert_close(g, g_ref, **tol, msg=lambda m, i=i: f"gradient of input {i}: {m}")


# ----------------------------------------------------------------------------------------------
# External attention


EA_CASES = [
    pytest.param((1,), 20, 24, id="pn=1-S=20-D=24"),
    pytest.param((1, 2, 3), 5, 8, id="pn=1,2,3-S=5-D=8"),
    pytest.param((2, 3, 5), 64, 16, id="pn=2,3,5-S=64-D=16"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("patch_nums, S, D", EA_CASES)
def test_external_attention_matches_reference(patch_nums, S, D, dtype, launches):
    L = sum(p * p for p in patch_nums)
    q = _rand(2, 2, L, D, dtype=dtype, seed=0)
    mem_k, mem_v = _rand(2, S, D, dtype=dtype, seed=1), _rand(2, S, D, dtype=dtype, seed=2)

    def fn(q, mem_k, mem_v, backend):
        return kernels.external_attention(q, mem_k, mem_v, patch_nums, backend=backend)

    _compare(fn, [q, mem_k, mem_v], dtype, launches, ["_lse_kernel", "_fwd_kernel"], ["_bwd_kernel"])


def test_external_attention_custom_scale_large_logits(launches):
    # A large scale makes the logits span ~+-50: the online max of the LSE pass must keep it finite.
    patch_nums = (1, 2, 3)
    q = _rand(1, 1, 14, 16, dtype=torch.float32, seed=3)
    mem_k, mem_v = _rand(1, 16, 16, dtype=torch.float32, seed=4), _rand(1, 16, 16, dtype=torch.float32, seed=5)

    def fn(q, mem_k, mem_v, backend):
        return kernels.external_attention(q, mem_k, mem_v, patch_nums, scale=4.0, backend=backend)

    _compare(fn, [q, mem_k, mem_v], torch.float32, launches, ["_lse_kernel", "_fwd_kernel"], ["_bwd_kernel"])


# ----------------------------------------------------------------------------------------------
# Ragged depthwise conv


_CONV = [
    # (patch_nums, k, dilation, with_bias, id); the interpreter's cost grows with k*k.
    ((1,), 3, 1, True, "pn=1-k3"),
    ((1, 2, 3), 1, 1, True, "pn=1,2,3-k1"),
    ((1, 2, 3), 3, 1, True, "pn=1,2,3-k3"),
    ((1, 2, 3), 5, 1, False, "pn=1,2,3-k5-nobias"),
    ((1, 2, 3), 7, 1, True, "pn=1,2,3-k7"),
    ((1, 2, 5), 3, 2, True, "pn=1,2,5-k3-d2"),
    ((2, 5), 3, 3, False, "pn=2,5-k3-d3-nobias"),
    ((1, 3, 7), 7, 3, True, "pn=1,3,7-k7-d3-lka"),
]
CONV_CASES = [
    pytest.param(pn, k, d, bias, dtype, id=f"{name}-{dname}", marks=[pytest.mark.slow] if slow else [])
    for pn, k, d, bias, name in _CONV
    for dtype, dname in [(torch.float32, "fp32"), (torch.float16, "fp16")]
    # fp16 with k >= 5 adds nothing the fp32 case and the fp16 k <= 3 cases do not already test.
    for slow in [dtype == torch.float16 and k >= 5]
]


def _conv_inputs(patch_nums, k, with_bias, dtype, C=5):
    L = sum(p * p for p in patch_nums)
    x = _rand(2, L, C, dtype=dtype, seed=0)
    weight = _rand(C, k, k, dtype=dtype, seed=1)
    return [x, weight] + ([_rand(C, dtype=dtype, seed=2)] if with_bias else [])


@pytest.mark.parametrize("patch_nums, k, dilation, with_bias, dtype", CONV_CASES)
def test_ragged_depthwise_conv2d_matches_reference(patch_nums, k, dilation, with_bias, dtype, launches):
    def fn(x, weight, bias=None, *, backend):
        return kernels.ragged_depthwise_conv2d(x, patch_nums, weight, bias, dilation, backend=backend)

    inputs = _conv_inputs(patch_nums, k, with_bias, dtype)
    _compare(fn, inputs, dtype, launches, ["_conv_kernel"], ["_conv_kernel", "_wgrad_kernel"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_ragged_depthwise_conv2d_wide_channels_many_tiles(k, dilation, dtype, launches):
    # C = 70 spans two channel blocks with a ragged tail; the 9x9 scale spans three token tiles.
    patch_nums = (1, 2, 4, 9)

    def fn(x, weight, bias, *, backend):
        return kernels.ragged_depthwise_conv2d(x, patch_nums, weight, bias, dilation, backend=backend)

    inputs = _conv_inputs(patch_nums, k, True, dtype, C=70)
    _compare(fn, inputs, dtype, launches, ["_conv_kernel"], ["_conv_kernel", "_wgrad_kernel"])


def test_conv_input_grad_only_skips_the_weight_kernel(launches):
    x = _rand(1, 5, 3, dtype=torch.float32, seed=0)
    weight = torch.randn(3, 3, 3)
    out = kernels.ragged_depthwise_conv2d(x, (1, 2), weight, backend="triton")
    launches.clear()
    out.sum().backward()
    assert launches == ["_conv_kernel"]
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("block", [1, 4, 32])
def test_tile_table_tiles_never_straddle_scales(block):
    patch_nums = (1, 2, 3, 7)
    rows = tile_table(patch_nums, block, torch.device("cpu")).tolist()
    covered = []
    for scale_begin, p, tile_start, scale_id in rows:
        assert patch_nums[scale_id] == p and 0 <= tile_start < p * p
        covered += range(scale_begin + tile_start, scale_begin + min(tile_start + block, p * p))
    assert covered == list(range(sum(p * p for p in patch_nums)))


# ----------------------------------------------------------------------------------------------
# GSPN scan and gate normalisation


GSPN_CASES = [
    pytest.param((1, 2, 5, 7), None, id="5x7-chunk=None"),
    pytest.param((1, 2, 5, 7), 1, id="5x7-chunk=1"),
    pytest.param((2, 1, 5, 7), 2, id="5x7-chunk=2"),
    pytest.param((1, 2, 5, 7), 3, id="5x7-chunk=3"),
    pytest.param((1, 1, 5, 7), 7, id="5x7-chunk=7"),
    pytest.param((1, 1, 1, 4), None, id="1x4"),
    pytest.param((1, 1, 4, 1), None, id="4x1"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, chunk", GSPN_CASES)
def test_gspn_scan_matches_reference(shape, chunk, dtype, launches):
    N, C, H, W = shape
    x, lam = _rand(*shape, dtype=dtype, seed=0), _rand(*shape, dtype=dtype, seed=1)
    g = torch.softmax(torch.randn(N, 3, C, H, W, generator=torch.Generator().manual_seed(2)), dim=1)
    g = g.to(dtype).requires_grad_()

    def fn(x, lam, g, backend):
        return kernels.gspn_scan(x, lam, g, chunk, backend=backend)

    _compare(fn, [x, lam, g], dtype, launches, ["_scan_fwd_kernel"], ["_scan_bwd_kernel"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2, 1, 3), (1, 1, 2, 5), (2, 3, 5, 7)], ids=["H=1", "H=2", "H=5"])
def test_gspn_normalize_gates_matches_reference(shape, dtype, launches):
    N, C, H, W = shape
    g_raw = _rand(N, 3, C, H, W, dtype=dtype, seed=0)

    def fn(g_raw, backend):
        return kernels.gspn_normalize_gates(g_raw, backend=backend)

    _compare(fn, [g_raw], dtype, launches, ["_gates_fwd_kernel"], ["_gates_bwd_kernel"])


def test_gspn_gates_then_scan_end_to_end(launches):
    # The module's use: raw gates -> normalised gates -> scan, one backward through both.
    shape = (1, 2, 5, 6)
    x, lam = _rand(*shape, dtype=torch.float32, seed=0), _rand(*shape, dtype=torch.float32, seed=1)
    g_raw = _rand(1, 3, 2, 5, 6, dtype=torch.float32, seed=2)

    def fn(x, lam, g_raw, backend):
        return kernels.gspn_scan(x, lam, kernels.gspn_normalize_gates(g_raw, backend=backend), 4, backend=backend)

    _compare(
        fn,
        [x, lam, g_raw],
        torch.float32,
        launches,
        ["_gates_fwd_kernel", "_scan_fwd_kernel"],
        ["_gates_bwd_kernel", "_scan_bwd_kernel"],
    )

"""Triton attention kernels against the PyTorch references, over odd shapes with readable ids; every fused path
against its switched-off twin.

Run on CPU under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay
tiny. Each case calls the public op with backend="triton" and backend="torch" on the same inputs and
compares the output and the gradients of q, k and v under a per-dtype tolerance. Outputs are
allocated NaN-poisoned (torch.empty / torch.empty_like fill NaN), so a kernel that forgets to write
an element fails, and a launch counter proves the Triton kernels ran, forward and backward.
bf16 is not tested here: ``tl.dot`` on bf16 is wrong in the interpreter; it is owed a GPU run.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_TOLERANCE

import kernels
from kernels import _triton_helpers
from kernels.block_causal_attention import triton as bca_triton

# Imported at collection, while TRITON_INTERPRET=1 is set: @triton.jit picks the interpreter when the
# kernel module is imported, and the dispatch tests import triton.py with the variable unset.
from kernels.neighborhood_attention import triton as na_triton

PATCH_NUMS = [
    pytest.param((1,), id="pn=1"),
    pytest.param((1, 2, 3), id="pn=1,2,3"),
    pytest.param((1, 2, 3, 4, 5, 6, 8), id="pn=1..8"),
]
HEAD_DIMS = [pytest.param(16, id="D16"), pytest.param(24, id="D24")]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
PN_256PX = kernels.SCHEDULES["256"]  # L = 680


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.delenv("VAR_KERNEL_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _qkv(patch_nums, D, dtype, B=1, H=2, seed=0) -> list[torch.Tensor]:
    L = sum(p * p for p in patch_nums)
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _fwd_bwd(op, qkv, *args, backend):
    out = op(*qkv, *args, backend=backend)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    return (out, *torch.autograd.grad(out, qkv, cotangent))


def _assert_matches(got, want, dtype):
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        tol = KERNEL_TOLERANCE[("attention", dtype)]
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------
# Block-causal attention


BCA_KERNELS = ["_fwd_kernel", "_bwd_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("patch_nums", PATCH_NUMS)
def test_block_causal_matches_reference(patch_nums, D, dtype, nan_poisoned_empty, kernel_launches):
    launches = kernel_launches(bca_triton.__name__, _triton_helpers.__name__)  # delta's kernel is shared
    qkv = _qkv(patch_nums, D, dtype)
    got = _fwd_bwd(kernels.block_causal_attention, qkv, patch_nums, backend="triton")
    assert launches.counts() == {name: 1 for name in BCA_KERNELS}
    want = _fwd_bwd(kernels.block_causal_attention, qkv, patch_nums, backend="torch")
    _assert_matches(got, want, dtype)


def test_block_causal_batch_heads_scale_and_strides(nan_poisoned_empty):
    # B > 1, odd H, an explicit scale and non-contiguous inputs (a transposed [B, L, H, D] view).
    patch_nums = (1, 2, 3)
    qkv = [
        t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        for t in _qkv(patch_nums, 16, torch.float32, B=2, H=3)
    ]
    got = _fwd_bwd(kernels.block_causal_attention, qkv, patch_nums, 0.3, backend="triton")
    want = _fwd_bwd(kernels.block_causal_attention, qkv, patch_nums, 0.3, backend="torch")
    _assert_matches(got, want, torch.float32)


def test_query_tiles_follow_the_scales():
    tiles = bca_triton.query_tiles(PN_256PX, 64)
    bounds = kernels.ScaleLayout.of(PN_256PX).bounds
    covered = [q for q0, q_len, _ in tiles for q in range(q0, q0 + q_len)]
    assert covered == list(range(680))
    for q0, q_len, kv_end in tiles:
        # A tile lies inside one scale and its keys end where that scale ends.
        assert any(b <= q0 and q0 + q_len <= e == kv_end for b, e in bounds)


@pytest.mark.parametrize("block", [16, 64], ids=["tile16", "tile64"])
def test_tile_table_skips_later_scales(block):
    allowed = sum((e - b) * e for b, e in kernels.ScaleLayout.of(PN_256PX).bounds) / 680**2
    assert allowed == pytest.approx(0.619, abs=1e-3)
    visited = bca_triton.visited_fraction(PN_256PX, block, block)
    assert allowed <= visited <= 0.70


# ----------------------------------------------------------------------------------------------
# Neighborhood attention

NA_KERNELS = ["_fwd_kernel", "_bwd_delta_kernel", "_bwd_kernel"]
NA_CASES = [
    # (patch_nums, kernel_size): windows smaller than the maps, windows clamped at borders on the
    # ragged 5 x 5 map (4 x 4 query patches under the interpreter), and kernel_size >= max(patch_nums).
    pytest.param((1, 2, 3), 1, id="pn=1,2,3-k1"),
    pytest.param((1, 2, 3), 3, id="pn=1,2,3-k3"),
    pytest.param((1, 2, 3, 5), 3, id="pn=1,2,3,5-k3"),
    pytest.param((1, 2, 3, 5), 5, id="pn=1,2,3,5-k5"),
]
NA_SLOW_CASES = [
    pytest.param((1, 2, 3, 4, 5, 6, 8), k, id=f"pn=1..8-k{k}", marks=pytest.mark.slow) for k in (3, 5, 7, 9)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("patch_nums, kernel_size", NA_CASES + NA_SLOW_CASES)
def test_neighborhood_matches_reference(patch_nums, kernel_size, D, dtype, nan_poisoned_empty, kernel_launches):
    launches = kernel_launches(na_triton.__name__, _triton_helpers.__name__)
    qkv = _qkv(patch_nums, D, dtype)
    got = _fwd_bwd(kernels.neighborhood_attention, qkv, patch_nums, kernel_size, backend="triton")
    assert launches.counts() == {name: 1 for name in NA_KERNELS}
    want = _fwd_bwd(kernels.neighborhood_attention, qkv, patch_nums, kernel_size, backend="torch")
    _assert_matches(got, want, dtype)


def test_neighborhood_with_covering_kernel_is_block_causal(nan_poisoned_empty):
    patch_nums = (1, 2, 3, 5)
    qkv = _qkv(patch_nums, 16, torch.float32, B=2, H=1)
    got = _fwd_bwd(kernels.neighborhood_attention, qkv, patch_nums, 7, 0.2, backend="triton")
    want = _fwd_bwd(kernels.block_causal_attention, qkv, patch_nums, 0.2, backend="triton")
    _assert_matches(got, want, torch.float32)

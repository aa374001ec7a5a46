"""Compiled Triton kernels on a CUDA GPU against the PyTorch references (`pytest -m gpu`).

Run as ``TRITON_INTERPRET=0 pytest -m gpu`` (benchmarks/gpu_check.sh does): tests/conftest.py turns
the interpreter on unless the variable is already set, and interpreted kernels prove nothing here.
Every op, forward and the gradient of every floating input, in fp32 under both of torch's matmul
precisions (the one precision rule, kernels/_precision.py: "highest" -> IEEE, "high" -> TF32),
fp16 and bf16, at tiny odd shapes and at the d16 shapes (L = 680, D = 64, C = 1024, maps to 32).

Tolerance: each result is compared with the reference evaluated in float64 on the CPU. The kernel's
error (max |x - ref| / max |ref|) must be at most ``FACTOR`` times the error of the PyTorch reference
run on the GPU in the same dtype and precision, or below the floor of the dtype in ``FLOOR``
(fla's tests/ops do the same): a kernel may not be less accurate than torch itself, and fp32 under
"highest" must be accurate to ~1e-5, which TF32 is not.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels._backend import triton_interpret

pytestmark = pytest.mark.gpu

PN_TINY = (1, 2, 3, 5)
PN_256PX = kernels.SCHEDULES["256"]  # L = 680
# label -> (dtype, torch.get_float32_matmul_precision())
PRECISIONS = {
    "fp32": (torch.float32, "highest"),
    "tf32": (torch.float32, "high"),
    "fp16": (torch.float16, "highest"),
    "bf16": (torch.bfloat16, "highest"),
}
FACTOR = 2.0
FLOOR = {"fp32": 2e-5, "tf32": 4e-3, "fp16": 4e-3, "bf16": 3e-2}


@pytest.fixture(autouse=True)
def _cuda_compiled(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if triton_interpret():
        pytest.skip("TRITON_INTERPRET is on: run `TRITON_INTERPRET=0 pytest -m gpu` to test the compiled kernels")
    monkeypatch.delenv("VAR_KERNEL_BACKEND", raising=False)
    saved = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(saved)


def _inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _run(fn, inputs64, dtype, device, backend):
    xs = [x.to(device=device, dtype=dtype).requires_grad_() for x in inputs64]
    out = fn(*xs, backend=backend)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, xs, cotangent.to(device=device, dtype=dtype))
    return [t.detach().double().cpu() for t in (out, *grads)]


def _err(x, ref):
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


_EXACT: dict[str, list[torch.Tensor]] = {}  # float64 CPU results, shared by a case's four precisions


def _check(fn, inputs64, precision, request):
    dtype, matmul = PRECISIONS[precision]
    torch.set_float32_matmul_precision(matmul)
    key = request.node.nodeid.rsplit("-", 1)[0]  # the test id without its precision (the last id part)
    if key not in _EXACT:
        _EXACT.clear()
        _EXACT[key] = _run(fn, inputs64, torch.float64, "cpu", "torch")
    exact = _EXACT[key]
    ours = _run(fn, inputs64, dtype, "cuda", "triton")
    torchs = _run(fn, inputs64, dtype, "cuda", "torch")
    names = ["out"] + [f"grad of input {i}" for i in range(len(inputs64))]
    for name, o, t, e in zip(names, ours, torchs, exact):
        assert torch.isfinite(o).all(), f"{name}: not finite"
        limit = max(FACTOR * _err(t, e), FLOOR[precision])
        assert _err(o, e) <= limit, (
            f"{name} ({precision}): error {_err(o, e):.2e} > {limit:.2e} (torch: {_err(t, e):.2e})"
        )


PRECISION_IDS = list(PRECISIONS)


@pytest.mark.parametrize("precision", PRECISION_IDS)
@pytest.mark.parametrize(
    "patch_nums, B, H, D",
    [
        pytest.param(PN_TINY, 1, 3, 24, id="tiny-D24"),
        pytest.param(PN_256PX, 2, 16, 64, id="d16"),
        pytest.param(PN_256PX, 1, 8, 128, id="256px-D128"),
    ],
)
def test_block_causal_attention(patch_nums, B, H, D, precision, request):
    L = sum(p * p for p in patch_nums)
    inputs = _inputs([(B, H, L, D)] * 3)
    _check(
        lambda q, k, v, backend: kernels.block_causal_attention(q, k, v, patch_nums, backend=backend),
        inputs,
        precision,
        request,
    )


@pytest.mark.parametrize("precision", PRECISION_IDS)
@pytest.mark.parametrize(
    "patch_nums, kernel_size, B, H, D",
    [pytest.param(PN_TINY, 3, 1, 3, 24, id="tiny-k3-D24"), pytest.param(PN_256PX, 7, 2, 16, 64, id="d16-k7")],
)
def test_neighborhood_attention(patch_nums, kernel_size, B, H, D, precision, request):
    L = sum(p * p for p in patch_nums)
    inputs = _inputs([(B, H, L, D)] * 3)

    def fn(q, k, v, backend):
        return kernels.neighborhood_attention(q, k, v, patch_nums, kernel_size, backend=backend)

    _check(fn, inputs, precision, request)


@pytest.mark.parametrize("precision", PRECISION_IDS)
@pytest.mark.parametrize(
    "patch_nums, B, H, S, D",
    [pytest.param(PN_TINY, 1, 3, 5, 24, id="tiny-S5-D24"), pytest.param(PN_256PX, 2, 16, 64, 64, id="d16-S64")],
)
def test_external_attention(patch_nums, B, H, S, D, precision, request):
    L = sum(p * p for p in patch_nums)
    inputs = _inputs([(B, H, L, D), (H, S, D), (H, S, D)])
    _check(
        lambda q, k, v, backend: kernels.external_attention(q, k, v, patch_nums, backend=backend),
        inputs,
        precision,
        request,
    )


@pytest.mark.parametrize("precision", PRECISION_IDS)
@pytest.mark.parametrize(
    "patch_nums, C, k, dilation",
    [
        pytest.param(PN_TINY, 5, 3, 2, id="tiny-k3-d2"),
        pytest.param(PN_256PX, 1024, 5, 1, id="d16-k5"),
        pytest.param(PN_256PX, 1000, 7, 3, id="d16-k7-d3-C1000"),
    ],
)
def test_ragged_depthwise_conv2d(patch_nums, C, k, dilation, precision, request):
    L = sum(p * p for p in patch_nums)
    inputs = _inputs([(2, L, C), (C, k, k), (C,)])

    def fn(x, w, b, backend):
        return kernels.ragged_depthwise_conv2d(x, patch_nums, w, b, dilation=dilation, backend=backend)

    _check(fn, inputs, precision, request)


@pytest.mark.parametrize("precision", PRECISION_IDS)
@pytest.mark.parametrize(
    "shape, chunk",
    [
        pytest.param((2, 3, 5, 7), None, id="5x7"),
        pytest.param((2, 8, 16, 16), 4, id="16x16-chunk4"),
        pytest.param((1, 64, 32, 32), None, id="32x32"),
    ],
)
def test_gspn_gates_and_scan(shape, chunk, precision, request):
    N, C, H, W = shape
    inputs = _inputs([shape, shape, (N, 3, C, H, W)])

    def fn(x, lam, g_raw, backend):
        g = kernels.gspn_normalize_gates(g_raw, backend=backend)
        return kernels.gspn_scan(x, lam, g, chunk, backend=backend)

    _check(fn, inputs, precision, request)


@pytest.mark.parametrize("name", ["full", "neighborhood", "external", "lka", "gspn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mechanism_modules_agree_compiled(name, precision):
    """Each mixer module with backend="triton" and backend="torch" on CUDA: output and every gradient."""
    from var.registry import build_mixer

    dtype, matmul = PRECISIONS[precision]
    torch.set_float32_matmul_precision(matmul)
    torch.manual_seed(0)
    opts = {"neighborhood": {"kernel_size": 3}, "gspn": {"chunk": 2}, "external": {"num_slots": 8}}.get(name, {})
    patch_nums = (1, 2, 3, 4)
    fused = build_mixer(name, 64, 4, patch_nums, backend="triton", **opts).cuda()
    ref = build_mixer(name, 64, 4, patch_nums, backend="torch", **opts).cuda()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 30, 64, device="cuda")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        y1, y2 = fused(x1), ref(x2)
    tol = 1e-4 if dtype == torch.float32 else 3e-2  # of the largest magnitude, as in _err
    assert _err(y1.double(), y2.double()) <= tol
    y1.float().square().sum().backward()
    y2.float().square().sum().backward()
    assert _err(x1.grad.double(), x2.grad.double()) <= tol
    for (n, p1), p2 in zip(fused.named_parameters(), ref.parameters()):
        assert _err(p1.grad.double(), p2.grad.double()) <= tol, n
    assert "backend=triton" in repr(fused)

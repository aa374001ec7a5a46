"""var.linear: the fp32 inference GEMM on oneDNN or BLAS computes what F.linear computes, and only where asked."""

import pytest
import torch
import torch.nn.functional as F

from kernels import CPU_GEMM_ENV_VAR, onednn_linear_available
from var.linear import Linear, linear

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")


def _spy(monkeypatch) -> list:
    """Record the calls that reach oneDNN."""
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    return calls


@needs_onednn
@pytest.mark.parametrize("activation", [None, "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_computes_f_linear_in_fp32(monkeypatch, activation, bias):
    monkeypatch.setenv(CPU_GEMM_ENV_VAR, "onednn")
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 7, generator=g).transpose(1, 2)  # [3, 7, 40], not contiguous
    w, b = torch.randn(24, 40, generator=g), torch.randn(24, generator=g) if bias else None
    with torch.no_grad():
        y = linear(x, w, b, activation=activation)
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())
    if activation:
        expected = F.gelu(expected, approximate="tanh")
    assert calls == [(3, 7, 40)]
    assert y.dtype == torch.float32 and y.shape == (3, 7, 24)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_training_autocast_and_other_dtypes_keep_f_linear(monkeypatch):
    monkeypatch.setenv(CPU_GEMM_ENV_VAR, "onednn")
    calls = _spy(monkeypatch)
    layer = Linear(8, 4)
    x = torch.randn(2, 8)
    layer(x).sum().backward()  # training: the weight requires grad, so autograd needs F.linear
    assert layer.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    with torch.no_grad():
        assert layer.double()(x.double()).dtype == torch.float64
    assert calls == []
    with torch.no_grad():
        layer.float()(x)
    assert calls == [(2, 8)]


def test_blas_is_f_linear_bit_for_bit(monkeypatch):
    monkeypatch.setenv(CPU_GEMM_ENV_VAR, "blas")
    x, w, b = torch.randn(5, 16), torch.randn(8, 16), torch.randn(8)
    with torch.no_grad():
        assert torch.equal(linear(x, w, b, activation="gelu_tanh"), F.gelu(F.linear(x, w, b), approximate="tanh"))


def test_an_unknown_activation_is_named():
    with pytest.raises(ValueError, match="'relu'"):
        linear(torch.randn(2, 3), torch.randn(4, 3), activation="relu")


def test_linear_keeps_nn_linear_state_dict_keys():
    assert list(Linear(3, 2).state_dict()) == list(torch.nn.Linear(3, 2).state_dict())

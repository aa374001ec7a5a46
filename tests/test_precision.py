"""scaffold/precision.py: which precision each device and mode computes in."""

import pytest
import torch

from scaffold import precision
from scaffold.errors import UserError
from scaffold.precision import (
    AUTOCAST_DTYPES,
    SAMPLING_PRECISIONS,
    PrecisionError,
    autocast,
    full_precision,
    native_bf16,
    resolve_precision,
    training_precision,
)


@pytest.mark.parametrize(
    "caps, expected",
    [
        ({"avx2": True}, "fp32"),  # this project's 2-core AMD EPYC (Zen 2): no AVX-512 at all
        ({"avx512_f": True, "avx512_vnni": True}, "fp32"),  # a Xeon without AVX512-BF16: bf16 emulated, 3.8x slower
        ({"avx512_f": True, "avx512_bf16": True}, "bf16"),  # AMD EPYC Zen 4 / Intel Cooper Lake
        ({"amx_tile": True, "amx_bf16": True}, "bf16"),  # Intel Sapphire Rapids
    ],
    ids=["avx2", "avx512-no-bf16", "avx512-bf16", "amx"],
)
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert native_bf16("cpu") == (expected == "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == expected
    for explicit in ("fp32", "bf16", "fp16"):  # an explicit choice is never second-guessed
        assert resolve_precision(explicit, "cpu") == explicit


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_cuda_needs_compute_capability_8(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected


def test_unknown_precision_is_a_user_error():
    with pytest.raises(PrecisionError, match="precision must be one of auto, fp32, bf16, fp16, got 'tf32'"):
        resolve_precision("tf32", "cpu")
    assert issubclass(PrecisionError, UserError)


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_of_each_sampling_precision(precision, dtype):
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    with autocast("cpu", precision):
        y = torch.nn.functional.linear(x, w)
        assert torch.is_autocast_enabled("cpu") == (dtype is not None)
    assert y.dtype == (dtype or torch.float32)


def test_auto_autocast_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False})
    with autocast(torch.device("cpu"), "auto"):
        assert not torch.is_autocast_enabled("cpu")  # emulated bf16 would be 3.8x slower: exact fp32
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    with autocast(torch.device("cpu"), "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_full_precision_is_an_fp32_island_inside_autocast():
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    with autocast("cpu", "bf16"):
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16
        with full_precision("cpu"):
            assert torch.nn.functional.linear(x, w).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")  # the island ends with its block


def test_every_sampling_precision_has_an_autocast_rule():
    assert set(SAMPLING_PRECISIONS) == {"auto", *AUTOCAST_DTYPES}


def test_auto_training_precision_is_bf16_only_where_native(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert training_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert training_precision("auto", "cpu") == "32-true"
    assert training_precision("16-mixed", "cpu") == "16-mixed"  # an explicit choice is kept
    assert training_precision("auto", "tpu") == "32-true"

"""The sampling benchmark's yardsticks: FLOP counting (CPU attention included) and its line in the bench table of benchmarks/results/README.md."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import count_flops, gemm_flops_per_s, peak_gemm_flops_per_s
from report import _line

from kernels import onednn_linear_available


def test_count_flops_includes_the_cpu_attention_kernel():
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)
    # QK^T and PV: 2 products of 2*3*5*7*8 MACs, 2 FLOPs each
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, k)) == 2 * 2 * (2 * 3 * 5 * 7 * 8)
    assert count_flops(lambda: torch.randn(4, 5) @ torch.randn(5, 6)) == 2 * 4 * 5 * 6


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")
def test_count_flops_includes_the_onednn_linear():
    x, w = torch.randn(2, 3, 8), torch.randn(5, 8)
    linear_flops = count_flops(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "gelu", [], "tanh"))
    assert linear_flops == 2 * 2 * 3 * 8 * 5


def test_the_gemm_yardstick_is_the_faster_library_on_a_cpu(monkeypatch):
    """fp32 on a CPU: both F.linear (MKL) and oneDNN are timed, and the faster one is the limit."""
    import _common

    products = _common._products(torch.randn(4, 4))
    assert products[0] is F.linear and len(products) == (2 if onednn_linear_available() else 1)
    assert len(_common._products(torch.randn(4, 4, dtype=torch.bfloat16))) == 1  # bf16 F.linear is oneDNN already
    calls = iter([1e-3, 0.5, 0.25])  # the probe, then the two libraries
    monkeypatch.setattr(_common, "timed", lambda fn, device, repeats, warmup: next(calls))
    monkeypatch.setattr(_common, "_products", lambda a: [F.linear, F.linear])
    rate, _ = gemm_flops_per_s(torch.float32, torch.device("cpu"), m=256, k=256, n=256, repeats=1, budget_s=1e6)
    assert rate == 2 * 256**3 / 0.25


def test_gemm_throughput_shrinks_the_product_to_its_time_budget():
    rate, shape = gemm_flops_per_s(torch.float32, torch.device("cpu"), m=512, k=512, n=512, repeats=1, budget_s=1e6)
    assert rate > 0 and shape == (512, 512, 512)
    rate, shape = gemm_flops_per_s(torch.float32, torch.device("cpu"), m=2048, k=2048, n=2048, budget_s=1e-6)
    assert rate > 0 and shape == (256, 256, 256)  # halved down to the smallest product


def test_peak_gemm_is_the_fastest_of_the_shapes(monkeypatch):
    import _common

    rates = {(64, 32, 16): 5.0, (16, 16, 16): 9.0, (32, 64, 16): 7.0}
    monkeypatch.setattr(
        _common, "gemm_flops_per_s", lambda dtype, device, m, k, n, budget_s: (rates[m, k, n], (m, k, n))
    )
    assert peak_gemm_flops_per_s(torch.float32, torch.device("cpu"), list(rates)) == (9.0, (16, 16, 16))


def test_the_cpu_is_named_with_its_family_and_isa(tmp_path, monkeypatch):
    import _common

    info = tmp_path / "cpuinfo"
    block = "vendor_id\t: AuthenticAMD\ncpu family\t: {f}\nmodel\t\t: {m}\nmodel name\t: AMD EPYC\n"
    info.write_text(block.format(f=26, m=2) + "\n" + block.format(f=23, m=49))  # only the first block counts
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_f": True, "avx512_bf16": True})
    assert _common.cpu_description(str(info)) == ["AMD EPYC", "family 26 model 2", "avx512_bf16"]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert _common.cpu_description(str(tmp_path / "missing"))[1:] == ["avx2"]


def test_bench_table_line_names_the_resolved_precision_and_both_gemm_shares():
    meta = {"device": "cpu (AMD EPYC, 2 threads)", "date": "2026-12-02", "depth": 16, "gemm_gflops": {"fp32": 150.4}}
    row = dict(
        mechanism="full",
        batch=4,
        precision="auto",
        resolved="fp32",
        compile="none",
        images_per_s=0.2,
        published_images_per_s=0.16,
        ratio_vs_published=1.25,
        transformer_gemm_share=0.714,
        decoder_gemm_share=0.756,
    )
    line = _line("sample", meta, row)
    assert "batch 4, auto (= fp32) |" in line and "(1.25x)" in line
    assert "share of the fp32 GEMM limit (150 GFLOP/s): transformer 71%, decoder 76%" in line
    # results written before the shares existed still render
    old = {k: v for k, v in row.items() if k not in ("resolved", "compile", "transformer_gemm_share")}
    assert _line("sample", meta, old).endswith("(1.25x) | cpu (AMD EPYC, 2 threads), 2026-12-02 |")

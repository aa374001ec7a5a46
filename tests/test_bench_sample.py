"""The sampling benchmark's yardsticks: FLOP counting (CPU attention included) and the README line."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import count_flops, gemm_flops_per_s, peak_gemm_flops_per_s
from report import _line


def test_count_flops_includes_the_cpu_attention_kernel():
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)
    # QK^T and PV: 2 products of 2*3*5*7*8 MACs, 2 FLOPs each
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, k)) == 2 * 2 * (2 * 3 * 5 * 7 * 8)
    assert count_flops(lambda: torch.randn(4, 5) @ torch.randn(5, 6)) == 2 * 4 * 5 * 6


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


def test_readme_line_names_the_resolved_precision_and_both_gemm_shares():
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

"""Every Triton kernel compiles for real NVIDIA targets, without a GPU (kernels/compile_check.py).

The compiles run in subprocesses: this process runs under TRITON_INTERPRET=1 (tests/conftest.py),
where ``@triton.jit`` builds interpreted functions that cannot be compiled. Each compile is checked
against the target's limits (no error, shared memory within the opt-in limit, spill stores at most
1 KiB a thread) and against the one fp32 precision rule (kernels/_precision.py): under torch's
default matmul precision "highest" no fp32 kernel uses the tensor cores (IEEE dots), under "high"
every kernel that has a dot runs it in TF32.
"""

from __future__ import annotations

import pytest

from kernels import compile_check
from kernels.compile_check import CASES, SPILL_LIMIT_BYTES, TARGETS, compile_in_subprocess

OPS = sorted({op for op, _ in CASES})
DOT_OPS = ("block_causal_attention", "external_attention", "neighborhood_attention")


def _assert_fit(results):
    bad = [
        f"{r.op} {r.case} {r.kernel} {r.target} {r.precision} {r.shape}: {r.problems()}"
        for r in results
        if r.problems()
    ]
    assert bad == []


def _assert_precision_rule(results):
    """Kernels with dots: fp32 -> no tensor cores; tf32 -> TF32; fp16/bf16 -> their own type."""
    by_kernel = {}
    for r in results:
        if r.op in DOT_OPS:
            by_kernel.setdefault((r.op, r.kernel, r.target, r.shape), {})[r.precision] = r.tensor_cores
    for key, cores in by_kernel.items():
        assert cores.get("fp32", "") == "", f"{key} uses tensor cores on IEEE fp32 inputs: {cores}"
        half = cores.get("fp16", cores.get("bf16"))
        if half:  # the kernel has a tensor-core dot
            assert cores.get("fp16", "f16") == "f16" and cores.get("bf16", "bf16") == "bf16", (key, cores)
            assert cores.get("tf32", "tf32") == "tf32", f"{key} ignores matmul precision 'high': {cores}"


@pytest.fixture(scope="module")
def ci_subset():
    # The default run's subset: sm_90, the three dtypes at torch's default precision, d16 shapes.
    return compile_in_subprocess(["sm_90"], ["fp32", "fp16", "bf16"], ["d16-ci"], jobs=2, timeout=600)


def test_every_op_compiles_for_sm90_within_limits(ci_subset):
    assert {r.op for r in ci_subset} == set(OPS)
    assert {r.precision for r in ci_subset} == {"fp32", "fp16", "bf16"}
    assert all(r.registers > 0 for r in ci_subset)
    _assert_fit(ci_subset)


def test_fp32_dots_follow_the_precision_rule(ci_subset):
    _assert_precision_rule(ci_subset)
    # The attention kernels do use the tensor cores on half inputs (the rule is not vacuous).
    assert {r.op for r in ci_subset if r.tensor_cores == "f16"} == set(DOT_OPS)


def test_the_checks_catch_spills_shared_memory_and_errors():
    ok = dict(op="o", case="c", kernel="k", target="sm_80", precision="fp32", shape="d16", registers=64)
    assert compile_check.CompileResult(spill_stores=0, shared=TARGETS["sm_80"][1], **ok).problems() == []
    spilled = compile_check.CompileResult(spill_stores=SPILL_LIMIT_BYTES + 4, shared=0, **ok)
    assert "spill stores" in spilled.problems()[0]
    too_big = compile_check.CompileResult(spill_stores=0, shared=TARGETS["sm_80"][1] + 1, **ok)
    assert "opt-in limit of sm_80" in too_big.problems()[0]
    failed = compile_check.CompileResult(**{**ok, "kernel": "-", "error": "CompilationError: x"})
    assert failed.problems() == ["compile error: CompilationError: x"]
    table = compile_check.format_table([spilled, too_big], "t")
    assert "2 kernels compiled, 2 with problems." in table


def test_ptxas_report_parsing():
    log = (
        "ptxas info    : Function properties for _fwd_kernel\n"
        "    944 bytes stack frame, 1572 bytes spill stores, 1492 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 944 bytes cumulative stack size\n"
    )
    assert compile_check._parse_ptxas(log) == {"_fwd_kernel": (255, 1572)}
    ptx = "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {...};\nmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
    assert compile_check._tensor_core_types(ptx) == "bf16,tf32"
    assert compile_check._tensor_core_types("fma.rn.f32 %f1, %f2, %f3, %f4;") == ""


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
def test_full_matrix_compiles_within_limits(target):
    """Both targets, fp32 (IEEE), TF32, fp16, bf16, head dims 64 and 128 (~10 min on 2 cores)."""
    results = compile_in_subprocess([target], ["fp32", "tf32", "fp16", "bf16"], ["d16", "d16-hd128"], jobs=2)
    assert {r.op for r in results} == set(OPS)
    _assert_fit(results)
    _assert_precision_rule(results)

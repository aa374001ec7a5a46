"""Compile every Triton kernel for NVIDIA GPUs on a machine without one.

Triton compiles ahead of time for a target it is told about: a stand-in driver reports
``GPUTarget("cuda", arch, 32)`` and the JIT functions are launched with ``warmup=True`` (compile,
no launch). Each op runs forward and backward through its real autograd Function and launchers on
CPU tensors of the real shapes, so every kernel is compiled with the constexprs, tile sizes, warps
and argument specialisations (divisibility by 16) that a GPU run would use. ptxas (shipped inside
the triton wheel) reports registers and spills with ``-v``; the compiled kernel's
``metadata.shared`` is its shared memory.

This must run in a process where ``TRITON_INTERPRET`` is unset *before* triton is imported:
under the interpreter ``@triton.jit`` builds interpreted functions that cannot be compiled. The
test suite sets it for the kernel tests, so :func:`compile_in_subprocess` starts
``python -m kernels.compile_check`` with a clean environment and a fresh cache directory.

    python -m kernels.compile_check --targets sm_90,sm_80 --precisions fp32,tf32,fp16,bf16 \\
        --shapes d16,d16-hd128 --table       # the table committed under benchmarks/results/
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "CASES",
    "PRECISIONS",
    "SHAPES",
    "SPILL_LIMIT_BYTES",
    "TARGETS",
    "CompileResult",
    "compile_in_subprocess",
    "format_table",
    "run_cases",
]

# Shared memory a kernel may use per block after opting in (cudaDevAttrMaxSharedMemoryPerBlockOptin):
# H100 227 KB, A100 163 KB (CUDA C Programming Guide, "Compute Capabilities", table 21).
TARGETS: dict[str, tuple[int, int]] = {"sm_90": (90, 232_448), "sm_80": (80, 166_912)}
SPILL_LIMIT_BYTES = 1024  # spill stores per thread; more means a kernel runs from local memory
# Label -> (torch dtype name, torch.get_float32_matmul_precision() in force while compiling).
PRECISIONS: dict[str, tuple[str, str]] = {
    "fp32": ("float32", "highest"),  # IEEE fp32 dots, torch's default setting
    "tf32": ("float32", "high"),
    "fp16": ("float16", "highest"),
    "bf16": ("bfloat16", "highest"),
}
# Shape sets: the d16 model (width 1024, 16 heads of 64) and the same width with heads of 128.
# ``sides``: GSPN map sides; the scan kernels specialise on next_power_of_2(side). "d16-ci" is d16
# with only the smallest and largest of them, the fast subset of the default test run.
SHAPES: dict[str, dict] = {
    "d16": dict(B=2, H=16, D=64, S=64, C=1024, sides=(1, 2, 4, 8, 16, 32)),
    "d16-ci": dict(B=2, H=16, D=64, S=64, C=1024, sides=(1, 32)),
    "d16-hd128": dict(B=2, H=8, D=128, S=64, C=1024, sides=()),
}


@dataclass(frozen=True)
class CompileResult:
    """One compiled kernel (or one case that failed to compile: ``kernel`` is "-", ``error`` set)."""

    op: str
    case: str
    kernel: str
    target: str
    precision: str
    shape: str
    registers: int = -1
    spill_stores: int = -1
    shared: int = -1
    num_warps: int = -1
    num_stages: int = -1
    # Operand type of the tensor-core instructions in the PTX ("tf32", "f16", "bf16"), "" when the
    # kernel has none (no tl.dot, or IEEE fp32 dots on the FMA units).
    tensor_cores: str = ""
    seconds: float = 0.0  # compile time of the whole case (all its kernels), on the first row
    error: str = ""

    def problems(self) -> list[str]:
        """What makes this compile unfit for the target; empty when it is fine."""
        if self.error:
            return [f"compile error: {self.error}"]
        out = []
        limit = TARGETS[self.target][1]
        if self.shared > limit:
            out.append(f"shared memory {self.shared} B > {limit} B opt-in limit of {self.target}")
        if self.spill_stores > SPILL_LIMIT_BYTES:
            out.append(f"{self.spill_stores} B of spill stores per thread > {SPILL_LIMIT_BYTES} B")
        if self.spill_stores < 0 or self.registers < 0:
            out.append("no ptxas report was captured for this kernel")
        return out


# ----------------------------------------------------------------------------------------------
# Cases: one op forward and backward through its Triton autograd Function, on CPU tensors.


def _randn(torch, shape, dtype, grad=True):
    return torch.randn(shape, dtype=dtype).requires_grad_(grad)


def _d16_schedule() -> tuple[tuple[int, ...], int]:
    """The 256 px patch schedule of the d16 model and its length L (imported here: torch is not yet)."""
    from kernels._scales import SCHEDULES, ScaleLayout

    layout = ScaleLayout.of(SCHEDULES["256"])
    return layout.patch_nums, layout.num_tokens


def _block_causal(torch, dtype, s):
    from kernels.block_causal_attention.triton import block_causal_attention

    patch_nums, L = _d16_schedule()
    q, k, v = (_randn(torch, (s["B"], s["H"], L, s["D"]), dtype) for _ in range(3))
    block_causal_attention(q, k, v, patch_nums, s["D"] ** -0.5).sum().backward()


def _neighborhood(torch, dtype, s):
    from kernels.neighborhood_attention.triton import neighborhood_attention

    patch_nums, L = _d16_schedule()
    q, k, v = (_randn(torch, (s["B"], s["H"], L, s["D"]), dtype) for _ in range(3))
    neighborhood_attention(q, k, v, patch_nums, 7, s["D"] ** -0.5).sum().backward()


def _external(torch, dtype, s):
    from kernels.external_attention.triton import external_attention

    patch_nums, L = _d16_schedule()
    q = _randn(torch, (s["B"], s["H"], L, s["D"]), dtype)
    mem_k, mem_v = (_randn(torch, (s["H"], s["S"], s["D"]), dtype) for _ in range(2))
    external_attention(q, mem_k, mem_v, patch_nums, s["D"] ** -0.5).sum().backward()


def _conv(kernel_size: int, dilation: int) -> Callable:
    def case(torch, dtype, s):
        from kernels.ragged_depthwise_conv2d.triton import ragged_depthwise_conv2d

        patch_nums, L = _d16_schedule()
        x = _randn(torch, (s["B"], L, s["C"]), dtype)
        weight, bias = _randn(torch, (s["C"], kernel_size, kernel_size), dtype), _randn(torch, (s["C"],), dtype)
        ragged_depthwise_conv2d(x, patch_nums, weight, bias, dilation).sum().backward()

    return case


def _gspn(torch, dtype, s):
    from kernels.gspn_scan.triton import gspn_normalize_gates, gspn_scan

    for side in s["sides"]:
        x, lam = (_randn(torch, (s["B"], s["C"] // 16, side, side), dtype) for _ in range(2))
        g = gspn_normalize_gates(_randn(torch, (s["B"], 3, s["C"] // 16, side, side), dtype))
        gspn_scan(x, lam, g, None).sum().backward()


# (op, case name) -> function(torch, dtype, shape dict). Ops whose kernels do not depend on the head
# dim compile once per shape set all the same: their shapes come from C.
CASES: dict[tuple[str, str], Callable] = {
    ("block_causal_attention", "fwd+bwd"): _block_causal,
    ("neighborhood_attention", "k7 fwd+bwd"): _neighborhood,
    ("external_attention", "fwd+bwd"): _external,
    ("ragged_depthwise_conv2d", "k5 d1 fwd+bwd"): _conv(5, 1),
    ("ragged_depthwise_conv2d", "k7 d3 fwd+bwd"): _conv(7, 3),
    ("gspn_scan", "gates + scan fwd+bwd"): _gspn,
}
# Ops whose kernels see the head dim; the others compile once, for the shape sets with GSPN sides.
HEAD_DIM_OPS = ("block_causal_attention", "neighborhood_attention", "external_attention")


# ----------------------------------------------------------------------------------------------
# The compiling process


class _StandInDriver:
    """Answers what Triton's JIT asks the active driver before compiling; launches never happen.

    The "device" is the compute capability, so each target gets its own per-device JIT cache.
    """

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.arch = arch

    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return self.arch

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


_PTXAS_RE = re.compile(
    r"Function properties for (?P<name>\w+)\s+(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores,"
    r".*?Used (?P<regs>\d+) registers",
    re.S,
)


_MMA_RE = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync)\.[\w.]*?\.(tf32|bf16|f16)\b")


def _tensor_core_types(ptx: str) -> str:
    return ",".join(sorted(set(_MMA_RE.findall(ptx))))


def _parse_ptxas(log: str) -> dict[str, tuple[int, int]]:
    """Kernel name -> (registers, spill store bytes) from a ``ptxas -v`` log."""
    return {m["name"]: (int(m["regs"]), int(m["stores"])) for m in _PTXAS_RE.finditer(log)}


@contextlib.contextmanager
def _compile_only(compiled: list) -> Iterator[None]:
    """Make every JIT launch a ``warmup=True`` compile; append (kernel name, compiled kernel, ptxas log)."""
    from triton.runtime import jit

    original = jit.JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas's -v report
            kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel, log.getvalue()))
        return kernel

    jit.JITFunction.run = run
    try:
        yield
    finally:
        jit.JITFunction.run = original


def run_cases(targets: Sequence[str], precisions: Sequence[str], shapes: Sequence[str]) -> list[CompileResult]:
    """Compile every case for every (target, precision, shape); call in a process without TRITON_INTERPRET."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset before triton is imported")
    import torch
    from triton.runtime import driver

    results: list[CompileResult] = []
    reports: dict[str, tuple[int, int]] = {}  # kernel hash -> ptxas numbers (the JIT cache skips ptxas)
    saved_precision = torch.get_float32_matmul_precision()
    try:
        for target in targets:
            driver.set_active(_StandInDriver(TARGETS[target][0]))
            for precision in precisions:
                dtype_name, matmul_precision = PRECISIONS[precision]
                torch.set_float32_matmul_precision(matmul_precision)
                for shape in shapes:
                    for (op, case), fn in CASES.items():
                        if not SHAPES[shape]["sides"] and op not in HEAD_DIM_OPS:
                            continue
                        results += _run_case(
                            fn, torch, getattr(torch, dtype_name), op, case, target, precision, shape, reports
                        )
    finally:
        # The stand-in stays active: without a GPU there is no real driver to go back to.
        torch.set_float32_matmul_precision(saved_precision)
    return results


def _run_case(fn, torch, dtype, op, case, target, precision, shape, reports) -> list[CompileResult]:
    compiled: list = []
    common = dict(op=op, case=case, target=target, precision=precision, shape=shape)
    start = time.perf_counter()
    try:
        with _compile_only(compiled):
            fn(torch, dtype, SHAPES[shape])
    except Exception as e:  # a compile error is a result to report, not a crash of the check
        first_line = (str(e).strip().splitlines() or [""])[0]
        return [CompileResult(kernel="-", error=f"{type(e).__name__}: {first_line}"[:300], **common)]
    seconds = round(time.perf_counter() - start, 2)
    out, seen = [], set()
    for name, kernel, log in compiled:
        parsed = _parse_ptxas(log)  # empty when the JIT cache served an earlier compile
        if kernel.name in parsed:
            reports[kernel.hash] = parsed[kernel.name]
        key = kernel.hash
        if key in seen:  # the same compiled kernel launched twice in one case (e.g. conv forward and dx)
            continue
        seen.add(key)
        regs, spills = reports.get(key, (-1, -1))
        md = kernel.metadata
        out.append(
            CompileResult(
                kernel=name,
                registers=regs,
                spill_stores=spills,
                shared=int(md.shared),
                num_warps=int(md.num_warps),
                num_stages=int(md.num_stages),
                tensor_cores=_tensor_core_types(kernel.asm["ptx"]),
                seconds=0.0 if out else seconds,
                **common,
            )
        )
    return out


def compile_in_subprocess(
    targets: Sequence[str],
    precisions: Sequence[str],
    shapes: Sequence[str],
    jobs: int = 1,
    python: str = sys.executable,
    extra_pythonpath: Sequence[str] = (),
    timeout: float | None = None,
) -> list[CompileResult]:
    """Run :func:`run_cases` in fresh interpreters: TRITON_INTERPRET unset, an empty Triton cache each.

    ``jobs`` processes run side by side, the precisions dealt out among them (compiling is one core
    per process).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = [*extra_pythonpath, root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    batches = [list(precisions[i::jobs]) for i in range(max(1, min(jobs, len(precisions))))]
    with tempfile.TemporaryDirectory(prefix="triton-compile-check-") as cache:
        procs = []
        for i, batch in enumerate(batches):
            cmd = [python, "-m", "kernels.compile_check", "--json", "--targets", ",".join(targets)]
            cmd += ["--precisions", ",".join(batch), "--shapes", ",".join(shapes)]
            job_env = dict(env, TRITON_CACHE_DIR=os.path.join(cache, str(i)))
            proc = subprocess.Popen(
                cmd, env=job_env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            procs.append((cmd, proc))
        results = []
        for cmd, proc in procs:
            out, err = proc.communicate(timeout=timeout)
            # Exit 1 means "compiled, with problems": the rows say which.
            if proc.returncode not in (0, 1):
                raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{err[-4000:]}")
            results += [CompileResult(**row) for row in json.loads(out)]
    return results


def format_table(results: Sequence[CompileResult], title: str) -> str:
    """A Markdown table, one row per compiled kernel, problems flagged in the last column."""
    lines = [
        f"# {title}",
        "",
        f"Limits: shared memory per block after opt-in ({', '.join(f'{t} {b} B' for t, (_, b) in TARGETS.items())}); "
        f"spill stores <= {SPILL_LIMIT_BYTES} B per thread. fp32 = IEEE dots (matmul precision 'highest'), "
        "tf32 = fp32 inputs with matmul precision 'high'.",
        "",
        "| op | case | kernel | target | precision | shape | warps | stages | registers | spill stores (B) | shared (B) | tensor cores | problems |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.op} | {r.case} | {r.kernel} | {r.target} | {r.precision} | {r.shape} | {r.num_warps} | "
            f"{r.num_stages} | {r.registers} | {r.spill_stores} | {r.shared} | {r.tensor_cores or '-'} | "
            f"{'; '.join(r.problems()) or 'ok'} |"
        )
    bad = sum(bool(r.problems()) for r in results)
    lines += ["", f"{len(results)} kernels compiled, {bad} with problems."]
    return "\n".join(lines) + "\n"


def _csv(value: str, known: Sequence[str], flag: str) -> list[str]:
    items = [v for v in value.split(",") if v]
    for v in items:
        if v not in known:
            raise SystemExit(f"{flag}: unknown value {v!r}; known: {', '.join(known)}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="sm_90,sm_80")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--shapes", default="d16,d16-hd128")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for compile_in_subprocess)")
    parser.add_argument("--table", metavar="FILE", help="write the Markdown table to FILE ('-' for stdout)")
    args = parser.parse_args(argv)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # read by triton when ptxas runs
    with contextlib.ExitStack() as stack:
        if "TRITON_CACHE_DIR" not in os.environ:
            # A kernel found in the cache is not compiled again, so ptxas prints nothing for it: a second
            # run over a shared cache would report every kernel without registers. Compile into a fresh one.
            os.environ["TRITON_CACHE_DIR"] = stack.enter_context(tempfile.TemporaryDirectory(prefix="compile-check-"))
            stack.callback(os.environ.pop, "TRITON_CACHE_DIR", None)
        results = run_cases(
            _csv(args.targets, list(TARGETS), "--targets"),
            _csv(args.precisions, list(PRECISIONS), "--precisions"),
            _csv(args.shapes, list(SHAPES), "--shapes"),
        )
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    if args.table:
        import triton

        table = format_table(results, f"Triton kernels compiled without a GPU (triton {triton.__version__})")
        if args.table == "-":
            sys.stdout.write(table)
        else:
            with open(args.table, "w") as f:
                f.write(table)
    bad = [r for r in results if r.problems()]
    for r in bad:
        print(
            f"{r.op} {r.case} {r.kernel} {r.target} {r.precision} {r.shape}: {'; '.join(r.problems())}", file=sys.stderr
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

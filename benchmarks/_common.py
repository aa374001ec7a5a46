"""What every benchmark script shares: the device's name, timing with synchronisation, peak memory,
and results written as JSON + Markdown under benchmarks/results/ with device, date, commit and versions."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

MECHANISMS = ["full", "neighborhood", "external", "lka", "gspn", "hybrid"]
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from kernels import SCHEDULES  # noqa: E402  (after the path line, so a bare checkout imports)

# The named patch schedules by resolution in px (kernels/_scales.py types them once).
PATCH_NUMS: dict[int, tuple[int, ...]] = {int(px): pns for px, pns in SCHEDULES.items()}


def attention_of(mechanism: str, depth: int) -> str | list[str]:
    """`model.attention` for a benchmark's mechanism name: "hybrid" is the hybrid preset's pattern at `depth`
    (`var.hybrid_attention`: lka, neighborhood, then full in the second half; at depth 2 lka then full)."""
    from var import hybrid_attention

    return hybrid_attention(depth) if mechanism == "hybrid" else mechanism


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({', '.join(cpu_description())}, {torch.get_num_threads()} threads)"


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's model name, and where /proc/cpuinfo has them its x86 family and model numbers and the widest
    matrix ISA torch finds: virtual machines often call every generation "AMD EPYC" (a Zen 2 with AVX2 and a
    Zen 5 with AVX512-BF16 both were), and the two differ 4x in fp32 and 1000x in bf16 GEMM throughput."""
    from kernels import cpu_info

    fields = cpu_info(cpuinfo)
    parts = [fields.get("model name") or platform.processor() or platform.machine()]
    if "cpu family" in fields and "model" in fields:
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    isa = next((name for name in ("amx_bf16", "avx512_bf16", "avx512_f", "avx2") if caps.get(name)), None)
    if isa:
        parts.append(isa.replace("avx512_f", "avx512"))
    return parts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1, warmup: int = 1) -> float:
    """Median seconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def timed_pair(fn_a: Callable[[], object], fn_b: Callable[[], object], device: torch.device, repeats: int = 2):
    """Median seconds of two functions measured alternately (a, b, a, b, ...) after one warm-up each,
    so that neither profits from running second (warm caches, clock boost, allocator state)."""
    fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(timed(fn_a, device, repeats=1, warmup=0))
        times_b.append(timed(fn_b, device, repeats=1, warmup=0))
    return sorted(times_a)[len(times_a) // 2], sorted(times_b)[len(times_b) // 2]


def gemm_flops_per_s(
    dtype: torch.dtype,
    device: torch.device,
    m: int = 2048,
    k: int = 1024,
    n: int = 4096,
    repeats: int = 3,
    budget_s: float = 5.0,
) -> tuple[float, tuple[int, int, int]]:
    """The machine's matrix-multiply throughput in FLOP/s for `dtype`, and the product that measured it: a
    linear layer's, ``F.linear([m, k], [n, k])`` (the weight transposed, as every layer of the models runs
    it), the median of `repeats` timed products after one warm-up. Where `dtype` is emulated (bf16 on a CPU
    without AVX512-BF16: about 0.1 GFLOP/s on a Zen 2, against ~100 in fp32), every side is halved until
    the timed products fit in `budget_s`, as estimated from a product of an eighth of each side."""
    probe = torch.randn(m // 8, k // 8, device=device).to(dtype), torch.randn(n // 8, k // 8, device=device).to(dtype)
    rate = 2 * (m // 8) * (k // 8) * (n // 8) / timed(lambda: F.linear(*probe), device, repeats=1, warmup=1)
    while m > 256 and 2 * m * k * n * (repeats + 1) / rate > budget_s:
        m, k, n = m // 2, k // 2, n // 2
    a = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(n, k, device=device).to(dtype)
    seconds = min(timed(partial(product, a, w), device, repeats=repeats, warmup=1) for product in _products(a))
    return 2 * m * k * n / seconds, (m, k, n)


def _products(a: torch.Tensor) -> list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The libraries that run a linear layer of `a`'s dtype and device: ``F.linear`` (BLAS: MKL on an x86 CPU),
    and for fp32 on a CPU oneDNN too (:mod:`var.linear`: MKL runs its AVX2 code on AMD CPUs). The fastest is
    the machine's limit, whichever library the models use."""
    from kernels import onednn_linear_available

    products = [F.linear]
    if a.device.type == "cpu" and a.dtype == torch.float32 and onednn_linear_available():
        products.append(lambda a, w: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""))
    return products


def peak_gemm_flops_per_s(
    dtype: torch.dtype, device: torch.device, shapes: Sequence[tuple[int, int, int]], budget_s: float = 5.0
) -> tuple[float, tuple[int, int, int]]:
    """The best of :func:`gemm_flops_per_s` over `shapes` (m, k, n): the yardstick of a workload's "share of
    the limit" is the fastest product the machine runs among the workload's own layer shapes, so that no
    share exceeds 1 because one shape happened to suit the BLAS worse than the workload's."""
    return max(gemm_flops_per_s(dtype, device, m, k, n, budget_s=budget_s / len(shapes)) for m, k, n in shapes)


def count_flops(fn: Callable[[], object]) -> float:
    """Multiply-accumulate FLOPs (2 per MAC) of the matmuls, convolutions and attention that `fn` runs,
    by torch's FlopCounterMode; the CPU attention kernel, missing from its table, is counted as on GPU."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from kernels import onednn_linear_available

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def onednn_linear(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # var.linear's oneDNN GEMM
        return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]

    aten = torch.ops.aten
    with FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa,
            **({torch.ops.mkldnn._linear_pointwise: onednn_linear} if onednn_linear_available() else {}),
        },
    ) as counter:
        fn()
    return float(counter.get_total_flops())


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """CUDA: peak allocated since `reset_peak`. CPU: the process's peak RSS so far (an upper bound)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def metadata(device: torch.device, **extra) -> dict:
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "date": datetime.date.today().isoformat(),
        "commit": commit or "unknown",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        **extra,
    }


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def result_base(out_dir: str | os.PathLike, name: str, meta: dict) -> Path:
    """`<out_dir>/<name>-<device slug>-<date>`: the results' path without a suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")[:64]
    return Path(out_dir) / f"{name}-{slug}-{meta['date']}"


def write_results(out_dir: str | os.PathLike, name: str, meta: dict, rows: list[dict], markdown: str) -> Path:
    """`<out_dir>/<name>-<device slug>-<date>.json` and `.md`, each written atomically."""
    from scaffold.io import write_atomic

    base = result_base(out_dir, name, meta)
    base.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps({"meta": meta, "rows": rows}, indent=2)), (".md", markdown)):
        write_atomic(base.with_name(base.name + suffix), text + "\n")
    return base


def memory_note(device: torch.device) -> str:
    """What the tables' peak-memory column measures on ``device``."""
    return "CUDA peak allocated" if device.type == "cuda" else "process peak RSS (upper bound)"


def publish(args, kind: str, title: str, details: str, meta: dict, rows: list[dict], cols: list[str], device) -> None:
    """Print the table of ``rows`` under ``title`` and a line of where and what (``details``: the settings);
    with ``--out``, write the results as ``<kind>-quick`` or ``<kind>-d<depth>``."""
    markdown = (
        f"# {title}\n\n{meta['device']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}; "
        f"{details}; peak memory: {memory_note(device)}\n\n" + markdown_table(rows, cols)
    )
    print(markdown)
    if args.out:
        name = f"{kind}-" + ("quick" if args.quick else f"d{args.depth}")
        print("wrote", write_results(args.out, name, meta, rows, markdown))

"""Benchmark of the spatial token-mixing ops: ragged depthwise conv (LKA) and the GSPN line scan.

Compares, forward and forward+backward, time and peak memory:

- ``kernels.ragged_depthwise_conv2d`` with ``backend="triton"`` (one launch for all scales) against
  ``backend="torch"`` (a per-scale loop of cuDNN depthwise ``F.conv2d``), for LKA's two filters
  (5x5, and 7x7 dilation 3) at the d16 width C = 1024, B = 16, at 256 / 512 / 1024 px;
- ``kernels.gspn_scan`` (one launch) against the reference's PyTorch loop over columns, on the
  finest map of each resolution, and ``kernels.gspn_normalize_gates``.

There is no block module yet (docs/architecture.md section 7), so only the ops are timed.

Usage::

    python benchmarks/spatial.py                          # full sizes, on CUDA
    python benchmarks/spatial.py --quick                  # CPU-sized, reference paths only, < 1 min
    python benchmarks/spatial.py --quick --out benchmarks/results/

``--out`` writes ``spatial-<device>-<date>.json`` and ``.md`` with the device, date and versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import kernels

# The named schedules (kernels/_scales.py); 1024 px is Infinity's (results before 2026-12-07 used the
# 512 px list extended by 40, 48, 64).
PATCH_NUMS = {int(px): pns for px, pns in kernels.SCHEDULES.items()}
LKA_FILTERS = [(5, 1), (7, 3)]  # docs/architecture.md section 7.4: dw 5x5, then dw 7x7 dilation 3


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _measure(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    """Median milliseconds of ``fn`` and its peak memory in MiB above what was allocated before (CUDA only)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        peak = None
    times.sort()
    return times[len(times) // 2], peak


def _fwd_bwd(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run():
        out = forward()
        out.backward(torch.ones_like(out))

    return run


def bench_conv(px, B, C, backends, device, dtype, warmup, iters):
    rows = []
    pns = PATCH_NUMS[px]
    L = kernels.ScaleLayout.of(pns).num_tokens
    x = torch.randn(B, L, C, device=device, dtype=dtype, requires_grad=True)
    for k, dilation in LKA_FILTERS:
        w = torch.randn(C, k, k, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(C, device=device, dtype=dtype, requires_grad=True)
        for backend in backends:

            def fwd(backend=backend, w=w, b=b, dilation=dilation):
                return kernels.ragged_depthwise_conv2d(x, pns, w, b, dilation, backend=backend)

            for mode, fn in (("fwd", lambda fwd=fwd: torch.no_grad()(fwd)()), ("fwd+bwd", _fwd_bwd(fwd))):
                ms, mib = _measure(fn, device, warmup, iters)
                rows.append(
                    dict(
                        op="ragged_depthwise_conv2d",
                        px=px,
                        shape=f"B={B} L={L} C={C} k={k} d={dilation}",
                        backend=backend,
                        mode=mode,
                        ms=ms,
                        peak_mib=mib,
                    )
                )
    return rows


def bench_gspn(px, B, C, backends, device, dtype, warmup, iters):
    rows = []
    p = PATCH_NUMS[px][-1]  # the finest map dominates the cost
    x = torch.randn(B, C, p, p, device=device, dtype=dtype, requires_grad=True)
    lam = torch.randn(B, C, p, p, device=device, dtype=dtype, requires_grad=True)
    g_raw = torch.randn(B, 3, C, p, p, device=device, dtype=dtype, requires_grad=True)
    for backend in backends:
        g = kernels.gspn_normalize_gates(g_raw, backend=backend).detach().requires_grad_()

        def scan(backend=backend, g=g):
            return kernels.gspn_scan(x, lam, g, backend=backend)

        def gates(backend=backend):
            return kernels.gspn_normalize_gates(g_raw, backend=backend)

        for op, fwd in (("gspn_scan", scan), ("gspn_normalize_gates", gates)):
            for mode, fn in (("fwd", lambda fwd=fwd: torch.no_grad()(fwd)()), ("fwd+bwd", _fwd_bwd(fwd))):
                ms, mib = _measure(fn, device, warmup, iters)
                rows.append(
                    dict(op=op, px=px, shape=f"N={B} C={C} H=W={p}", backend=backend, mode=mode, ms=ms, peak_mib=mib)
                )
    return rows


def _markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Spatial ops benchmark ({meta['device']}, {meta['date']})", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| op | px | shape | backend | mode | ms (median) | peak MiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mib = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"| {r['op']} | {r['px']} | {r['shape']} | {r['backend']} | {r['mode']} | {r['ms']:.3f} | {mib} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run of the reference paths (< 1 min)")
    parser.add_argument("--out", type=Path, help="folder to write JSON + Markdown results into")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.quick else "cpu"))
    if args.quick:
        # Reference paths only: the Triton kernels need a GPU (the interpreter's speed means nothing).
        sizes, B, C, backends, dtype, warmup, iters = (256,), 2, 64, ("torch",), torch.float32, 1, 3
    else:
        if device.type != "cuda":
            parser.error("the full benchmark needs a CUDA device; use --quick on CPU")
        sizes, B, C, backends, dtype, warmup, iters = (
            (256, 512, 1024),
            16,
            1024,
            ("triton", "torch"),
            torch.bfloat16,
            3,
            10,
        )
    rows = []
    for px in sizes:
        rows += bench_conv(px, B, C, backends, device, dtype, warmup, iters)
        rows += bench_gspn(px, B, C, backends, device, dtype, warmup, iters)
    meta = dict(
        device=_device_name(device),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        torch=torch.__version__,
        triton=_triton_version(),
        dtype=str(dtype).removeprefix("torch."),
        mode="quick (CPU-sized, reference paths only)" if args.quick else "full",
    )
    if args.quick:
        meta["triton kernels"] = "not timed: they need a CUDA device (GPU numbers are owed by a GPU run)"
    text = _markdown(meta, rows)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")[:40]
        stem = args.out / f"spatial-{slug}-{meta['date'][:10]}"
        stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
        print(f"wrote {stem}.json and {stem}.md")


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


if __name__ == "__main__":
    main()

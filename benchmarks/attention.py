"""Benchmark of the attention kernels; not part of CI.

On a GPU, per scale list (256 px L=680, 512 px L=2240, 1024 px L=9451) and dtype, it times the
forward and forward+backward and records the peak memory of:

- ``block_causal triton``: this project's block-causal kernel (kernels/block_causal_attention/triton.py),
- ``sdpa dense mask``: ``torch.nn.functional.scaled_dot_product_attention`` with the ``[L, L]`` bool mask,
- ``flex_attention``: ``torch.nn.attention.flex_attention`` compiled, with a block mask built from the scales,
- ``neighborhood triton k7`` / ``k3``: the pyramid neighborhood kernel,

and prints every time as a ratio to masked SDPA measured in the same run. ``--quick`` runs a
CPU-sized version (the PyTorch reference against masked SDPA; Triton needs a GPU there) in under
a minute. ``--out DIR`` writes JSON and Markdown named after the device and the date.

    python benchmarks/attention.py --quick --out benchmarks/results/
    python benchmarks/attention.py --out benchmarks/results/          # on a CUDA machine
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels
from kernels import SCHEDULES, ScaleLayout

# The named schedules (kernels/_scales.py); 1024 px is Infinity's, L = 10521 (results before 2026-12-07
# used a 14-scale list of L = 9451).
PATCH_NUMS = {f"{px}px": pns for px, pns in SCHEDULES.items()}
GPU_TARGETS = (
    "Targets (GPU): block-causal fwd+bwd >= 1.3x faster than flex_attention and >= 2x faster than masked "
    "SDPA at 512 px; neighborhood k7 >= 5x faster than full attention at 1024 px."
)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], object], device: torch.device, min_reps: int, budget_s: float) -> float:
    """Median wall time of ``fn`` in ms after one warm-up call (which also compiles)."""
    fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _methods(patch_nums, device, quick: bool) -> dict[str, Callable]:
    """name -> attention(q, k, v) for this scale list."""
    ids_L = ScaleLayout.of(patch_nums).scale_ids(device)
    mask_LL = ids_L[None, :] <= ids_L[:, None]  # key visible iff its scale <= the query's scale

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LL)

    methods = {"sdpa dense mask": sdpa}
    if quick:
        methods["block_causal torch"] = lambda q, k, v: kernels.block_causal_attention(
            q, k, v, patch_nums, backend="torch"
        )
        methods["neighborhood torch k7"] = lambda q, k, v: kernels.neighborhood_attention(
            q, k, v, patch_nums, 7, backend="torch"
        )
        return methods

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        return ids_L[kv_idx] <= ids_L[q_idx]

    L = ids_L.numel()
    block_mask = create_block_mask(mask_mod, None, None, L, L, device=device)
    flex = torch.compile(flex_attention)
    methods["flex_attention"] = lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    methods["block_causal triton"] = lambda q, k, v: kernels.block_causal_attention(
        q, k, v, patch_nums, backend="triton"
    )
    for ks in (7, 3):
        methods[f"neighborhood triton k{ks}"] = lambda q, k, v, ks=ks: kernels.neighborhood_attention(
            q, k, v, patch_nums, ks, backend="triton"
        )
    return methods


def run(quick: bool, device: torch.device, dtypes: list[torch.dtype]) -> list[dict]:
    rows = []
    sizes = {"256px": PATCH_NUMS["256px"]} if quick else PATCH_NUMS
    for size, patch_nums in sizes.items():
        L = ScaleLayout.of(patch_nums).num_tokens
        # d16-like B*H; fewer images at 1024 px so the dense mask baseline fits.
        B, H, D = (1, 4, 64) if quick else ((8, 16, 64) if L < 5000 else (2, 16, 64))
        methods = _methods(patch_nums, device, quick)
        for dtype in dtypes:
            g = torch.Generator(device=device).manual_seed(0)
            qkv = [torch.randn(B, H, L, D, device=device, dtype=dtype, generator=g) for _ in range(3)]
            qkv_grad = [t.detach().clone().requires_grad_() for t in qkv]
            do = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=g)
            for name, attn in methods.items():

                def fwd(attn=attn, qkv=qkv):
                    with torch.no_grad():
                        return attn(*qkv)

                def fwd_bwd(attn=attn, qkv=qkv_grad, do=do):
                    out = attn(*qkv)
                    return torch.autograd.grad(out, qkv, do)

                min_reps, budget = (2, 1.0) if quick else (10, 2.0)
                row = dict(
                    size=size, L=L, B=B, H=H, D=D, dtype=str(dtype).removeprefix("torch."), method=name,
                    fwd_ms=_time_ms(fwd, device, min_reps, budget),
                    fwd_bwd_ms=_time_ms(fwd_bwd, device, min_reps, budget),
                    fwd_peak_mib=_peak_mib(fwd, device),
                    fwd_bwd_peak_mib=_peak_mib(fwd_bwd, device),
                )  # fmt: skip
                rows.append(row)
                print(f"  {size} {row['dtype']} {name}: fwd {row['fwd_ms']:.2f} ms, fwd+bwd {row['fwd_bwd_ms']:.2f} ms")
    # Ratios against masked SDPA of the same size and dtype, measured in the same run.
    for row in rows:
        base = next(
            r for r in rows if (r["size"], r["dtype"], r["method"]) == (row["size"], row["dtype"], "sdpa dense mask")
        )
        row["fwd_speedup_vs_sdpa"] = base["fwd_ms"] / row["fwd_ms"]
        row["fwd_bwd_speedup_vs_sdpa"] = base["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    return rows


def to_markdown(meta: dict, rows: list[dict]) -> str:
    def mib(x):
        return "-" if x is None else f"{x:.0f}"

    lines = [
        f"# Attention benchmark: {meta['device']}",
        "",
        f"{meta['date']}; torch {meta['torch']}, triton {meta['triton']}; mode: {meta['mode']}.",
        "",
        "| size | L | B,H,D | dtype | method | fwd ms | fwd+bwd ms | fwd x SDPA | fwd+bwd x SDPA | peak fwd MiB | peak fwd+bwd MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['L']} | {r['B']},{r['H']},{r['D']} | {r['dtype']} | {r['method']} | "
            f"{r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['fwd_speedup_vs_sdpa']:.2f} | "
            f"{r['fwd_bwd_speedup_vs_sdpa']:.2f} | {mib(r['fwd_peak_mib'])} | {mib(r['fwd_bwd_peak_mib'])} |"
        )
    lines += ["", "Speedups are masked-SDPA time / method time (higher is faster).", "", meta["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run: reference vs masked SDPA, < 1 min")
    parser.add_argument("--out", type=Path, help="folder for the JSON and Markdown results")
    parser.add_argument("--dtypes", default=None, help="comma list, default fp16,bf16 on GPU and fp32 on CPU")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.quick and device.type != "cuda":
        parser.error("the full benchmark needs a CUDA GPU (Triton kernels); use --quick on CPU")
    if device.type == "cpu":
        # One thread: on a small shared CPU, SDPA's and the BLAS thread pools spin against each other
        # and inflate whichever method runs after SDPA by 10-20x (seen on a 2-core machine).
        torch.set_num_threads(1)
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    default = "fp32" if device.type == "cpu" else "fp16,bf16"
    dtypes = [names[d] for d in (args.dtypes or default).split(",")]

    import triton

    meta = dict(
        device=_device_name(device),
        date=datetime.date.today().isoformat(),
        torch=torch.__version__,
        triton=triton.__version__,
        mode="quick (CPU-sized, reference vs masked SDPA)" if args.quick else "full",
        note=(
            "Quick mode measures only the PyTorch reference against masked SDPA on this device; the Triton "
            "kernels, flex_attention and the GPU targets are not measured here (CPU times on a shared machine "
            "are noisy). GPU results are still owed. " + GPU_TARGETS
            if args.quick
            else GPU_TARGETS
        ),
    )
    print(f"device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; {meta['mode']}")
    rows = run(args.quick, device, dtypes)
    markdown = to_markdown(meta, rows)
    print()
    print(markdown)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
        stem = args.out / f"attention-{slug}-{meta['date']}"
        stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown)
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()

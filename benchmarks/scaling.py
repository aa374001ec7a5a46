"""Cost against resolution: training-step time, peak step memory and sampling time per image of every mechanism
at 256, 512 and 1024 px, and the exponent of each against L, the number of tokens.

A small transformer (default depth 2: width 128, 2 heads; the published vocabulary 4096 and 32 latent
channels) on random tokens - speed and memory do not depend on the data - with the published-style scale list
of each resolution (tokenizer f16):

- 256 px: 1 2 3 4 5 6 8 10 13 16, the published VAR-d16..d30 list (L = 680);
- 512 px: 1 2 3 4 6 9 13 18 24 32, the published VAR-d36-512 list (L = 2240);
- 1024 px: 1 2 4 6 8 12 16 20 24 32 40 48 64 (L = 10521). VAR published no 1024 px model; this is the square
  (aspect ratio 1) schedule of its successor Infinity at 1024 px with the same f16 tokenizer grid
  (FoundationVision/Infinity, infinity/utils/dynamic_resolution.py, `ratio2hws[1.000]`): 13 scales to 64x64.

A training step is what `benchmarks/train.py` times (forward, fp32 cross-entropy over all L tokens, backward,
gradient clipping, AdamW), at batch 1. Sampling is `var.sample.generate` for one image with the published
FID setting (cfg 1.5 - a batch of 2 inside -, top-k 900, top-p 0.96), token generation only (the decoder is the
tokenizer's cost, the same for every mechanism). The CPU path is the PyTorch reference of each op (the Triton
kernels need a GPU); note that the neighborhood reference computes the dense [L_k, end_k] logits and masks
them, so on a CPU it costs what full attention costs - its linear cost is the fused kernel's.

Peak memory: every configuration runs in its own process (a fresh heap). After a warm-up step (which creates
AdamW's state) the process returns its free heap to the system (glibc `malloc_trim`), reads its resident set
(VmRSS) and resets its high-water mark (`echo 5 > /proc/self/clear_refs`); the peak is the high-water mark
(VmHWM) after one more step minus that resident set: the physical memory the step itself needs (activations,
gradients, temporaries) on top of the weights and optimizer state. This is what a CPU machine must have free;
`tracemalloc` does not see torch's allocations and `ru_maxrss` cannot be reset within a process.
On CUDA the peak is `torch.cuda.max_memory_allocated` over the step.

A configuration that does not finish within `--timeout` seconds or runs out of `--memory-gib` is recorded as
skipped, with the reason, and left out of the fits.

The exponent of each curve is the least-squares slope of log(cost) against log(L) over the measured
resolutions; `slope_last` is the slope between the two largest. At this small width the per-token parts
(projections, MLP, the 4096-way head) weigh much, so every exponent sits between 1 and the asymptotic one.

Usage::

    python benchmarks/scaling.py --out benchmarks/results/                        # the measurement (results/README.md)
    python benchmarks/scaling.py --resolutions 256 --mechanisms full,lka --repeats 1   # a quick look
    python benchmarks/scaling.py --plot-only benchmarks/results/scaling-<device>-<date>.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
import torch
from _common import (
    MECHANISMS,
    attention_of,
    markdown_table,
    metadata,
    result_base,
    sync,
    timed,
    write_results,
)
from train import make_step

from kernels import ScaleLayout

PATCH_NUMS = {
    32: (1, 2),  # tiny lists for quick checks of the script (not part of the measurement)
    64: (1, 2, 3, 4),
    **_common.PATCH_NUMS,  # the named schedules: 256, 512, 1024 px
}
SETTING = dict(cfg=1.5, top_k=900, top_p=0.96)  # the published FID setting (docs/architecture.md section 8)


def say(msg: str) -> None:
    print(f"[scaling] {msg}", flush=True)


def tokens(resolution: int) -> int:
    return ScaleLayout.of(PATCH_NUMS[resolution]).num_tokens


# -------------------------------------------------------------------------------------------- fits
def fit_power_law(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares fit of log y = log c + k log x: returns (k, c). Needs two distinct x at least."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError(f"a power law needs two distinct x at least, got x={xs}")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("a power law fit needs positive values")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    k = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    return k, math.exp(my - k * mx)


def fits(rows: list[dict], keys: tuple[str, ...] = ("step_s", "peak_mib", "sample_s")) -> list[dict]:
    """Per mechanism and measured quantity: the exponent over all measured L and the slope of the last two."""
    out = []
    for mech in dict.fromkeys(r["mechanism"] for r in rows):
        ok = sorted((r for r in rows if r["mechanism"] == mech and not r.get("skipped")), key=lambda r: r["L"])
        fit = {"mechanism": mech, "resolutions": ",".join(str(r["resolution"]) for r in ok)}
        for key in keys:
            pts = [(r["L"], r[key]) for r in ok if r.get(key)]
            if len(pts) >= 2:
                fit[f"{key}_exponent"] = fit_power_law([x for x, _ in pts], [y for _, y in pts])[0]
                (x0, y0), (x1, y1) = pts[-2:]
                fit[f"{key}_slope_last"] = math.log(y1 / y0) / math.log(x1 / x0)
        out.append(fit)
    return out


# ------------------------------------------------------------------------------------------ worker
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the free heap stays in the resident set
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(mechanism: str, resolution: int, depth: int, repeats: int, device: torch.device) -> dict:
    """One configuration, in this process: step time, the step's peak memory, sampling time per image."""
    from tokenizer import MultiScaleVQVAE, VQVAEConfig
    from var import VAR, VARConfig
    from var.sample import generate

    patch_nums = PATCH_NUMS[resolution]
    L = tokens(resolution)
    torch.manual_seed(0)
    cfg = VARConfig(depth=depth, patch_nums=patch_nums, attention=attention_of(mechanism, depth))
    model = VAR(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    labels = torch.randint(0, cfg.num_classes, (1,), device=device)
    x = torch.randn(1, L - patch_nums[0] ** 2, cfg.c_vae, device=device)
    target = torch.randint(0, cfg.vocab_size, (1, L), device=device)
    step, _ = make_step(model, opt, labels, x, target, "fp32", device)
    step()  # warm-up: AdamW's state, first-touch of the weights
    sync(device)
    # The memory step is also the first timed one (re-touching the trimmed heap adds well under 1% to it).
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        peak_mib, resting_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20, base / 2**20
    else:
        _trim_heap()
        rss = _status_kib("VmRSS")
        if not _reset_peak_rss():
            raise RuntimeError("cannot reset the peak resident set (/proc/self/clear_refs): Linux is needed")
        t0 = time.perf_counter()
        step()
        peak_mib, resting_mib = (_status_kib("VmHWM") - rss) / 1024, rss / 1024
    times = [time.perf_counter() - t0] + [timed(step, device, repeats=1, warmup=0) for _ in range(repeats - 1)]
    step_s = sorted(times)[len(times) // 2]
    model.eval()
    vae = MultiScaleVQVAE(VQVAEConfig(patch_nums=patch_nums, ch=32)).to(device).eval()  # only its quantizer runs

    def sample_one() -> None:
        for _ in generate(model, vae, [0], seed=0, **SETTING):
            pass

    sample_s = timed(sample_one, device, repeats=repeats, warmup=1)
    return dict(
        mechanism=mechanism,
        resolution=resolution,
        L=L,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        step_s=step_s,
        tokens_per_s=L / step_s,
        peak_mib=peak_mib,
        resting_mib=resting_mib,
        sample_s=sample_s,
    )


def worker(args: argparse.Namespace) -> None:
    """`--worker MECH RES`: measure one configuration and print its row as the last line of stdout (JSON)."""
    import resource

    mech, res = args.worker[0], int(args.worker[1])
    device = torch.device(args.device)
    if device.type == "cpu" and args.memory_gib > 0:  # fail an allocation cleanly rather than swap the machine
        limit = _status_kib("VmSize") * 1024 + int(args.memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        row = measure(mech, res, args.depth, args.repeats, device)
    except (MemoryError, torch.OutOfMemoryError) as err:
        row = dict(mechanism=mech, resolution=res, L=tokens(res), skipped=f"out of memory ({args.memory_gib:g} GiB)")
        row["error"] = " ".join(str(err).split())[:200]
    except RuntimeError as err:
        if "allocate" not in str(err):
            raise
        row = dict(mechanism=mech, resolution=res, L=tokens(res), skipped=f"out of memory ({args.memory_gib:g} GiB)")
        row["error"] = " ".join(str(err).split())[:200]
    print(json.dumps(row), flush=True)


def run_config(args: argparse.Namespace, mech: str, res: int) -> dict:
    """Measure one configuration in a fresh process; a timeout or a crash becomes a skipped row."""
    cmd = [sys.executable, __file__, "--worker", mech, str(res), "--depth", str(args.depth)]
    cmd += ["--repeats", str(args.repeats), "--device", args.device, "--memory-gib", str(args.memory_gib)]
    skipped = dict(mechanism=mech, resolution=res, L=tokens(res))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**skipped, "skipped": f"longer than {args.timeout} s"}
    if p.returncode != 0:
        why = "killed (out of memory?)" if p.returncode < 0 else f"failed (exit {p.returncode})"
        tail = " ".join(p.stderr.strip().splitlines()[-1:])[:300]
        return {**skipped, "skipped": why, "error": tail}
    return json.loads(p.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------- plot
def plot(rows: list[dict], fit_rows: list[dict], path: Path, title: str) -> Path | None:
    """Log-log panels (step time, step memory, sampling time) against L, one line per mechanism."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install -e '.[bench]'): no plot; --plot-only JSON draws it later")
        return None
    from scaffold.io import atomic_path

    panels = [
        ("step_s", "training step (s)"),
        ("peak_mib", "peak step memory (MiB)"),
        ("sample_s", "sampling (s/image)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.2))
    by_mech = {f["mechanism"]: f for f in fit_rows}
    Ls = sorted({r["L"] for r in rows})
    for ax, (key, label) in zip(axes, panels):
        measured = sorted((r["L"], r[key]) for r in rows if r.get(key))
        if measured:  # guides: slopes 1 and 2 through the smallest measured point
            (x0, y0), x1 = measured[0], max(Ls)
            for k in (1, 2):
                ax.plot([x0, x1], [y0, y0 * (x1 / x0) ** k], color="0.6", ls=":", lw=1)
                ax.annotate(f"L^{k}", (x1, y0 * (x1 / x0) ** k), fontsize=7, color="0.5", ha="right", va="bottom")
        for mech in dict.fromkeys(r["mechanism"] for r in rows):
            pts = sorted((r["L"], r[key]) for r in rows if r["mechanism"] == mech and r.get(key))
            if not pts:
                continue
            k = by_mech.get(mech, {}).get(f"{key}_exponent")
            name = f"{mech} (L^{k:.2f})" if k is not None else mech
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(Ls, [f"{x}\n{r}px" for x, r in sorted({(r["L"], r["resolution"]) for r in rows})])
        ax.minorticks_off()
        ax.set_xlabel("L (tokens)")
        ax.set_title(label)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------- main
def markdown(meta: dict, rows: list[dict], fit_rows: list[dict], plot_name: str | None) -> str:
    lists = "; ".join(f"{r} px: {' '.join(map(str, PATCH_NUMS[r]))} (L = {tokens(r)})" for r in meta["resolutions"])
    table = [
        {**r, "step ms": r.get("step_s", 0) * 1e3 or None, "sample ms": r.get("sample_s", 0) * 1e3 or None}
        for r in rows
    ]
    lines = [
        "# Cost against resolution",
        "",
        f"{meta['device']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}; depth {meta['depth']} "
        f"(width {64 * meta['depth']}), batch 1, fp32, PyTorch reference ops; scale lists: {lists}. "
        f"Step: forward + backward + AdamW, median of {meta['repeats']}; peak memory: the step's resident-set "
        f"high-water mark over the resting set (weights and optimizer state); sampling: one image, cfg 1.5, "
        f"top-k 900, top-p 0.96, tokens only. Total {meta['total_s'] / 60:.1f} min.",
        "",
        markdown_table(
            table,
            [
                "mechanism",
                "resolution",
                "L",
                "step ms",
                "tokens_per_s",
                "peak_mib",
                "resting_mib",
                "sample ms",
                "skipped",
            ],
        ),
        "",
        "## Exponents against L (least squares on log-log; slope_last: between the two largest resolutions)",
        "",
        markdown_table(
            fit_rows,
            [
                "mechanism",
                "resolutions",
                *("step_s_exponent", "step_s_slope_last", "peak_mib_exponent", "peak_mib_slope_last"),
                *("sample_s_exponent", "sample_s_slope_last"),
            ],
        ),
    ]
    if plot_name:
        lines += ["", f"![cost against L]({plot_name})"]
    return "\n".join(lines)


def _num(v: float) -> str:
    """Three significant digits without an exponent: 0.0123, 4.56, 789, 12345."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def overview_block(data: dict, source: str, page_dir: Path) -> str:
    """The table of benchmarks/results/README.md: per mechanism, each cost at every resolution and its
    exponent in L; the plot, linked relative to `page_dir` (that page's folder)."""
    meta, rows = data["meta"], data["rows"]
    fit = {f["mechanism"]: f for f in meta["fits"]}
    res = meta["resolutions"]
    table = []
    for mech in dict.fromkeys(r["mechanism"] for r in rows):
        at = {r["resolution"]: r for r in rows if r["mechanism"] == mech}
        row = {"mechanism": mech}
        for key, label, scale in (
            ("step_s", "step ms", 1e3),
            ("peak_mib", "step MiB", 1),
            ("sample_s", "sample ms", 1e3),
        ):
            values = [_num(at[r][key] * scale) if at.get(r, {}).get(key) else "skipped" for r in res]
            k = fit.get(mech, {}).get(f"{key}_exponent")
            row[label] = " / ".join(values) + (f" (L^{k:.2f})" if k is not None else "")
        table.append(row)
    Ls = " / ".join(f"{r} px (L = {tokens(r)})" for r in res)
    lines = [
        f"{meta['device']}, {meta['date']}: depth {meta['depth']}, batch 1, fp32, reference ops; at {Ls}; "
        f"exponent of a least-squares fit in L (`{source}`).",
        "",
        markdown_table(table, ["mechanism", "step ms", "step MiB", "sample ms"]),
    ]
    png = Path(__file__).resolve().parents[1] / Path(source).with_suffix(".png")
    if png.is_file():
        link = os.path.relpath(png, page_dir.resolve()).replace(os.sep, "/")
        lines += ["", f"![training step time, memory and sampling time against L]({link})"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", default="256,512,1024")
    p.add_argument("--mechanisms", default=",".join(MECHANISMS))
    p.add_argument("--depth", type=int, default=2, help="blocks (width 64 x depth); default 2")
    p.add_argument("--repeats", type=int, default=2, help="timed steps and samples (median) after a warm-up")
    p.add_argument("--timeout", type=int, default=300, help="seconds one configuration may take (default 300)")
    p.add_argument(
        "--memory-gib", type=float, default=12.0, help="memory one configuration may take on a CPU (default 12)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="results folder (JSON, Markdown and the PNG plot)")
    p.add_argument("--plot-only", type=Path, metavar="JSON", help="draw the plot of a results file and stop")
    p.add_argument("--worker", nargs=2, metavar=("MECHANISM", "RESOLUTION"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.resolutions = [int(r) for r in args.resolutions.split(",")]
    args.mechanisms = args.mechanisms.split(",")
    bad = [r for r in args.resolutions if r not in PATCH_NUMS] + [m for m in args.mechanisms if m not in MECHANISMS]
    if bad:
        p.error(f"unknown {bad}: resolutions {sorted(PATCH_NUMS)}, mechanisms {MECHANISMS}")
    return args


def plot_path(base: Path) -> Path:
    """The plot beside the results: `<base>.png` (`base` without a suffix, as `result_base` gives it)."""
    return base.with_name(base.name + ".png")


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return None
    if args.plot_only:
        data = json.loads(args.plot_only.read_text())
        base = args.plot_only.with_suffix("")
        drawn = plot(data["rows"], data["meta"]["fits"], plot_path(base), data["meta"]["device"])
        say(f"wrote {drawn}" if drawn else "no plot")
        return drawn
    started = time.time()
    rows = []
    configs = [(m, r) for r in args.resolutions for m in args.mechanisms]
    for i, (mech, res) in enumerate(configs, 1):
        say(
            f"{i}/{len(configs)} {mech} at {res} px (L = {tokens(res)}) - {(time.time() - started) / 60:.1f} min so far"
        )
        row = run_config(args, mech, res)
        rows.append(row)
        if row.get("skipped"):
            say(f"  skipped: {row['skipped']} {row.get('error', '')}")
        else:
            say(
                f"  step {row['step_s'] * 1e3:.0f} ms, peak step memory {row['peak_mib']:.0f} MiB, "
                f"sampling {row['sample_s'] * 1e3:.0f} ms/image"
            )
    fit_rows = fits(rows)
    meta = metadata(
        torch.device(args.device),
        depth=args.depth,
        repeats=args.repeats,
        resolutions=args.resolutions,
        patch_nums={r: PATCH_NUMS[r] for r in args.resolutions},
        fits=fit_rows,
        total_s=time.time() - started,
    )
    base = result_base(args.out, "scaling", meta) if args.out else None
    drawn = plot(rows, fit_rows, plot_path(base), meta["device"]) if base else None
    md = markdown(meta, rows, fit_rows, drawn.name if drawn else None)
    print(md)
    say(f"finished in {meta['total_s'] / 60:.1f} min")
    if base:
        write_results(args.out, "scaling", meta, rows, md)
        say(f"wrote {base}.json, {base}.md" + (f" and {drawn}" if drawn else ""))
    return base


if __name__ == "__main__":
    main()

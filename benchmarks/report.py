"""The results overview, benchmarks/results/README.md, generated from benchmarks/results/*.json so that no
number on it is quoted by hand: an index (per kind of results file: what it measures, the script that writes
it, the newest file), the bench table (one line per measured row that carries a ratio, with its device and
date), and from the newest results of `benchmarks/mechanisms.py` and `benchmarks/scaling.py` the mechanism
comparisons (with the sample grids) and the cost against resolution (with the plot). The top-level README
only links to that page.

    python benchmarks/report.py            # print the blocks
    python benchmarks/report.py --write    # replace the blocks of benchmarks/results/README.md between their
                                           # markers: results-index, bench-table, mechanisms-table,
                                           # mechanisms_emoji-table, scaling-table (each required)
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = RESULTS / "README.md"
BEGIN, END = "<!-- bench-table -->", "<!-- /bench-table -->"
INDEX_BEGIN, INDEX_END = "<!-- results-index -->", "<!-- /results-index -->"
# results kinds with a block of their own (<!-- KIND-table --> ... <!-- /KIND-table -->): the script that owns it
BLOCKS = {"mechanisms": "mechanisms", "mechanisms_emoji": "mechanisms", "scaling": "scaling"}
# the index: file pattern, what it measures, the command that writes it
KINDS = [
    ("attention-*.json", "attention kernels, forward and backward, against masked SDPA", "benchmarks/attention.py"),
    ("spatial-*.json", "the lka and gspn ops (ragged depthwise conv, line scan, gates)", "benchmarks/spatial.py"),
    ("sample-quick-*.json", "sampling images/s of every mechanism, depth 2", "benchmarks/sample.py --quick"),
    ("sample-d16-*.json", "VAR-d16 sampling against the published sampler", "benchmarks/sample.py --depth 16"),
    ("train-quick-*.json", "training tokens/s of every mechanism, depth 2", "benchmarks/train.py --quick"),
    ("parity-d16-*.json", "VAR-d16 and VQVAE against the published code", "benchmarks/parity.py"),
    ("mechanisms-*.json", "quality and training cost per mechanism, digits", "benchmarks/mechanisms.py"),
    ("mechanisms_emoji-*.json", "quality and cost per mechanism, 64 px emoji", "benchmarks/mechanisms.py --data emoji"),
    ("scaling-*.json", "step time, memory and sampling time against resolution", "benchmarks/scaling.py"),
    (
        "fast_sampling_quality_*.json",
        "judged quality and time of every fast sampling mode (emoji, digits), with Pareto plots",
        "benchmarks/fast_sampling.py quality",
    ),
    (
        "fast_sampling_speed-*.json",
        "d16 fast sampling speeds at 256, 512, 1024 px against the published sampler",
        "benchmarks/fast_sampling.py speed",
    ),
    ("compile-triton-*.md", "registers, spills, shared memory per compiled kernel", "python -m kernels.compile_check"),
]


def _line(kind: str, meta: dict, row: dict) -> str | None:
    where = f"{meta['device']}, {meta['date'][:10]}"
    if kind == "sample" and "ratio_vs_published" in row:
        precision = row["precision"]
        if row.get("resolved", precision) != precision:
            precision += f" (= {row['resolved']})"
        compiled = f", compiled {row['compile']}" if row.get("compile", "none") != "none" else ""
        what = f"sampling d{meta.get('depth')} `{row['mechanism']}`, batch {row['batch']}, {precision}{compiled}"
        value = (
            f"{row['images_per_s']:.3g} images/s; published code in the same run: "
            f"{row['published_images_per_s']:.3g} ({row['ratio_vs_published']:.2f}x)"
        )
        if row.get("transformer_gemm_share") is not None:
            limit = meta["gemm_gflops"][row["resolved"]]
            value += (
                f"; share of the {row['resolved']} GEMM limit ({limit:.0f} GFLOP/s): transformer "
                f"{row['transformer_gemm_share']:.0%}, decoder {row['decoder_gemm_share']:.0%}"
            )
    elif kind == "parity":
        what = f"VAR-d{meta.get('depth')} and VQVAE vs the published code, fp32 linears on `{row['cpu_gemm']}`"
        value = (
            f"teacher-forcing logits max abs diff {row['logits_max_abs_diff']:.2g} (largest logit "
            f"{row['logits_max_abs']:.2g}); greedy tokens {'identical' if row['greedy_tokens_equal'] else 'DIFFER'}"
            f"; greedy images max abs diff {row['greedy_images_max_abs_diff']:.2g}, "
            f"{row['greedy_uint8_values_differing']:.2%} of 8-bit values one level apart"
        )
    elif kind == "sample":
        what = f"sampling (quick, depth {meta.get('depth')}) `{row['mechanism']}`, batch {row['batch']}"
        value = f"{row['images_per_s']:.3g} images/s"
    elif kind == "train":
        compiled = ", compiled" if row["compile"] else ""
        what = f"training step (quick, depth {meta.get('depth')}) `{row['mechanism']}`{compiled}"
        value = f"{row['tokens_per_s']:.3g} tokens/s ({row['vs_full']:.2f}x full)"
    elif kind == "attention":
        what = f"attention {row['size']} `{row['method']}` {row['dtype']} fwd+bwd"
        value = f"{row['fwd_bwd_ms']:.3g} ms ({row['fwd_bwd_speedup_vs_sdpa']:.2f}x masked SDPA)"
    elif kind == "spatial":
        what = f"`{row['op']}` {row['px']} px {row['shape']} {row['backend']} {row['mode']}"
        value = f"{row['ms']:.3g} ms"
    else:
        return None
    return f"| {what} | {value} | {where} |"


def table() -> str:
    lines = ["| what | measured | device, date |", "| --- | --- | --- |"]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        kind = path.name.split("-")[0]
        lines += [line for row in data["rows"] if (line := _line(kind, data["meta"], row))]
    return "\n".join(lines)


def newest(kind: str, results: Path = RESULTS) -> Path | None:
    """The most recent `<kind>-*.json` of `results` (by the date it records, then by name)."""
    found = [(json.loads(p.read_text())["meta"]["date"], p.name, p) for p in results.glob(f"{kind}-*.json")]
    return max(found)[2] if found else None


def index(results: Path = RESULTS) -> str:
    """One line per kind of results file: what it measures, the command that writes it, and its newest
    files (those of the latest date recorded: a JSON file's `meta.date`, else the date in the name)."""
    lines = ["| results | measures | written by | newest |", "| --- | --- | --- | --- |"]
    for pattern, what, script in KINDS:
        dated = {}
        for p in results.glob(pattern):
            date = json.loads(p.read_text())["meta"]["date"] if p.suffix == ".json" else p.stem
            dated[p.with_suffix(".md").name] = re.findall(r"\d{4}-\d{2}-\d{2}", date)[-1]
        last = max(dated.values(), default=None)
        newest_files = ", ".join(f"[{md}]({md})" for md in sorted(dated) if dated[md] == last) or "none yet"
        lines.append(f"| `{pattern}` | {what} | `{script}` | {newest_files} |")
    return "\n".join(lines)


def kind_block(kind: str, results: Path = RESULTS) -> str | None:
    """The block of `kind` (one of `BLOCKS`) from its newest results, None without any; its links are
    relative to `results`, the folder of the overview page."""
    path = newest(kind, results)
    if path is None:
        return None
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)  # the benchmark scripts own their tables
    md = path.with_suffix(".md").resolve()
    source = md.relative_to(ROOT).as_posix() if md.is_relative_to(ROOT) else md.as_posix()
    return importlib.import_module(BLOCKS[kind]).overview_block(json.loads(path.read_text()), source, results)


def _replace(text: str, begin: str, end: str, body: str) -> tuple[str, int]:
    block = f"{begin}\n{body}\n{end}"
    return re.subn(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def write_results_page(page: Path = PAGE, results: Path = RESULTS) -> None:
    """Replace every generated block of `page` (the overview of `results`); a missing marker is an error."""
    text = page.read_text()
    blocks = [(INDEX_BEGIN, INDEX_END, index(results)), (BEGIN, END, table())]
    for kind in BLOCKS:
        blocks.append((f"<!-- {kind}-table -->", f"<!-- /{kind}-table -->", kind_block(kind, results)))
    for begin, end, body in blocks:
        if body is None:  # no results of that kind yet: the block keeps what it holds
            continue
        text, n = _replace(text, begin, end, body)
        if n != 1:
            raise SystemExit(f"{page}: expected one {begin} ... {end} block, found {n}")
    page.write_text(text)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite the blocks of benchmarks/results/README.md")
    if p.parse_args().write:
        write_results_page()
    else:
        print(f"{INDEX_BEGIN}\n{index()}\n{INDEX_END}\n\n{BEGIN}\n{table()}\n{END}")
        for kind in BLOCKS:
            body = kind_block(kind)
            if body is not None:
                print(f"\n<!-- {kind}-table -->\n{body}\n<!-- /{kind}-table -->")

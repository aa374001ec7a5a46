"""The README's benchmark table, generated from benchmarks/results/*.json (one line per measured row
that carries a ratio, with its device and date), so that the README never quotes a number by hand.

    python benchmarks/report.py            # print the table
    python benchmarks/report.py --write    # replace the block between the README's bench-table markers
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- bench-table -->", "<!-- /bench-table -->"


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


def write_readme(readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    block = f"{BEGIN}\n{table()}\n{END}"
    new, n = re.subn(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{readme}: expected one {BEGIN} ... {END} block, found {n}")
    readme.write_text(new)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite the README's bench-table block")
    if p.parse_args().write:
        write_readme()
    else:
        print(table())

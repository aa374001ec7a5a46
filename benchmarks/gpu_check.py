"""One command for a GPU: the compiled-kernel tests, then the kernel and sampling benchmarks.

On a machine with a CUDA GPU, from the repository root::

    python benchmarks/gpu_check.py --published ../VAR          # ~10 minutes on one H100-class GPU

Steps, each with its own time budget (a step past its budget is stopped and recorded as such, and
the next one starts, so the whole run stays within the sum of the budgets, 580 s):

1. ``TRITON_INTERPRET=0 pytest -m gpu``: every op forward and backward compiled on CUDA in fp32
   (IEEE and TF32), fp16 and bf16 against a float64 reference, and the mechanism modules (150 s);
2. ``benchmarks/attention.py``: the fused attention kernels against masked SDPA and FlexAttention (90 s);
3. ``benchmarks/spatial.py``: ragged depthwise conv against the per-scale cuDNN loop, GSPN scan (70 s);
4. ``benchmarks/sample.py``: d16 sampling at batch 1 and 64 in bf16, eager and with the per-scale step
   captured by CUDA graphs (``--compile reduce-overhead``: static key/value caches, one graph per
   scale), against the published sampler of the checkout given with ``--published`` (150 s);
5. ``benchmarks/fast_sampling.py speed``: d16 at 256, 512 and 1024 px, every named speed (exact, fast,
   faster) in fp32 and "auto", against the published sampler (120 s).

The benchmarks write their JSON and Markdown under ``--out`` (default ``benchmarks/results/``);
this script adds ``gpu-check-<device>-<date>.json`` with the device, the date, the versions and, per
step, the command, exit status, seconds and whether it ran out of time, plus pytest's counts.
It exits non-zero when any step failed or ran out of time. Commit the results it wrote.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def steps(published: Path, out: Path, junit: Path) -> list[tuple[str, list[str], int]]:
    py = sys.executable
    return [
        (
            "pytest -m gpu",
            [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
            150,
        ),
        ("attention benchmark", [py, "benchmarks/attention.py", "--out", str(out)], 90),
        ("spatial benchmark", [py, "benchmarks/spatial.py", "--out", str(out)], 70),
        (
            "d16 sampling vs published",
            [
                *(py, "benchmarks/sample.py", "--depth", "16", "--batch-sizes", "1,64", "--mechanisms", "full"),
                *("--precisions", "bf16", "--compile", "none,reduce-overhead", "--backends", "torch"),
                *("--compare-published", str(published), "--out", str(out)),
            ],
            150,
        ),
        (
            "fast sampling modes vs published",
            [
                *(py, "benchmarks/fast_sampling.py", "speed", "--auto", "--repeats", "5"),
                *("--compare-published", str(published), "--out", str(out)),
            ],
            120,
        ),
    ]


def _run(cmd: list[str], budget: int, env: dict) -> dict:
    start = time.perf_counter()
    print(f"$ {' '.join(cmd)}   (budget {budget} s)", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        rc, timed_out = proc.wait(timeout=budget), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the step's whole process group: compile workers included
        rc, timed_out = proc.wait(), True
    return dict(returncode=rc, seconds=round(time.perf_counter() - start, 1), timed_out=timed_out)


def _pytest_counts(junit: Path) -> dict:
    if not junit.exists():
        return {}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--published", type=Path, required=True, help="a checkout of the published VAR code")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()

    import torch
    import triton

    if not torch.cuda.is_available():
        p.error("no CUDA device: this script is for a GPU machine (the CPU checks are the default test run)")
    if not (args.published / "models").is_dir():
        p.error(f"--published {args.published}: not a checkout of the published VAR code (no models/ folder)")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0)
    meta = dict(
        device=device,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda,
    )
    env = dict(
        os.environ, TRITON_INTERPRET="0", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("VAR_KERNEL_BACKEND", None)
    junit = args.out / ".gpu-check-pytest.xml"
    rows = []
    for name, cmd, budget in steps(args.published.resolve(), args.out.resolve(), junit):
        row = dict(step=name, command=" ".join(cmd), budget_s=budget, **_run(cmd, budget, env))
        if name.startswith("pytest"):
            row.update(_pytest_counts(junit))
            junit.unlink(missing_ok=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    path = args.out / f"gpu-check-{slug}-{meta['date'][:10]}.json"
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    print(f"wrote {path}")
    failed = [r["step"] for r in rows if r["returncode"] != 0 or r["timed_out"]]
    if failed:
        print(f"failed or out of time: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-step throughput (tokens/s) and peak memory per mechanism, eager and with torch.compile.

A step is what `var train` does per batch: teacher-forcing forward with fp32 logits, cross-entropy over
all L tokens, backward, gradient clipping and an AdamW update, on random token inputs (speed does not
depend on the data). Ratios are against `full` with the same backend and compile setting, in the same run.

Usage::

    python benchmarks/train.py --quick --out benchmarks/results/     # CPU: width 128, < 1 minute
    python benchmarks/train.py --depth 16 --batch-size 16 --precision bf16 --compile both --out benchmarks/results/
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

import _common
import torch
import torch.nn.functional as F
from _common import (
    MECHANISMS,
    attention_of,
    metadata,
    peak_mib,
    publish,
    reset_peak,
    timed,
)

from kernels import ENV_VAR, ScaleLayout
from scaffold.precision import autocast
from var import VAR, preset

PATCH_NUMS = {px: pns for px, pns in _common.PATCH_NUMS.items() if px <= 512}  # the published resolutions


def make_step(model: VAR, opt: torch.optim.Optimizer, labels, x_BLCv, target_BL, precision: str, device):
    def forward_loss(labels, x_BLCv, target_BL):
        with autocast(device, precision):
            logits = model(labels, x_BLCv)
        return F.cross_entropy(logits.float().flatten(0, 1), target_BL.flatten())

    def step(fwd=forward_loss):
        loss = fwd(labels, x_BLCv, target_BL)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        return loss

    return step, forward_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized: depth 2 (width 128), batch 2, eager only")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--resolution", type=int, default=256, choices=sorted(PATCH_NUMS))
    p.add_argument("--mechanisms", default=",".join(MECHANISMS))
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "torch"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--compile", default="off", choices=("off", "on", "both"))
    p.add_argument("--steps", type=int, default=3, help="timed steps (median) after one warm-up step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.quick:
        args.depth, args.batch_size, args.compile, args.steps = 2, 2, "off", 2
    device = torch.device(args.device)
    os.environ[ENV_VAR] = args.backend
    patch_nums = PATCH_NUMS[args.resolution]
    L = ScaleLayout.of(patch_nums).num_tokens
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows, base = [], {}
    for mech in args.mechanisms.split(","):
        for compiled in compiles:
            torch.manual_seed(0)
            model = (
                VAR(preset("d16", depth=args.depth, patch_nums=patch_nums, attention=attention_of(mech, args.depth)))
                .to(device)
                .train()
            )
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
            B, cfg = args.batch_size, model.config
            labels = torch.randint(0, cfg.num_classes, (B,), device=device)
            x = torch.randn(B, L - patch_nums[0] ** 2, cfg.c_vae, device=device)
            target = torch.randint(0, cfg.vocab_size, (B, L), device=device)
            step, fwd = make_step(model, opt, labels, x, target, args.precision, device)
            if compiled:
                step = partial(step, fwd=torch.compile(fwd))
            reset_peak(device)
            t = timed(step, device, repeats=args.steps, warmup=1)
            key = compiled
            row = dict(
                mechanism=mech,
                compile=compiled,
                params_m=sum(q.numel() for q in model.parameters()) / 1e6,
                tokens_per_s=B * L / t,
                step_ms=t * 1e3,
                peak_mib=peak_mib(device),
            )
            if mech == "full":
                base[key] = row["tokens_per_s"]
            row["vs_full"] = row["tokens_per_s"] / base[key] if key in base else None
            rows.append(row)
            print(row, flush=True)
            del model, opt
    meta = metadata(
        device,
        depth=args.depth,
        batch=args.batch_size,
        resolution=args.resolution,
        L=L,
        backend=args.backend,
        precision=args.precision,
        quick=args.quick,
    )
    cols = ["mechanism", "compile", "params_m", "tokens_per_s", "step_ms", "peak_mib", "vs_full"]
    details = (
        f"depth {args.depth}, batch {args.batch_size}, {args.resolution} px (L = {L}), backend {args.backend}, "
        f"{args.precision}"
    )
    publish(args, "train", "Training step", details, meta, rows, cols, device)


if __name__ == "__main__":
    main()

"""`var demo`: the whole pipeline on a CPU, then the web UI: the bundled digits in minutes (the default),
or the downloaded 64 px emoji (`--data emoji`, 7 scales) in under half an hour. The stages are
:mod:`var.pipeline`'s; this module runs them in order, prints the summary and serves the model.

Stages (each reused when a previous `var demo` finished it in the same work folder), with the presets
configs/<stage>/<data>.yaml:

1. train the tokenizer (configs/tokenizer/<data>.yaml)  -> DIR/tokenizer
2. tokenize the training images once (configs/tokens/)  -> DIR/runs/tokens
3. train the transformer (configs/var/<data>.yaml)      -> DIR/model (what `var sample` and `var app` take)
   with `--mechanism` in every block (`hybrid`: the hybrid preset's per-block list at the model's depth)
4. emoji: train the judge on the training emoji          -> DIR/runs/judge.safetensors
5. sample a grid, one row per class, and judge it       -> DIR/samples.png
6. serve the web UI on DIR/model (unless --no-app)

A stage is finished when its `DIR/runs/<stage>.done.json` exists (written atomically after the stage);
it records the stage's time and numbers, so a second run prints the same summary without retraining.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scaffold.io import remove_stale_temporaries
from scaffold.lock import folder_lock
from var.pipeline import (
    DATASETS,
    PipelineError,
    PipelineOptions,
    check_data,
    mechanisms,
    say,
    stage_emoji_samples,
    stage_judge,
    stage_samples,
    stage_tokenizer,
    stage_tokens,
    stage_transformer,
    write_json,
)

__all__ = ["add_arguments", "run", "run_demo"]


def run_demo(opts: PipelineOptions) -> dict:
    """Every stage in order, under a lock on the work folder; prints and returns the summary (also written
    to WORKDIR/summary.json)."""
    if opts.data not in DATASETS:
        raise PipelineError(f"unknown demo data {opts.data!r}; choose one of {', '.join(DATASETS)}")
    if opts.mechanism not in mechanisms():
        raise PipelineError(f"unknown mechanism {opts.mechanism!r}; choose one of {', '.join(mechanisms())}")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    with folder_lock(opts.workdir):
        return _run_locked(opts)


def _run_locked(opts: PipelineOptions) -> dict:
    (opts.workdir / "runs").mkdir(exist_ok=True)
    check_data(opts)
    remove_stale_temporaries(opts.workdir)  # a `.model.tmp-...` copy that a killed demo left (publish_folder)
    t0 = time.time()
    tok = stage_tokenizer(opts)
    say(
        f"tokenizer: {tok['seconds']:.0f} s, held-out PSNR {tok['psnr_db']:.2f} dB, codebook used "
        f"{tok['codebook_used']:.0%} (per scale {', '.join(f'{u:.0%}' for u in tok['codebook_used_per_scale'])})"
    )
    cache = stage_tokens(opts)
    var = stage_transformer(opts, cache)
    train_loss = "n/a" if var["train_loss"] is None else f"{var['train_loss']:.3f}"
    say(
        f"transformer ({var['mechanism']}): {var['seconds']:.0f} s, training loss {train_loss}, held-out loss "
        f"{var['heldout_loss']:.3f}"
        + (" (the tiny model memorises the 1,617 training digits)" if opts.data == "digits" else "")
    )
    if opts.data == "emoji":
        from var.export import load_model

        judge = stage_judge(opts, load_model(opts.workdir / "model").vae.image_size)
        say(
            f"judge: {judge['seconds']:.0f} s, balanced accuracy on held-out real emoji {judge['heldout_accuracy']:.1%}"
        )
        smp = stage_emoji_samples(opts)
        per = "; ".join(f"{c} {a:.0%}" for c, a in smp["per_class"].items())
        say(f"samples: {smp['images']} in {smp['seconds']:.1f} s; per category {per}")
        for line in smp["report"]:
            say(line)
        say(
            f"grid: {smp['grid']} (one row per category); model: {opts.workdir / 'model'}; total {time.time() - t0:.0f} s this run"
        )
        summary = {
            "data": opts.data,
            "tokenizer": tok,
            "transformer": var,
            "judge": judge,
            "samples": smp,
            "seconds": time.time() - t0,
        }
        write_json(summary, opts.workdir / "summary.json")
        return summary
    smp = stage_samples(opts)
    per = " ".join(f"{c}:{a:.0%}" for c, a in sorted(smp["per_class"].items()))
    say(
        f"samples: {smp['images']} in {smp['seconds']:.1f} s; judged accuracy {smp['accuracy']:.1%} "
        f"(lowest class {smp['min_class_accuracy']:.1%}; {per}); Frechet distance {smp['frechet']:.2f}"
    )
    say(
        f"grid: {smp['grid']} (one row per class); model: {opts.workdir / 'model'}; "
        f"total {time.time() - t0:.0f} s this run"
    )
    summary = {"data": opts.data, "tokenizer": tok, "transformer": var, "samples": smp, "seconds": time.time() - t0}
    write_json(summary, opts.workdir / "summary.json")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        choices=DATASETS,
        default="digits",
        help="digits (bundled, 16 px, minutes; the default) or emoji (64 px colour, 7 scales, downloaded once, ~25 min)",
    )
    parser.add_argument(
        "--data-root", help="emoji: an unpacked emoji-datasource-google package instead of the downloaded cache"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where everything goes (default ./demo, or ./demo-emoji with --data emoji)"
    )
    parser.add_argument(
        "--mechanism",
        default="full",
        help="token mixer of the transformer's blocks: full (default), neighborhood, external, lka, gspn or hybrid",
    )
    parser.add_argument("--no-app", action="store_true", help="stop after the sample grid")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth-file", metavar="FILE", help="logins for the web UI, one user:password a line")
    parser.add_argument("--public", action="store_true", help="serve a non-loopback --host without a login")
    parser.add_argument("--tokenizer-steps", type=int, help="override the preset's tokenizer steps (quick runs)")
    parser.add_argument("--var-steps", type=int, help="override the preset's transformer steps (quick runs)")
    parser.add_argument("--judge-steps", type=int, default=600, help="emoji: the judge's training steps (quick runs)")
    parser.add_argument(
        "--samples-per-class",
        type=int,
        default=20,
        help="samples judged per class (default 20; the emoji take at least as many as a category has held-out images)",
    )


def run(args: argparse.Namespace) -> int:
    from app.serve import check_access, parse_logins

    logins = parse_logins([], args.auth_file)
    if not args.no_app:  # before the training, not after it
        check_access(args.host, logins, args.public)
    passed = ("data", "data_root", "mechanism", "tokenizer_steps", "var_steps", "samples_per_class", "judge_steps")
    opts = PipelineOptions(
        workdir=args.workdir or Path("demo" if args.data == "digits" else f"demo-{args.data}"),
        **{name: getattr(args, name) for name in passed},  # the flags of the same names
    )
    run_demo(opts)
    if not args.no_app:
        from app.serve import serve

        say(f"web UI on http://{args.host}:{args.port} (Ctrl-C to stop)")
        serve([str(opts.workdir / "model")], host=args.host, port=args.port, auth=logins, public=args.public)
    return 0

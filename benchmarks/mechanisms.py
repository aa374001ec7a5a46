"""Which mechanism? Image quality and cost of every mechanism on the bundled digits or on the emoji
(`--data emoji`: 64 px, 7 scales up to 8x8, where the largest scales are wider than the local windows), at
equal steps and at equal wall time.

The digits transformer of `var demo` (configs/var/digits.yaml: depth 2, width 128) is trained once per
mechanism and seed - `full`, `neighborhood` (kernel_size 3, see below), `external`, `lka`, `gspn` and the
`hybrid` preset (`var.hybrid_attention`: lka then full at depth 2) - on one tokenizer and token cache
(`var demo`'s stages 1 and 2, reused from `--workdir` when a demo or an earlier run made them), with the same
steps, seed and data order. For each run:

- judged accuracy (mean and lowest class) and the Frechet distance in the judge's feature space
  (`var.digits_eval`), over `--samples-per-class` samples of every digit;
- held-out loss (teacher-forced cross-entropy on the 180 held-out digits);
- memorisation: the nearest-training-image distance of the samples against that of the real held-out
  digits (`nn_ratio` < 1: samples sit closer to the training set than new digits do), and the share of
  samples whose 30 tokens are exactly those of a training digit;
- training wall time (the whole `train_var`: start-up, checkpoint and export included), tokens/s of the
  training loop (from the run's log, start-up excluded), sampling images/s (one batch, decoder included).

Equal wall time: every mechanism also trains for the step count that fits in the time `full` needed for its
`--steps` steps - steps x (its tokens/s / full's tokens/s, loop rates of the same seed) - with the learning-rate
schedule sized to those steps, as a user with that time budget would run it. Where that count is within
`--equal-time-tolerance` of `--steps` (timing noise), the equal-step run stands for it.

Neighborhood attention uses kernel_size 3 here (the digits preset's `attention_options`): the largest scale of
the digits is 4x4, and a window of 5 or more covers every scale - neighborhood attention is then exactly full
attention (docs/architecture.md section 7.2), as the demo with the d16 presets' 7 showed (the same digits to the pixel).

`--profile` adds where a training step's time goes per mechanism: torch.profiler's top operators (self CPU
time) over a few steps of the model alone (forward, loss, backward, AdamW).

On the emoji (`--data emoji`) the transformer is configs/var/emoji.yaml (depth 4, neighborhood window 5x5, so
local on the 6x6 and 8x8 scales), the tokenizer and cache are `var demo --data emoji`'s (reused from a demo's
`--workdir`), and each run is judged as the demo judges it (`var.emoji_eval`): balanced category accuracy
and its ratio to the judge's on held-out real emoji, the class-conditional Frechet distance with its floor
and ceiling, and the copy check.

A run is finished when its folder holds result.json; an interrupted run is trained again from scratch (its
time would be wrong), so rerunning the same command resumes after the last finished run.

Usage::

    python benchmarks/mechanisms.py --out benchmarks/results/ --profile        # the measurement (results/README.md)
    python benchmarks/mechanisms.py --workdir demo --out benchmarks/results/   # reuse a `var demo` folder
    python benchmarks/mechanisms.py --steps 20 --mechanisms full,lka --samples-per-class 2 --tokenizer-steps 20
    python benchmarks/mechanisms.py --data emoji --workdir demo-emoji --steps 400 --seeds 0,1 --no-equal-time \
        --out benchmarks/results/ --profile                                      # on the emoji
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import MECHANISMS, ROOT, markdown_table, metadata, timed, write_results

from kernels import ScaleLayout
from scaffold.io import write_atomic
from var.pipeline import (
    ClassSamples,
    PipelineOptions,
    attention_options_used,
    batched,
    emoji_sample_counts,
    heldout_loss,
    load_datasets,
    load_emoji_judge,
    sample_classes,
    save_grid,
    stage_judge,
    stage_tokenizer,
    stage_tokens,
    transformer_config,
)


def say(msg: str) -> None:
    print(f"[mechanisms] {msg}", flush=True)


# ------------------------------------------------------------------------------------ memorisation
@dataclass
class Reference:
    """What the samples are compared with: the tokenizer's reconstructions of the training and held-out
    digits (a sample that copies a training digit's tokens decodes to exactly that digit's reconstruction),
    the training digits' token sequences, and the held-out digits' nearest-training distances."""

    train_rec: torch.Tensor  # [N, 768] in [0, 1]
    train_tokens: set[tuple[int, ...]]
    heldout_nn: torch.Tensor  # [M] RMS pixel distance of each held-out reconstruction to its nearest training one
    heldout_copies: float  # share of held-out digits whose tokens are a training digit's


def nearest_distance(a_NX: torch.Tensor, b_MX: torch.Tensor) -> torch.Tensor:
    """RMS pixel difference (images in [0, 1]) of every row of `a` to its nearest row of `b`, [N]."""
    return torch.cdist(a_NX.double(), b_MX.double()).min(dim=1).values / math.sqrt(a_NX.shape[1])


def token_rows(tokens: list[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row) for row in torch.cat(tokens, dim=1).tolist()]


@torch.no_grad()
def make_reference(tokenizer_dir: Path) -> Reference:
    from tokenizer import DigitsDataset, load_tokenizer

    vae = load_tokenizer(tokenizer_dir)
    train, val = (DigitsDataset(split, image_size=vae.image_size).images for split in ("train", "val"))
    train_idx, val_idx = vae.img_to_idx(train), vae.img_to_idx(val)
    train_rec = ((vae.idx_to_img(train_idx) + 1) / 2).flatten(1)
    val_rec = ((vae.idx_to_img(val_idx) + 1) / 2).flatten(1)
    train_tokens = set(token_rows(train_idx))
    copies = sum(t in train_tokens for t in token_rows(val_idx)) / len(val)
    return Reference(train_rec, train_tokens, nearest_distance(val_rec, train_rec), copies)


def memorisation(images: torch.Tensor, tokens: list[torch.Tensor], ref: Reference) -> dict:
    nn = nearest_distance(images.flatten(1), ref.train_rec)
    return {
        "nn_distance": nn.median().item(),
        "nn_ratio": (nn.median() / ref.heldout_nn.median()).item(),
        "exact_copies": sum(t in ref.train_tokens for t in token_rows(tokens)) / len(images),
    }


# ------------------------------------------------------------------------------------------ a run
LOOP_RATE = "train/device/items_per_sec"  # tokens/s: the transformer training counts its items in tokens


def loop_tokens_per_s(run_dir: Path) -> float | None:
    """Tokens/s of the training loop alone: the harmonic mean of the rates the run logged (each over the
    same number of steps, so this is total tokens over total time); None if it logged none. The rate is
    `ThroughputMonitor`'s tokens/s of the one device (`scaffold.loggers.throughput_monitor`)."""
    import csv

    logs = sorted(run_dir.glob("logs/*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return None
    with logs[-1].open() as f:
        rates = [float(r[LOOP_RATE]) for r in csv.DictReader(f) if r.get(LOOP_RATE)]
    return len(rates) / sum(1 / r for r in rates) if rates else None


class DigitsHarness:
    """The digits: sampled `--samples-per-class` per digit, judged by `var.digits_eval`'s judge."""

    data = "digits"
    columns = ("judged", "lowest class", "Frechet", "held-out loss", "NN ratio", "exact copies")

    def __init__(self, args: argparse.Namespace, opts: PipelineOptions):
        from var.digits_eval import load_judge

        self.args = args
        self.ref = make_reference(opts.workdir / "tokenizer")
        self.judge = load_judge(16)

    def describe(self) -> str:
        return "the digits transformer (depth 2, width 128, batch 64, 30 tokens an image)"

    def reference(self) -> dict:
        """What the table's memorisation figures are relative to."""
        return {"heldout_nn_median": self.ref.heldout_nn.median().item(), "heldout_copies": self.ref.heldout_copies}

    def evaluate(self, m, seed: int) -> tuple[dict, ClassSamples]:
        from var.digits_eval import judge_samples

        smp = sample_classes(m, self.args.samples_per_class, seed)
        report = judge_samples(smp.images, smp.labels, self.judge)
        row = {
            "accuracy": report.accuracy,
            "min_class_accuracy": report.min_class_accuracy,
            "frechet": report.frechet,
            **memorisation(smp.images, smp.tokens, self.ref),
        }
        return row, smp

    def grid(self, smp: ClassSamples, path: Path) -> Path:
        n = self.args.samples_per_class
        return save_grid(smp.images, n, self.args.grid_columns, path, 16, grayscale=True)


class EmojiHarness:
    """The emoji: at least as many samples per category as it has held-out emoji, judged as `var demo --data
    emoji` judges them (its judge, trained on the training emoji, reused from the work folder)."""

    data = "emoji"
    columns = ("judged", "vs real", "lowest class", "Frechet", "position", "held-out loss", "NN ratio", "exact copies")

    def __init__(self, args: argparse.Namespace, opts: PipelineOptions):
        from tokenizer import load_tokenizer

        self.args, self.opts = args, opts
        vae = load_tokenizer(opts.workdir / "tokenizer")
        self.train, self.val = load_datasets(opts, vae.image_size)
        judge = stage_judge(opts, vae.image_size)
        say(f"judge: balanced accuracy on held-out real emoji {judge['heldout_accuracy']:.1%}")
        self.judge = load_emoji_judge(opts, len(self.train.class_names), vae.image_size)
        with torch.no_grad():
            self.train_rec = (batched(vae.reconstruct, self.train.images) + 1) / 2
            self.val_rec = (batched(vae.reconstruct, self.val.images) + 1) / 2
            train_tokens = set(token_rows(batched(vae.img_to_idx, self.train.images)))
            val_tokens = token_rows(batched(vae.img_to_idx, self.val.images))
        self.train_tokens = train_tokens
        self.heldout_copies = sum(t in train_tokens for t in val_tokens) / len(val_tokens)
        self.counts = emoji_sample_counts(self.val.labels, len(self.train.class_names), args.samples_per_class)
        self.L = len(val_tokens[0])

    def describe(self) -> str:
        return (
            f"the emoji transformer (configs/var/emoji.yaml: depth 4, width 256, batch 64, {self.L} tokens an "
            f"image, scales up to 8x8), {sum(self.counts)} samples judged per run"
        )

    def reference(self) -> dict:
        """What the table's memorisation and accuracy figures are relative to."""
        from var.emoji_eval import balanced_accuracy, nearest_distance

        with torch.no_grad():
            real, _ = balanced_accuracy(self.judge(self.val.images).argmax(1), self.val.labels)
            nn = nearest_distance(self.val_rec.flatten(1), self.train_rec.flatten(1))
        return {"heldout_nn_median": nn.median().item(), "heldout_copies": self.heldout_copies, "real_accuracy": real}

    def evaluate(self, m, seed: int) -> tuple[dict, ClassSamples]:
        from var.emoji_eval import judge_emoji

        smp = sample_classes(m, self.counts, seed)
        t, v = self.train, self.val
        report = judge_emoji(
            self.judge, smp.images, smp.labels, t.images, t.labels, v.images, v.labels, self.train_rec,
            self.val_rec, seed=seed, class_names=t.class_names,
        )  # fmt: skip
        row = {
            "accuracy": report.accuracy,
            "real_accuracy": report.real_accuracy,
            "accuracy_ratio": report.accuracy_ratio,
            "min_class_accuracy": min(report.per_class.values()),
            "frechet": report.frechet,
            "frechet_floor": report.frechet_floor,
            "frechet_ceiling": report.frechet_ceiling,
            "frechet_position": report.frechet_position,
            "nn_distance": report.nn_distance,
            "nn_ratio": report.nn_ratio,
            "exact_copies": sum(r in self.train_tokens for r in token_rows(smp.tokens)) / len(smp.labels),
        }
        return row, smp

    def grid(self, smp: ClassSamples, path: Path) -> Path:
        G = self.args.grid_columns
        return save_grid(smp.first(G), G, G, path, tile_px=64, colors=128)


HARNESSES = {"digits": DigitsHarness, "emoji": EmojiHarness}


@dataclass
class Bench:
    args: argparse.Namespace
    tokenizer: Path
    cache: Path
    harness: DigitsHarness | EmojiHarness
    grids: Path
    started: float
    done: int = 0
    total: int = 0


def run_one(b: Bench, mechanism: str, steps: int, seed: int, budget: str) -> dict:
    """Train, sample and judge one (mechanism, steps, seed); the result is kept in the run's folder."""
    from var.export import load_model
    from var.train import train_var

    run_dir = b.args.workdir / "bench" / f"{mechanism}-seed{seed}-{steps}steps"
    result_file = run_dir / "result.json"
    b.done += 1
    head = f"{b.done}/{b.total} {mechanism}, seed {seed}, {steps} steps ({budget})"
    if result_file.is_file():
        say(f"{head}: reusing {result_file}")
        return json.loads(result_file.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short: its time would be wrong, train it again
    extra = [f"seed={seed}", "resume=false", "trainer.progress_bar=false"]  # a fresh run, no bar
    cfg = transformer_config(b.tokenizer, b.cache, run_dir, mechanism, steps, extra, data=b.args.data)
    say(f"{head}: training (blocks {cfg.model.block_attention()}) - {(time.time() - b.started) / 60:.1f} min so far")
    t0 = time.perf_counter()
    model_dir = train_var(cfg)
    train_s = time.perf_counter() - t0
    tokens = steps * cfg.batch_size * ScaleLayout.of(cfg.model.patch_nums).num_tokens
    m = load_model(model_dir)
    judged, smp = b.harness.evaluate(m, seed)
    row = {
        "mechanism": mechanism,
        "budget": budget,
        "seed": seed,
        "steps": steps,
        "attention": cfg.model.block_attention(),
        "attention_options": attention_options_used(cfg.model),
        "params_m": sum(p.numel() for p in m.model.parameters()) / 1e6,
        "train_s": train_s,
        "tokens_per_s": loop_tokens_per_s(run_dir) or tokens / train_s,
        "heldout_loss": heldout_loss(model_dir, PipelineOptions(b.args.workdir, data=b.args.data)),
        **judged,
        "sample_images_per_s": len(smp.labels) / smp.seconds,
        "images": len(smp.labels),
        "wall_s": time.perf_counter() - t0,  # training, export, held-out loss, sampling and judging
    }
    if budget == "steps" and seed == b.args.seeds[0]:
        grid = b.harness.grid(smp, b.grids / f"{mechanism}.png")
        row["grid"] = grid.resolve().relative_to(ROOT).as_posix() if grid.resolve().is_relative_to(ROOT) else str(grid)
    write_atomic(result_file, json.dumps(row, indent=2))
    extra = f" ({row['accuracy_ratio']:.2f}x real)" if "accuracy_ratio" in row else ""
    say(
        f"{head}: {train_s:.0f} s ({row['tokens_per_s']:.0f} tokens/s), held-out loss {row['heldout_loss']:.3f}, "
        f"judged {row['accuracy']:.1%}{extra} (lowest class {row['min_class_accuracy']:.0%}), Frechet "
        f"{row['frechet']:.2f}, NN ratio {row['nn_ratio']:.2f}, exact copies {row['exact_copies']:.0%}"
    )
    return row


def equal_time_steps(steps: int, tokens_per_s: float, full_tokens_per_s: float) -> int:
    """The steps that fit in the time `full` took for `steps` steps, at this mechanism's loop rate."""
    return max(1, round(steps * tokens_per_s / full_tokens_per_s))


# --------------------------------------------------------------------------------------- profiling
def profile_mechanism(b: Bench, mechanism: str, steps: int = 3, top: int = 10) -> dict:
    """Where a training step's time goes: the step of the model alone (one batch of the token cache:
    forward, cross-entropy, backward, gradient clipping, AdamW; median of `steps`), the share of it that the
    token mixers take (their forward and backward alone, on inputs of the step's shape), and torch.profiler's
    top operators by self CPU time over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    from tokenizer import load_tokenizer
    from var import VAR
    from var.token_cache import TokenCache

    cfg = transformer_config(b.tokenizer, b.cache, b.args.workdir / "profile", mechanism, 1, data=b.args.data)
    sizes = ScaleLayout.of(cfg.model.patch_nums).sizes
    torch.manual_seed(0)
    model = VAR(cfg.model).train()
    model.init_weights()  # model.init_adaln_gamma, as the training does
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    vae = load_tokenizer(b.tokenizer)
    cache = TokenCache(b.cache)
    batch = [cache[i] for i in range(cfg.batch_size)]
    idx_BL = torch.stack([x for x, _ in batch])
    labels = torch.tensor([y for _, y in batch])
    with torch.no_grad():  # the frozen tokenizer's part, as in training
        x_BLCv = vae.idx_to_var_input(cache.split_scales(idx_BL))

    def step() -> None:
        logits = model(labels, x_BLCv)
        loss = F.cross_entropy(logits.float().flatten(0, 1), idx_BL.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()

    x_BLC = torch.randn(cfg.batch_size, sum(sizes), model.config.width, requires_grad=True)

    def mixers() -> None:
        for block in model.blocks:
            block.attn(x_BLC).square().mean().backward()

    step_ms = timed(step, torch.device("cpu"), repeats=steps, warmup=2) * 1e3
    mixers_ms = timed(mixers, torch.device("cpu"), repeats=steps, warmup=1) * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    ops = [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:top]
    ]
    return {"step_ms": step_ms, "mixers_ms": mixers_ms, "self_ms_per_step": total / 1e3 / steps, "ops": ops}


# ------------------------------------------------------------------------------------------ tables
def _mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def summary_rows(rows: list[dict], budget: str) -> list[dict]:
    """One row per mechanism (means, and standard deviations over seeds when there are several)."""
    out = []
    full = [r["tokens_per_s"] for r in rows if r["mechanism"] == "full" and r["budget"] == "steps"]
    for mech in dict.fromkeys(r["mechanism"] for r in rows):
        rs = [r for r in rows if r["mechanism"] == mech and r["budget"] == budget]
        if not rs:
            continue
        # the numbers every seed's row has (a stand-in equal-step row carries a flag the others lack)
        numeric = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        col = {k: [r[k] for r in rs] for k in numeric if all(k in r for r in rs)}
        out.append(
            {
                "mechanism": mech,
                "blocks": ", ".join(dict.fromkeys(rs[0]["attention"])),
                "steps": _mean_sd(col["steps"], ".0f"),
                "judged": _mean_sd(col["accuracy"], ".1%"),
                "vs real": _mean_sd(col["accuracy_ratio"], ".2f") + "x" if "accuracy_ratio" in col else None,
                "lowest class": _mean_sd(col["min_class_accuracy"], ".0%"),
                "Frechet": _mean_sd(col["frechet"], ".1f"),
                "position": _mean_sd(col["frechet_position"], ".2f") if "frechet_position" in col else None,
                "held-out loss": _mean_sd(col["heldout_loss"], ".3f"),
                "NN ratio": _mean_sd(col["nn_ratio"], ".2f"),
                "exact copies": _mean_sd(col["exact_copies"], ".0%"),
                "train s": _mean_sd(col["train_s"], ".0f"),
                "tokens/s": _mean_sd(col["tokens_per_s"], ".0f"),
                "vs full": f"{statistics.mean(col['tokens_per_s']) / statistics.mean(full):.2f}x" if full else None,
                "images/s": _mean_sd(col["sample_images_per_s"], ".0f"),
            }
        )
    return out


def _columns(meta: dict) -> list[str]:
    return list(HARNESSES[meta.get("data", "digits")].columns)


def _memorisation_note(meta: dict) -> str:
    ref, what = meta["reference"], "emoji" if meta.get("data") == "emoji" else "digits"
    return (
        f"Memorisation: `NN ratio` is the median nearest-training-image distance (RMS pixel, tokenizer "
        f"reconstructions) of the samples over that of the held-out {what} ({ref['heldout_nn_median']:.4f}); "
        f"< 1 means closer to the training set than new {what} are. `exact copies`: samples whose tokens are "
        f"a training image's (held-out {what}: {ref['heldout_copies']:.0%})."
    )


def _emoji_note(meta: dict) -> str:
    if meta.get("data") != "emoji":
        return ""
    return (
        " `judged`: balanced category accuracy of the samples; `vs real`: its ratio to the judge's balanced "
        f"accuracy on the held-out real emoji ({meta['reference']['real_accuracy']:.1%}); `position`: where the "
        "class-conditional Frechet distance sits between its floor (training vs held-out real: 0) and its "
        "ceiling (the samples with their labels ignored: 1)."
    )


def markdown(meta: dict, rows: list[dict], profiles: dict, md_dir: Path) -> str:
    """The results page; image links are relative to `md_dir`, where the page is written."""
    emoji = meta.get("data") == "emoji"
    window = meta.get("neighborhood_window", 3)  # results written before it was recorded: the digits' 3
    lines = [
        f"# Mechanisms on the {'emoji (64 px, 7 scales)' if emoji else 'bundled digits'}",
        "",
        f"{meta['device']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}; {meta['model']}, "
        f"seeds {meta['seeds']}, {meta['samples_per_class']} samples per class judged at least; neighborhood "
        f"kernel_size {window}. Time: the runs {meta['runs_s'] / 60:.1f} min (training and judging), this "
        f"invocation {meta['total_s'] / 60:.1f} min.",
        "",
        _memorisation_note(meta) + _emoji_note(meta),
        "",
        f"## Equal steps ({meta['steps']} steps)",
        "",
    ]
    cols = ["mechanism", "blocks", *_columns(meta), "train s", "tokens/s", "vs full", "images/s"]
    lines.append(markdown_table(summary_rows(rows, "steps"), cols))
    timed = summary_rows(rows, "time")
    if timed:
        lines += [
            "",
            "## Equal wall time",
            "",
            "Each mechanism trained for the steps that fit in the training-loop time `full` needed for "
            f"{meta['steps']} steps (same seed), its schedule sized to them; within "
            f"{meta['equal_time_tolerance']:.0%} of {meta['steps']} steps the equal-step run stands for it.",
            "",
            markdown_table(timed, ["mechanism", "steps", *_columns(meta)]),
        ]
    if profiles:
        lines += [
            "",
            "## Where a training step's time goes",
            "",
            "A step of the model alone (batch 64, fp32: forward, loss, backward, clipping, AdamW; the Lightning loop "
            "adds the EMA update and logging), the forward and backward of its token mixers alone on inputs of "
            "the same shape, and torch.profiler's top operators of the step by self CPU time.",
            "",
            markdown_table(
                [
                    {
                        "mechanism": m,
                        "step ms": f"{p['step_ms']:.1f}",
                        "mixers ms": f"{p['mixers_ms']:.1f}",
                        "mixers' share": f"{p['mixers_ms'] / p['step_ms']:.0%}",
                        "top operators": ", ".join(f"`{o['op']}` {o['share']:.0%}" for o in p["ops"][:4]),
                    }
                    for m, p in profiles.items()
                ],
                ["mechanism", "step ms", "mixers ms", "mixers' share", "top operators"],
            ),
        ]
        for mech, p in profiles.items():
            ops = [
                {"op": f"`{o['op']}`", "ms/step": f"{o['self_ms_per_step']:.2f}", "share": f"{o['share']:.0%}"}
                for o in p["ops"]
            ]
            lines += ["", f"### {mech}: top operators", "", markdown_table(ops, ["op", "ms/step", "share"])]
    grids = [r for r in rows if r.get("grid")]
    if grids:
        lines += ["", f"## Samples (one row per {'category' if emoji else 'digit'}, seed {meta['seeds'][0]})", ""]
        lines += ["| " + " | ".join(r["mechanism"] for r in grids) + " |", "|" + "---|" * len(grids)]
        links = [os.path.relpath(ROOT / r["grid"], md_dir.resolve()).replace(os.sep, "/") for r in grids]
        lines.append("| " + " | ".join(f"![{r['mechanism']}]({link})" for r, link in zip(grids, links)) + " |")
    return "\n".join(lines)


def overview_block(data: dict, source: str, page_dir: Path) -> str:
    """The table of benchmarks/results/README.md (equal steps, and judged accuracy at equal wall time) and
    the grids side by side; `source` names the results file. Image links are relative to `page_dir`."""
    meta, rows = data["meta"], data["rows"]
    timed = {r["mechanism"]: r for r in summary_rows(rows, "time")}
    table = []
    for r in summary_rows(rows, "steps"):
        t = timed.get(r["mechanism"])
        table.append({**r, "judged at equal time": f"{t['judged']} ({t['steps']} steps)" if t else None})
    cols = ["mechanism", "blocks", *_columns(meta), "train s", "vs full"]
    cols += ["judged at equal time"] if timed else ["step ms"] if meta.get("profile") else []
    for r in table:
        p = meta.get("profile", {}).get(r["mechanism"])
        r["step ms"] = f"{p['step_ms']:.0f}" if p else None
    seeds = ", ".join(map(str, meta["seeds"]))
    what = "category" if meta.get("data") == "emoji" else "digit"
    lines = [
        f"{meta['device']}, {meta['date']}: {meta['steps']} steps, seed {seeds}, {meta['samples_per_class']}+ "
        f"samples per {what} judged (`{source}`).",
        "",
        markdown_table(table, cols),
    ]
    grids = [r for r in rows if r.get("grid")]
    if grids:
        lines += ["", "| " + " | ".join(r["mechanism"] for r in grids) + " |", "|" + "---|" * len(grids)]
        links = [os.path.relpath(ROOT / r["grid"], page_dir.resolve()).replace(os.sep, "/") for r in grids]
        lines.append("| " + " | ".join(f"![{r['mechanism']}]({link})" for r, link in zip(grids, links)) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(HARNESSES), default="digits", help="digits (default) or emoji")
    p.add_argument("--data-root", help="emoji: an unpacked emoji-datasource-google package instead of the cache")
    p.add_argument("--steps", type=int, help="training steps of every run (default: the preset's, as in the demo)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    p.add_argument("--mechanisms", default=",".join(MECHANISMS), help="comma-separated (default all six)")
    p.add_argument("--workdir", type=Path, help="tokenizer, cache and runs (default runs/bench-mechanisms[-emoji])")
    p.add_argument("--out", type=Path, help="results folder (JSON, Markdown, grids under OUT/mechanisms/)")
    p.add_argument("--samples-per-class", type=int, default=20)
    p.add_argument("--grid-columns", type=int, default=10)
    p.add_argument("--tokenizer-steps", type=int, help="override the tokenizer preset's steps (quick runs)")
    p.add_argument("--judge-steps", type=int, default=600, help="emoji: the judge's training steps (the demo's 600)")
    p.add_argument("--no-equal-time", action="store_true", help="skip the equal-wall-time runs")
    p.add_argument("--equal-time-tolerance", type=float, default=0.05)
    p.add_argument("--profile", action="store_true", help="add torch.profiler's top operators per mechanism")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.workdir is None:
        args.workdir = Path("runs/bench-mechanisms" + ("" if args.data == "digits" else f"-{args.data}"))
    from scaffold import load_config
    from var.train import VARTrainConfig

    preset = load_config(VARTrainConfig, ROOT / "configs" / "var" / f"{args.data}.yaml")
    args.steps = preset.max_steps if args.steps is None else args.steps
    args.neighborhood_window = preset.model.attention_options.get("neighborhood", {}).get("kernel_size")
    args.mechanisms = args.mechanisms.split(",")
    from var.pipeline import mechanisms

    unknown = [m for m in args.mechanisms if m not in mechanisms()]
    if unknown:
        p.error(f"unknown mechanism(s) {', '.join(unknown)}; choose from {', '.join(mechanisms())}")
    if args.steps < 1 or args.samples_per_class < 1 or args.grid_columns > args.samples_per_class:
        p.error("--steps and --samples-per-class must be >= 1 and --grid-columns <= --samples-per-class")
    return args


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    started = time.time()
    opts = PipelineOptions(
        workdir=args.workdir,
        data=args.data,
        data_root=args.data_root,
        tokenizer_steps=args.tokenizer_steps,
        judge_steps=args.judge_steps,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    tok = stage_tokenizer(opts)
    say(f"tokenizer: held-out PSNR {tok['psnr_db']:.2f} dB ({args.workdir / 'tokenizer'})")
    cache = stage_tokens(opts)
    harness = HARNESSES[args.data](args, opts)
    grids = (args.out if args.out else args.workdir) / (
        "mechanisms" if args.data == "digits" else f"mechanisms-{args.data}"
    )
    b = Bench(args, args.workdir / "tokenizer", cache, harness, grids, started)
    say(f"equal steps: {len(args.mechanisms) * len(args.seeds)} runs of {args.steps} steps")
    b.total = len(args.mechanisms) * len(args.seeds)
    rows = [run_one(b, m, args.steps, s, "steps") for s in args.seeds for m in args.mechanisms]
    if not args.no_equal_time and "full" not in args.mechanisms:
        say("equal wall time needs full among --mechanisms: skipped")
    elif not args.no_equal_time:
        todo = []
        for s in args.seeds:
            by_mech = {r["mechanism"]: r for r in rows if r["seed"] == s and r["budget"] == "steps"}
            for m in args.mechanisms:
                n = equal_time_steps(args.steps, by_mech[m]["tokens_per_s"], by_mech["full"]["tokens_per_s"])
                if abs(n - args.steps) <= args.equal_time_tolerance * args.steps:  # full itself, and timing noise
                    rows.append({**by_mech[m], "budget": "time", "grid": None, "same_as_equal_steps": True})
                else:
                    todo.append((m, n, s))
        say(f"equal wall time: {len(todo)} more runs ({', '.join(f'{m} {n} steps' for m, n, _ in todo) or 'none'})")
        b.done, b.total = 0, len(todo)
        rows += [run_one(b, m, n, s, "time") for m, n, s in todo]
    profiles = {}
    if args.profile:
        for m in args.mechanisms:
            say(f"profiling a training step of {m}")
            profiles[m] = profile_mechanism(b, m)
    meta = metadata(
        torch.device("cpu"),
        steps=args.steps,
        seeds=args.seeds,
        samples_per_class=args.samples_per_class,
        equal_time_tolerance=args.equal_time_tolerance,
        tokenizer=tok,
        data=args.data,
        model=harness.describe(),
        reference=harness.reference(),
        neighborhood_window=args.neighborhood_window,
        profile=profiles,
        runs_s=sum(r.get("wall_s", r["train_s"]) for r in rows if not r.get("same_as_equal_steps")),
        total_s=time.time() - started,
    )
    md = markdown(meta, rows, profiles, args.out or args.workdir)
    print(md)
    say(f"finished in {meta['total_s'] / 60:.1f} min")
    if args.out:
        base = write_results(
            args.out, "mechanisms" if args.data == "digits" else f"mechanisms_{args.data}", meta, rows, md
        )
        say(f"wrote {base}.json, {base}.md and the grids in {grids}")
        return base
    return None


if __name__ == "__main__":
    main()

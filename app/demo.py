"""`var demo`: the whole pipeline on the bundled digits, on a CPU in minutes, then the web UI.

Stages (each reused when a previous `var demo` finished it in the same work folder):

1. train the tokenizer (configs/tokenizer/digits.yaml)  -> DIR/tokenizer
2. tokenize the digits once (configs/tokens/digits.yaml) -> DIR/runs/tokens
3. train the transformer (configs/var/digits.yaml)      -> DIR/model (what `var sample` and `var app` take)
   with `--mechanism` in every block (`hybrid`: the hybrid preset's per-block list at the model's depth)
4. sample a grid, one row per class, and judge it       -> DIR/samples.png
5. serve the web UI on DIR/model (unless --no-app)

A stage is finished when its `DIR/runs/<stage>.done.json` exists (written atomically after the stage);
it records the stage's time and numbers, so a second run prints the same summary without retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scaffold.errors import UserError
from scaffold.io import atomic_path, remove_stale_temporaries, write_atomic

__all__ = [
    "DigitSamples",
    "add_arguments",
    "mechanisms",
    "run",
    "run_demo",
    "sample_digits",
    "save_grid",
    "transformer_config",
]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class DemoError(UserError, RuntimeError):
    """A demo that cannot run: a missing preset, an unknown mechanism."""


@dataclass
class DemoOptions:
    workdir: Path
    mechanism: str = "full"
    tokenizer_steps: int | None = None  # None: the preset's
    var_steps: int | None = None
    samples_per_class: int = 20
    grid_per_class: int = 10
    seed: int = 0


def _preset(path: Path) -> Path:
    if not path.is_file():
        raise DemoError(f"preset {path} not found: run `var demo` from a checkout installed with `pip install -e .`")
    return path


def _write_json(obj: dict, path: Path) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def _done(opts: DemoOptions, stage: str) -> Path:
    return opts.workdir / "runs" / f"{stage}.done.json"


def _publish(src: Path, dst: Path) -> None:
    """Copy an exported folder into place atomically: a temporary copy, then a rename."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


# ---------------------------------------------------------------------------------------- stages
@torch.no_grad()
def tokenizer_report(tokenizer_dir: Path) -> dict:
    """Held-out PSNR of the exported tokenizer, and the share of its codebook the digits use."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from tokenizer import DigitsDataset, load_tokenizer

    vae = load_tokenizer(tokenizer_dir)
    size = vae.image_size
    val = DigitsDataset("val", image_size=size)
    rec = vae.reconstruct(val.images)
    # The mean of the per-image PSNRs (dim: one value per image), in dB.
    p = peak_signal_noise_ratio((rec + 1) / 2, (val.images + 1) / 2, data_range=1.0, dim=(1, 2, 3)).item()
    idx = vae.img_to_idx(DigitsDataset("train", image_size=size).images)
    V = vae.vocab_size
    per_scale = [i.unique().numel() / V for i in idx]
    used = torch.cat([i.flatten() for i in idx]).unique().numel() / V
    return {"psnr_db": p, "codebook_used": used, "codebook_used_per_scale": per_scale}


def stage_tokenizer(opts: DemoOptions) -> dict:
    done = _done(opts, "tokenizer")
    if done.is_file() and (opts.workdir / "tokenizer" / "config.yaml").is_file():
        _say(f"tokenizer: reusing {opts.workdir / 'tokenizer'}")
        return json.loads(done.read_text())
    from scaffold import load_config
    from tokenizer.train import TokenizerTrainConfig, train_tokenizer

    overrides = [f"out_dir={opts.workdir / 'runs' / 'tokenizer'}", "resume=true"]
    if opts.tokenizer_steps is not None:
        overrides += [f"max_steps={opts.tokenizer_steps}", f"ckpt_every_n_steps={max(1, opts.tokenizer_steps)}"]
    cfg = load_config(TokenizerTrainConfig, _preset(CONFIGS / "tokenizer" / "digits.yaml"), overrides)
    _say(f"1/4 training the tokenizer ({cfg.max_steps} steps, {cfg.model.vocab_size} codes, {cfg.model.patch_nums})")
    t0 = time.time()
    exported = train_tokenizer(cfg)
    _publish(exported, opts.workdir / "tokenizer")
    info = {"seconds": time.time() - t0, **tokenizer_report(opts.workdir / "tokenizer")}
    _write_json(info, done)
    return info


def stage_tokens(opts: DemoOptions) -> Path:
    cache = opts.workdir / "runs" / "tokens"
    done = _done(opts, "tokens")
    if done.is_file():
        return cache
    from scaffold import load_config
    from var.token_cache import TokenizeConfig, tokenize

    cfg = load_config(
        TokenizeConfig,
        _preset(CONFIGS / "tokens" / "digits.yaml"),
        [f"tokenizer={opts.workdir / 'tokenizer'}", f"out_dir={cache}"],
    )
    _say("2/4 tokenizing the digits once")
    tokenize(cfg)
    _write_json({"cache": str(cache)}, done)
    return cache


def mechanisms() -> list[str]:
    """What `--mechanism` takes: every registered mechanism, and `hybrid` (a per-block mix)."""
    from var import MIXERS

    return [*MIXERS, "hybrid"]


def transformer_config(
    tokenizer_dir: Path,
    cache: Path,
    run_dir: Path,
    mechanism: str = "full",
    steps: int | None = None,
    extra: list[str] | tuple[str, ...] = (),
):
    """The demo's transformer run (a `VARTrainConfig`): configs/var/digits.yaml on the token `cache` of
    `tokenizer_dir`, written to `run_dir`, with `mechanism` in every block (`hybrid`: `var.hybrid_attention`
    at the preset's depth). `steps` replaces the preset's step count (and turns its sample grids off);
    `extra` holds further key=value overrides."""
    from scaffold import load_config
    from var import hybrid_attention
    from var.train import VARTrainConfig

    overrides = [f"tokenizer={tokenizer_dir}", f"data.cache={cache}", f"out_dir={run_dir}", "resume=true"]
    if steps is not None:
        overrides += [f"max_steps={steps}", f"ckpt_every_n_steps={max(1, steps)}", "samples.every_n_steps=0"]
    cfg = load_config(VARTrainConfig, _preset(CONFIGS / "var" / "digits.yaml"), [*overrides, *extra])
    cfg.model.attention = hybrid_attention(cfg.model.depth) if mechanism == "hybrid" else mechanism
    return cfg


def attention_options_used(model_cfg) -> dict:
    """The `attention_options` of the mechanisms that some block of `model_cfg` (a VARConfig) uses."""
    used = set(model_cfg.block_attention())
    return {name: dict(o) for name, o in model_cfg.attention_options.items() if name in used}


def _described(mechanism: str | None, options: dict) -> str:
    return f"{mechanism} {options}" if options else str(mechanism)


def stage_transformer(opts: DemoOptions, cache: Path) -> dict:
    from var.train import train_var

    done = _done(opts, "transformer")
    model_dir = opts.workdir / "model"
    run_dir = opts.workdir / "runs" / f"var-{opts.mechanism}"
    cfg = transformer_config(opts.workdir / "tokenizer", cache, run_dir, opts.mechanism, opts.var_steps)
    options = attention_options_used(cfg.model)
    if done.is_file() and (model_dir / "config.yaml").is_file():
        info = json.loads(done.read_text())
        # A finished stage records the options its mechanism ran with (none before they were recorded): a
        # neighborhood model of an older demo, with the window that covered every scale, is trained again.
        if info.get("mechanism") == opts.mechanism and info.get("attention_options", {}) == options:
            _say(f"transformer: reusing {model_dir} ({opts.mechanism})")
            return info
        was = _described(info.get("mechanism"), info.get("attention_options", {}))
        _say(f"transformer: {model_dir} uses {was}, retraining with {_described(opts.mechanism, options)}")
    _say(f"3/4 training the transformer ({opts.mechanism}, depth {cfg.model.depth}, {cfg.max_steps} steps)")
    t0 = time.time()
    exported = train_var(cfg)
    _publish(exported, model_dir)
    info = {
        "seconds": time.time() - t0,
        "mechanism": opts.mechanism,
        "attention": cfg.model.block_attention(),
        "attention_options": options,
        "train_loss": last_logged(run_dir, "train/loss_mean"),
        "heldout_loss": heldout_loss(model_dir),
    }
    _write_json(info, done)
    return info


def last_logged(run_dir: Path, key: str) -> float | None:
    """The last value of `key` in the run's CSV log (Lightning's CSVLogger), if any."""
    import csv

    logs = sorted(run_dir.glob("logs/*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return None
    with logs[-1].open() as f:
        values = [row[key] for row in csv.DictReader(f) if row.get(key)]
    return float(values[-1]) if values else None


@torch.no_grad()
def heldout_loss(model_dir: Path) -> float:
    """Mean cross-entropy (all tokens) of the exported model on the held-out digits, teacher forced."""
    from tokenizer import DigitsDataset
    from var.export import load_model

    m = load_model(model_dir)
    val = DigitsDataset("val", image_size=m.vae.image_size)
    idx = m.vae.img_to_idx(val.images)
    logits = m.model(val.labels, m.vae.idx_to_var_input(idx))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.cat(idx, 1).flatten()).item()


@dataclass
class DigitSamples:
    images: torch.Tensor  # [C * n, 3, H, W] in [0, 1]: n samples of class 0, then n of class 1, ...
    labels: torch.Tensor  # [C * n]
    tokens: list[torch.Tensor]  # per scale [C * n, pn * pn]
    seconds: float  # sampling time (the tokenizer's decoder included)


def sample_digits(m, per_class: int, seed: int = 0) -> DigitSamples:
    """`per_class` samples of every class of the loaded model `m` (a `var.LoadedModel`) with its exported
    sampling settings, in one batch; image i is drawn with its own generator, seeded `seed * 1_000_003 + i`."""
    from var.sample import sample

    labels = torch.arange(m.num_classes).repeat_interleave(per_class)
    seeds = [seed * 1_000_003 + i for i in range(len(labels))]
    t0 = time.time()
    imgs, tokens = sample(m.model, m.vae, labels, m.sampling, seed=seeds, return_tokens=True)
    return DigitSamples(imgs, labels, tokens, time.time() - t0)


def save_grid(
    images: torch.Tensor, per_class: int, columns: int, path: Path, tile_px: int = 96, grayscale: bool = False
) -> Path:
    """A PNG of class-major `images` (`per_class` of each class, as `sample_digits` gives them): one row per
    class, its first `columns` samples, gray gutters, each tile scaled (nearest) to about `tile_px` pixels;
    `grayscale` stores the mean of the channels (the digits are gray: a third of the file)."""
    from PIL import Image

    C = len(images) // per_class
    grid = images.view(C, per_class, *images.shape[1:])[:, :columns]  # [C, G, 3, H, W]
    grid = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=0.35)  # gray gutters between the tiles
    G, H = grid.shape[1], grid.shape[-1]
    rows = grid.permute(0, 3, 1, 4, 2).reshape(C * H, G * H, 3)  # row c: the samples of class c
    arr = (rows.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    up = max(1, tile_px // H)  # digits are 16 px: make the grid readable
    img = Image.fromarray(arr).resize((arr.shape[1] * up, arr.shape[0] * up), Image.NEAREST)
    if grayscale:
        img = img.convert("L")
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, optimize=True)
    return path


def stage_samples(opts: DemoOptions) -> dict:
    """A grid (one row per class) and the judge's per-class accuracy over `samples_per_class` each."""
    from var.digits_eval import judge_samples
    from var.export import load_model

    m = load_model(opts.workdir / "model")
    s = m.sampling
    n = max(opts.samples_per_class, opts.grid_per_class)
    _say(f"4/4 sampling {m.num_classes * n} images (cfg {s.cfg}, top-k {s.top_k}, top-p {s.top_p}) and judging them")
    smp = sample_digits(m, n, opts.seed)
    report = judge_samples(smp.images, smp.labels)
    path = save_grid(smp.images, n, opts.grid_per_class, opts.workdir / "samples.png")
    return {
        "seconds": smp.seconds,
        "images": len(smp.labels),
        "accuracy": report.accuracy,
        "min_class_accuracy": report.min_class_accuracy,
        "per_class": report.per_class,
        "per_class_counts": {c: list(kn) for c, kn in report.per_class_counts.items()},  # [right, samples]
        "frechet": report.frechet,
        "grid": str(path),
    }


# ------------------------------------------------------------------------------------------ main
def run_demo(opts: DemoOptions) -> dict:
    if opts.mechanism not in mechanisms():
        raise DemoError(f"unknown mechanism {opts.mechanism!r}; choose one of {', '.join(mechanisms())}")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(opts.workdir)  # a `.model.tmp-PID` copy that a killed demo left (_publish)
    t0 = time.time()
    tok = stage_tokenizer(opts)
    _say(
        f"tokenizer: {tok['seconds']:.0f} s, held-out PSNR {tok['psnr_db']:.2f} dB, codebook used "
        f"{tok['codebook_used']:.0%} (per scale {', '.join(f'{u:.0%}' for u in tok['codebook_used_per_scale'])})"
    )
    cache = stage_tokens(opts)
    var = stage_transformer(opts, cache)
    train_loss = "n/a" if var["train_loss"] is None else f"{var['train_loss']:.3f}"
    _say(
        f"transformer ({var['mechanism']}): {var['seconds']:.0f} s, training loss {train_loss}, held-out loss "
        f"{var['heldout_loss']:.3f} (the tiny model memorises the 1,617 training digits)"
    )
    smp = stage_samples(opts)
    per = " ".join(f"{c}:{a:.0%}" for c, a in sorted(smp["per_class"].items()))
    _say(
        f"samples: {smp['images']} in {smp['seconds']:.1f} s; judged accuracy {smp['accuracy']:.1%} "
        f"(lowest class {smp['min_class_accuracy']:.1%}; {per}); Frechet distance {smp['frechet']:.2f}"
    )
    _say(
        f"grid: {smp['grid']} (one row per class); model: {opts.workdir / 'model'}; "
        f"total {time.time() - t0:.0f} s this run"
    )
    summary = {"tokenizer": tok, "transformer": var, "samples": smp, "seconds": time.time() - t0}
    _write_json(summary, opts.workdir / "summary.json")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("demo"), help="where everything goes (default ./demo)")
    parser.add_argument(
        "--mechanism",
        default="full",
        help="token mixer of the transformer's blocks: full (default), neighborhood, external, lka, gspn or hybrid",
    )
    parser.add_argument("--no-app", action="store_true", help="stop after the sample grid")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--tokenizer-steps", type=int, help="override the preset's tokenizer steps (quick runs)")
    parser.add_argument("--var-steps", type=int, help="override the preset's transformer steps (quick runs)")
    parser.add_argument("--samples-per-class", type=int, default=20, help="samples judged per class (default 20)")


def run(args: argparse.Namespace) -> int:
    opts = DemoOptions(
        workdir=args.workdir,
        mechanism=args.mechanism,
        tokenizer_steps=args.tokenizer_steps,
        var_steps=args.var_steps,
        samples_per_class=args.samples_per_class,
    )
    run_demo(opts)
    if not args.no_app:
        from app.serve import serve

        _say(f"web UI on http://{args.host}:{args.port} (Ctrl-C to stop)")
        serve([str(opts.workdir / "model")], host=args.host, port=args.port)
    return 0

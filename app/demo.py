"""`var demo`: the whole pipeline on a CPU, then the web UI: the bundled digits in minutes (the default),
or the downloaded 64 px emoji (`--data emoji`, 7 scales) in under half an hour.

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
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scaffold.errors import UserError
from scaffold.io import atomic_path, publish_folder, remove_stale_temporaries, write_atomic
from scaffold.lock import folder_lock

__all__ = [
    "ClassSamples",
    "add_arguments",
    "mechanisms",
    "run",
    "run_demo",
    "sample_classes",
    "sample_digits",
    "save_grid",
    "transformer_config",
]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class DemoError(UserError, RuntimeError):
    """A demo that cannot run: a missing preset, an unknown mechanism."""


DATASETS = ("digits", "emoji")


@dataclass
class DemoOptions:
    workdir: Path
    data: str = "digits"  # the presets' name: configs/{tokenizer,tokens,var}/<data>.yaml
    data_root: str | None = None  # emoji: an unpacked package instead of the downloaded cache
    mechanism: str = "full"
    tokenizer_steps: int | None = None  # None: the preset's
    var_steps: int | None = None
    samples_per_class: int = 20
    grid_per_class: int = 10
    seed: int = 0
    judge_steps: int = 600  # emoji


def _preset(path: Path) -> Path:
    if not path.is_file():
        raise DemoError(f"preset {path} not found: run `var demo` from a checkout installed with `pip install -e .`")
    return path


def _write_json(obj: dict, path: Path) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def _done(opts: DemoOptions, stage: str) -> Path:
    return opts.workdir / "runs" / f"{stage}.done.json"


def _data_overrides(opts: DemoOptions, key: str = "data") -> list[str]:
    return [f"{key}.root={opts.data_root}"] if opts.data_root else []


def _check_data(opts: DemoOptions) -> None:
    """A work folder holds one dataset's pipeline: another's finished stages are never reused or mixed in."""
    marker = opts.workdir / "runs" / "data.json"
    if marker.is_file():
        was = json.loads(marker.read_text()).get("data")
        if was != opts.data:
            raise DemoError(f"{opts.workdir} holds the {was} demo; run --data {opts.data} in another --workdir")
    elif _done(opts, "tokenizer").is_file() and opts.data != "digits":  # a digits demo from before the marker
        raise DemoError(f"{opts.workdir} holds the digits demo; run --data {opts.data} in another --workdir")
    _write_json({"data": opts.data}, marker)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _stages(opts: DemoOptions) -> int:
    return 5 if opts.data == "emoji" else 4


# ---------------------------------------------------------------------------------------- stages
def demo_datasets(opts: DemoOptions, image_size: int):
    """The (train, val) datasets of the demo's data at `image_size` (each with `images` and `labels`)."""
    from tokenizer import DataConfig, build_datasets

    return build_datasets(DataConfig(name=opts.data, root=opts.data_root, image_size=image_size))


def batched(fn, x: torch.Tensor, batch: int = 256):
    """`fn` over `x` in batches: a list of per-scale tensors or one tensor, concatenated along the batch."""
    parts = [fn(x[i : i + batch]) for i in range(0, len(x), batch)]
    if isinstance(parts[0], list):
        return [torch.cat(p) for p in zip(*parts)]
    return torch.cat(parts)


@torch.no_grad()
def tokenizer_report(tokenizer_dir: Path, opts: DemoOptions) -> dict:
    """Held-out PSNR of the exported tokenizer, and the share of its codebook the training images use."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from tokenizer import load_tokenizer

    vae = load_tokenizer(tokenizer_dir)
    train, val = demo_datasets(opts, vae.image_size)
    rec = batched(vae.reconstruct, val.images)
    # The mean of the per-image PSNRs (dim: one value per image), in dB.
    p = peak_signal_noise_ratio((rec + 1) / 2, (val.images + 1) / 2, data_range=1.0, dim=(1, 2, 3)).item()
    idx = batched(vae.img_to_idx, train.images)
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

    overrides = [f"out_dir={opts.workdir / 'runs' / 'tokenizer'}", "resume=true", *_data_overrides(opts)]
    if opts.tokenizer_steps is not None:
        overrides += [f"max_steps={opts.tokenizer_steps}", f"ckpt_every_n_steps={max(1, opts.tokenizer_steps)}"]
    cfg = load_config(TokenizerTrainConfig, _preset(CONFIGS / "tokenizer" / f"{opts.data}.yaml"), overrides)
    _say(
        f"1/{_stages(opts)} training the tokenizer ({cfg.max_steps} steps, {cfg.model.vocab_size} codes, {cfg.model.patch_nums})"
    )
    t0 = time.time()
    exported = train_tokenizer(cfg)
    publish_folder(exported, opts.workdir / "tokenizer")
    info = {"seconds": time.time() - t0, **tokenizer_report(opts.workdir / "tokenizer", opts)}
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
        _preset(CONFIGS / "tokens" / f"{opts.data}.yaml"),
        [f"tokenizer={opts.workdir / 'tokenizer'}", f"out_dir={cache}", *_data_overrides(opts)],
    )
    _say(f"2/{_stages(opts)} tokenizing the {opts.data} once")
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
    data: str = "digits",
):
    """The demo's transformer run (a `VARTrainConfig`): configs/var/<data>.yaml on the token `cache` of
    `tokenizer_dir`, written to `run_dir`, with `mechanism` in every block (`hybrid`: `var.hybrid_attention`
    at the preset's depth). `steps` replaces the preset's step count (and turns its sample grids off);
    `extra` holds further key=value overrides."""
    from scaffold import load_config
    from var import hybrid_attention
    from var.train import VARTrainConfig

    overrides = [f"tokenizer={tokenizer_dir}", f"data.cache={cache}", f"out_dir={run_dir}", "resume=true"]
    if steps is not None:
        overrides += [f"max_steps={steps}", f"ckpt_every_n_steps={max(1, steps)}", "samples.every_n_steps=0"]
    cfg = load_config(VARTrainConfig, _preset(CONFIGS / "var" / f"{data}.yaml"), [*overrides, *extra])
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
    cfg = transformer_config(opts.workdir / "tokenizer", cache, run_dir, opts.mechanism, opts.var_steps, data=opts.data)
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
    _say(
        f"3/{_stages(opts)} training the transformer ({opts.mechanism}, depth {cfg.model.depth}, {cfg.max_steps} steps)"
    )
    t0 = time.time()
    exported = train_var(cfg)
    publish_folder(exported, model_dir)
    info = {
        "seconds": time.time() - t0,
        "mechanism": opts.mechanism,
        "attention": cfg.model.block_attention(),
        "attention_options": options,
        "train_loss": last_logged(run_dir, "train/loss_mean"),
        "heldout_loss": heldout_loss(model_dir, opts),
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
def heldout_loss(model_dir: Path, opts: DemoOptions | None = None) -> float:
    """Mean cross-entropy (all tokens) of the exported model on the held-out images, teacher forced."""
    from var.export import load_model

    m = load_model(model_dir)
    val = demo_datasets(opts or DemoOptions(Path(".")), m.vae.image_size)[1]
    total, count = 0.0, 0
    for i in range(0, len(val.labels), 128):
        idx = m.vae.img_to_idx(val.images[i : i + 128])
        logits = m.model(val.labels[i : i + 128], m.vae.idx_to_var_input(idx))
        target = torch.cat(idx, 1).flatten()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), target, reduction="sum").item()
        count += target.numel()
    return total / count


@dataclass
class ClassSamples:
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]: the samples of class 0, then those of class 1, ...
    labels: torch.Tensor  # [N]
    tokens: list[torch.Tensor]  # per scale [N, pn * pn]
    seconds: float  # sampling time (the tokenizer's decoder included)

    def first(self, per_class: int) -> torch.Tensor:
        """The first `per_class` images of every class, class-major [C * per_class, 3, H, W]."""
        return torch.cat([self.images[self.labels == c][:per_class] for c in self.labels.unique()])


def sample_classes(m, per_class: int | list[int], seed: int = 0, batch: int = 256) -> ClassSamples:
    """`per_class` samples of every class (or `per_class[c]` of class c) of the loaded model `m` (a
    `var.LoadedModel`) with its exported sampling settings, in batches of `batch`; image i is drawn with its
    own generator, seeded `seed * 1_000_003 + i`, so the batching changes nothing."""
    from var.sample import sample

    counts = [per_class] * m.num_classes if isinstance(per_class, int) else list(per_class)
    labels = torch.arange(m.num_classes).repeat_interleave(torch.tensor(counts))
    seeds = [seed * 1_000_003 + i for i in range(len(labels))]
    t0 = time.time()
    parts = [
        sample(m.model, m.vae, labels[i : i + batch], m.sampling, seed=seeds[i : i + batch], return_tokens=True)
        for i in range(0, len(labels), batch)
    ]
    imgs = torch.cat([p[0] for p in parts])
    tokens = [torch.cat(t) for t in zip(*(p[1] for p in parts))]
    return ClassSamples(imgs, labels, tokens, time.time() - t0)


sample_digits = sample_classes  # the name the digits' benchmarks know


def save_grid(
    images: torch.Tensor,
    per_class: int,
    columns: int,
    path: Path,
    tile_px: int = 96,
    grayscale: bool = False,
    colors: int | None = None,
) -> Path:
    """A PNG of class-major `images` (`per_class` of each class, as `ClassSamples.first` gives them): one row per
    class, its first `columns` samples, gray gutters, each tile scaled (nearest) to about `tile_px` pixels;
    `grayscale` stores the mean of the channels (the digits are gray: a third of the file); `colors` stores a
    palette of that many colours (a third of the file again, for grids kept in the repository)."""
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
    if colors is not None:
        img = img.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
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
    smp = sample_classes(m, n, opts.seed)
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


def _judge_path(opts: DemoOptions) -> Path:
    return opts.workdir / "runs" / "judge.safetensors"


def stage_judge(opts: DemoOptions, image_size: int) -> dict:
    """The emoji judge, trained on the training emoji only, and its balanced accuracy on the held-out ones."""
    from scaffold import save_state_dict
    from var.emoji_eval import balanced_accuracy, train_emoji_judge

    done = _done(opts, "judge")
    if done.is_file() and _judge_path(opts).is_file():
        return json.loads(done.read_text())
    _say(f"4/5 training the judge on the training emoji ({opts.judge_steps} steps)")
    t0 = time.time()
    train, val = demo_datasets(opts, image_size)
    judge = train_emoji_judge(train.images, train.labels, len(train.class_names), steps=opts.judge_steps)
    with torch.no_grad():
        acc, counts = balanced_accuracy(judge(val.images).argmax(1), val.labels)
    save_state_dict(judge.state_dict(), _judge_path(opts))
    info = {
        "seconds": time.time() - t0,
        "steps": opts.judge_steps,
        "heldout_accuracy": acc,
        "heldout_per_class_counts": {c: list(kn) for c, kn in counts.items()},
    }
    _write_json(info, done)
    return info


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def load_emoji_judge(opts: DemoOptions, num_classes: int, image_size: int):
    """The judge `stage_judge` trained into `opts.workdir`, frozen."""
    from scaffold import read_state_dict
    from var.emoji_eval import EmojiJudge

    judge = EmojiJudge(num_classes, image_size)
    judge.load_state_dict(read_state_dict(_judge_path(opts)))
    return judge.eval().requires_grad_(False)


def emoji_sample_counts(val_labels: torch.Tensor, num_classes: int, per_class: int) -> list[int]:
    """Samples judged per category: `per_class`, or as many as the category has held-out emoji if more (the
    Frechet distance compares equal counts)."""
    return [max(per_class, int((val_labels == c).sum())) for c in range(num_classes)]


def stage_emoji_samples(opts: DemoOptions) -> dict:
    """Samples of every category (at least as many as it has held-out emoji), judged (var.emoji_eval), and a
    grid of the first `grid_per_class` of each."""
    from var.emoji_eval import judge_emoji
    from var.export import load_model

    m = load_model(opts.workdir / "model")
    train, val = demo_datasets(opts, m.vae.image_size)
    judge = load_emoji_judge(opts, len(train.class_names), m.vae.image_size)
    counts = emoji_sample_counts(val.labels, m.num_classes, max(opts.samples_per_class, opts.grid_per_class))
    s = m.sampling
    _say(f"5/5 sampling {sum(counts)} images (cfg {s.cfg}, top-k {s.top_k}, top-p {s.top_p}) and judging them")
    smp = sample_classes(m, counts, opts.seed)
    with torch.no_grad():
        train_rec = (batched(m.vae.reconstruct, train.images) + 1) / 2
        val_rec = (batched(m.vae.reconstruct, val.images) + 1) / 2
    report = judge_emoji(
        judge, smp.images, smp.labels, train.images, train.labels, val.images, val.labels, train_rec, val_rec,
        seed=opts.seed, class_names=train.class_names,
    )  # fmt: skip
    G = opts.grid_per_class
    path = save_grid(smp.first(G), G, G, opts.workdir / "samples.png", tile_px=64)
    return {
        "seconds": smp.seconds,
        "images": len(smp.labels),
        "accuracy": report.accuracy,
        "real_accuracy": report.real_accuracy,
        "accuracy_ratio": report.accuracy_ratio,
        "per_class": {train.class_names[c]: a for c, a in report.per_class.items()},
        "frechet": _finite(report.frechet),  # None where no category has 2 held-out emoji
        "frechet_floor": _finite(report.frechet_floor),
        "frechet_ceiling": _finite(report.frechet_ceiling),
        "frechet_left_out": [train.class_names[c] for c in report.frechet_left_out],
        "nn_distance": report.nn_distance,
        "heldout_nn_distance": report.heldout_nn_distance,
        "nn_ratio": report.nn_ratio,
        "goals": report.goals(),
        "report": report.lines(),
        "grid": str(path),
    }


# ------------------------------------------------------------------------------------------ main
def run_demo(opts: DemoOptions) -> dict:
    if opts.data not in DATASETS:
        raise DemoError(f"unknown demo data {opts.data!r}; choose one of {', '.join(DATASETS)}")
    if opts.mechanism not in mechanisms():
        raise DemoError(f"unknown mechanism {opts.mechanism!r}; choose one of {', '.join(mechanisms())}")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    with folder_lock(opts.workdir):
        return _run_locked(opts)


def _run_locked(opts: DemoOptions) -> dict:
    (opts.workdir / "runs").mkdir(exist_ok=True)
    _check_data(opts)
    remove_stale_temporaries(opts.workdir)  # a `.model.tmp-...` copy that a killed demo left (publish_folder)
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
        f"{var['heldout_loss']:.3f}"
        + (" (the tiny model memorises the 1,617 training digits)" if opts.data == "digits" else "")
    )
    if opts.data == "emoji":
        from var.export import load_model

        judge = stage_judge(opts, load_model(opts.workdir / "model").vae.image_size)
        _say(
            f"judge: {judge['seconds']:.0f} s, balanced accuracy on held-out real emoji {judge['heldout_accuracy']:.1%}"
        )
        smp = stage_emoji_samples(opts)
        per = "; ".join(f"{c} {a:.0%}" for c, a in smp["per_class"].items())
        _say(f"samples: {smp['images']} in {smp['seconds']:.1f} s; per category {per}")
        for line in smp["report"]:
            _say(line)
        _say(
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
        _write_json(summary, opts.workdir / "summary.json")
        return summary
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
    summary = {"data": opts.data, "tokenizer": tok, "transformer": var, "samples": smp, "seconds": time.time() - t0}
    _write_json(summary, opts.workdir / "summary.json")
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
    opts = DemoOptions(
        workdir=args.workdir or Path("demo" if args.data == "digits" else f"demo-{args.data}"),
        data=args.data,
        data_root=args.data_root,
        mechanism=args.mechanism,
        tokenizer_steps=args.tokenizer_steps,
        var_steps=args.var_steps,
        samples_per_class=args.samples_per_class,
        judge_steps=args.judge_steps,
    )
    run_demo(opts)
    if not args.no_app:
        from app.serve import serve

        _say(f"web UI on http://{args.host}:{args.port} (Ctrl-C to stop)")
        serve([str(opts.workdir / "model")], host=args.host, port=args.port, auth=logins, public=args.public)
    return 0

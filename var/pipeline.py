"""The pipeline's stages as library calls: train the tokenizer, tokenize, train the transformer, train the
judge (emoji), sample and judge.

Each stage takes a :class:`PipelineOptions` (the work folder and the options), reads its preset
``configs/<stage>/<data>.yaml``, writes under ``WORKDIR/runs/``, publishes what users load (``WORKDIR/tokenizer``,
``WORKDIR/model``) through ``scaffold.io.publish_folder``, and returns its numbers. A stage is finished when its
``WORKDIR/runs/<stage>.done.json`` exists (written atomically after the stage; it records the stage's time and
numbers), and a finished stage is reused rather than run again.

`var demo` (``app/demo.py``) runs the stages in order under a lock on the work folder and serves the result;
the benchmarks (``benchmarks/mechanisms.py``, ``benchmarks/fast_sampling.py``) call them one by one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scaffold.errors import UserError
from scaffold.io import atomic_path, publish_folder, write_atomic

__all__ = [
    "CONFIGS",
    "DATASETS",
    "ClassSamples",
    "PipelineError",
    "PipelineOptions",
    "attention_options_used",
    "batched",
    "check_data",
    "emoji_sample_counts",
    "heldout_loss",
    "load_datasets",
    "load_emoji_judge",
    "mechanisms",
    "sample_classes",
    "save_grid",
    "say",
    "stage_emoji_samples",
    "stage_judge",
    "stage_samples",
    "stage_tokenizer",
    "stage_tokens",
    "stage_transformer",
    "tokenizer_report",
    "transformer_config",
    "write_json",
]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the presets, configs/<stage>/<data>.yaml


class PipelineError(UserError, RuntimeError):
    """A pipeline that cannot run: a missing preset, an unknown mechanism, a work folder of other data."""


DATASETS = ("digits", "emoji")


@dataclass
class PipelineOptions:
    """What the stages share: the work folder and the options of one pipeline run (what `var demo` takes)."""

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
        raise PipelineError(
            f"preset {path} not found: run `var demo` from a checkout installed with `pip install -e .`"
        )
    return path


def write_json(obj: dict, path: Path) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def _done(opts: PipelineOptions, stage: str) -> Path:
    return opts.workdir / "runs" / f"{stage}.done.json"


def _data_overrides(opts: PipelineOptions, key: str = "data") -> list[str]:
    return [f"{key}.root={opts.data_root}"] if opts.data_root else []


def check_data(opts: PipelineOptions) -> None:
    """A work folder holds one dataset's pipeline: another's finished stages are never reused or mixed in."""
    marker = opts.workdir / "runs" / "data.json"
    if marker.is_file():
        was = json.loads(marker.read_text()).get("data")
        if was != opts.data:
            raise PipelineError(f"{opts.workdir} holds the {was} demo; run --data {opts.data} in another --workdir")
    elif _done(opts, "tokenizer").is_file() and opts.data != "digits":  # a digits demo from before the marker
        raise PipelineError(f"{opts.workdir} holds the digits demo; run --data {opts.data} in another --workdir")
    write_json({"data": opts.data}, marker)


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _stages(opts: PipelineOptions) -> int:
    return 5 if opts.data == "emoji" else 4


# ---------------------------------------------------------------------------------------- stages


def load_datasets(opts: PipelineOptions, image_size: int):
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
def tokenizer_report(tokenizer_dir: Path, opts: PipelineOptions) -> dict:
    """Held-out PSNR of the exported tokenizer, and the share of its codebook the training images use."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from tokenizer import load_tokenizer

    vae = load_tokenizer(tokenizer_dir)
    train, val = load_datasets(opts, vae.image_size)
    rec = batched(vae.reconstruct, val.images)
    # The mean of the per-image PSNRs (dim: one value per image), in dB.
    p = peak_signal_noise_ratio((rec + 1) / 2, (val.images + 1) / 2, data_range=1.0, dim=(1, 2, 3)).item()
    idx = batched(vae.img_to_idx, train.images)
    V = vae.vocab_size
    per_scale = [i.unique().numel() / V for i in idx]
    used = torch.cat([i.flatten() for i in idx]).unique().numel() / V
    return {"psnr_db": p, "codebook_used": used, "codebook_used_per_scale": per_scale}


def stage_tokenizer(opts: PipelineOptions) -> dict:
    done = _done(opts, "tokenizer")
    if done.is_file() and (opts.workdir / "tokenizer" / "config.yaml").is_file():
        say(f"tokenizer: reusing {opts.workdir / 'tokenizer'}")
        return json.loads(done.read_text())
    from scaffold import load_config
    from tokenizer.train import TokenizerTrainConfig, train_tokenizer

    overrides = [f"out_dir={opts.workdir / 'runs' / 'tokenizer'}", "resume=true", *_data_overrides(opts)]
    if opts.tokenizer_steps is not None:
        overrides += [f"max_steps={opts.tokenizer_steps}", f"ckpt_every_n_steps={max(1, opts.tokenizer_steps)}"]
    cfg = load_config(TokenizerTrainConfig, _preset(CONFIGS / "tokenizer" / f"{opts.data}.yaml"), overrides)
    say(
        f"1/{_stages(opts)} training the tokenizer ({cfg.max_steps} steps, {cfg.model.vocab_size} codes, {cfg.model.patch_nums})"
    )
    t0 = time.time()
    exported = train_tokenizer(cfg)
    publish_folder(exported, opts.workdir / "tokenizer")
    info = {"seconds": time.time() - t0, **tokenizer_report(opts.workdir / "tokenizer", opts)}
    write_json(info, done)
    return info


def stage_tokens(opts: PipelineOptions) -> Path:
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
    say(f"2/{_stages(opts)} tokenizing the {opts.data} once")
    tokenize(cfg)
    write_json({"cache": str(cache)}, done)
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


def stage_transformer(opts: PipelineOptions, cache: Path) -> dict:
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
            say(f"transformer: reusing {model_dir} ({opts.mechanism})")
            return info
        was = _described(info.get("mechanism"), info.get("attention_options", {}))
        say(f"transformer: {model_dir} uses {was}, retraining with {_described(opts.mechanism, options)}")
    say(
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
    write_json(info, done)
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
def heldout_loss(model_dir: Path, opts: PipelineOptions | None = None) -> float:
    """Mean cross-entropy (all tokens) of the exported model on the held-out images, teacher forced."""
    from var.export import load_model

    m = load_model(model_dir)
    val = load_datasets(opts or PipelineOptions(Path(".")), m.vae.image_size)[1]
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


def stage_samples(opts: PipelineOptions) -> dict:
    """A grid (one row per class) and the judge's per-class accuracy over `samples_per_class` each."""
    from var.digits_eval import judge_samples
    from var.export import load_model

    m = load_model(opts.workdir / "model")
    s = m.sampling
    n = max(opts.samples_per_class, opts.grid_per_class)
    say(f"4/4 sampling {m.num_classes * n} images (cfg {s.cfg}, top-k {s.top_k}, top-p {s.top_p}) and judging them")
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


def _judge_path(opts: PipelineOptions) -> Path:
    return opts.workdir / "runs" / "judge.safetensors"


def stage_judge(opts: PipelineOptions, image_size: int) -> dict:
    """The emoji judge, trained on the training emoji only, and its balanced accuracy on the held-out ones."""
    from scaffold import save_state_dict
    from var.emoji_eval import balanced_accuracy, train_emoji_judge

    done = _done(opts, "judge")
    if done.is_file() and _judge_path(opts).is_file():
        return json.loads(done.read_text())
    say(f"4/5 training the judge on the training emoji ({opts.judge_steps} steps)")
    t0 = time.time()
    train, val = load_datasets(opts, image_size)
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
    write_json(info, done)
    return info


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def load_emoji_judge(opts: PipelineOptions, num_classes: int, image_size: int):
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


def stage_emoji_samples(opts: PipelineOptions) -> dict:
    """Samples of every category (at least as many as it has held-out emoji), judged (var.emoji_eval), and a
    grid of the first `grid_per_class` of each."""
    from var.emoji_eval import judge_emoji
    from var.export import load_model

    m = load_model(opts.workdir / "model")
    train, val = load_datasets(opts, m.vae.image_size)
    judge = load_emoji_judge(opts, len(train.class_names), m.vae.image_size)
    counts = emoji_sample_counts(val.labels, m.num_classes, max(opts.samples_per_class, opts.grid_per_class))
    s = m.sampling
    say(f"5/5 sampling {sum(counts)} images (cfg {s.cfg}, top-k {s.top_k}, top-p {s.top_p}) and judging them")
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

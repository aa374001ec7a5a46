"""What the fast sampling modes cost in quality and what they save in time (var.settings' fast-mode fields).

Two measurements, each in one run on one machine:

- ``quality``: a trained model of `var demo` (the emoji: 7 scales up to 8x8; or the digits: 4 scales) samples
  the same images (the same labels and per-image seeds) with exact sampling and with every fast mode of
  `MODES` and every named speed of `var.settings.SPEEDS`, and each set is judged as the demo judges it:
  judged accuracy (balanced over the categories on the emoji) and the Frechet distance in the judge's
  features, plus the sampling time of the whole set (decoder included) and the transformer's work (rows x
  tokens over every scale) against exact. A Pareto plot (time against Frechet distance) goes beside the table.
- ``speed``: the d16 transformer with random weights (speed does not depend on them) at 256 px (B=4, end to
  end: transformer and decoder), 512 px (B=4) and 1024 px (B=1; the transformer alone, a 1024 px decoder
  would dominate a CPU run), every named speed in fp32 (and ``--auto`` for "auto" precision), against the
  published sampler (``--compare-published DIR``, a checkout of the published VAR code, never committed)
  with the same weights, batch and settings, measured alternately.

Usage::

    python benchmarks/fast_sampling.py quality --data emoji --workdir demo-emoji --out benchmarks/results/
    python benchmarks/fast_sampling.py quality --data digits --workdir demo --out benchmarks/results/
    python benchmarks/fast_sampling.py speed --compare-published ../VAR --out benchmarks/results/
    python benchmarks/fast_sampling.py plot benchmarks/results/fast_sampling_quality-*.json   # the plot again
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import markdown_table, metadata, sync, write_results

from kernels import ScaleLayout
from var.settings import SPEEDS, SamplingSettings

# Fast modes measured besides the named speeds: each a change of the fast-mode fields over exact sampling.
MODES: dict[str, dict[str, float]] = {
    # "guide G": guidance_until G; "prune F/K": prune_from F, prune_keep K; "stop T": stop_after T
    "guide 0.8": {"guidance_until": 0.8},
    "guide 0.6": {"guidance_until": 0.6},
    "guide 0.4": {"guidance_until": 0.4},
    "guide 0": {"guidance_until": 0.0},
    "prune 0.8/0.7": {"prune_from": 0.8, "prune_keep": 0.7},
    "prune 0.8/0.5": {"prune_from": 0.8, "prune_keep": 0.5},
    "prune 0.8/0.3": {"prune_from": 0.8, "prune_keep": 0.3},
    "prune 0.6/0.5": {"prune_from": 0.6, "prune_keep": 0.5},
    "prune 0.6/0.3": {"prune_from": 0.6, "prune_keep": 0.3},
    "prune 0.9/0.5": {"prune_from": 0.9, "prune_keep": 0.5},
    "prune 0.9/0.3": {"prune_from": 0.9, "prune_keep": 0.3},
    "stop 0.9": {"stop_after": 0.9},
    "guide 0.8 + prune 0.8/0.5": {"guidance_until": 0.8, "prune_from": 0.8, "prune_keep": 0.5},
    "guide 0.6 + prune 0.8/0.7": {"guidance_until": 0.6, "prune_from": 0.8, "prune_keep": 0.7},
    "guide 0.6 + prune 0.9/0.5": {"guidance_until": 0.6, "prune_from": 0.9, "prune_keep": 0.5},
    "guide 0.4 + prune 0.8/0.7": {"guidance_until": 0.4, "prune_from": 0.8, "prune_keep": 0.7},
    "guide 0.4 + prune 0.9/0.5": {"guidance_until": 0.4, "prune_from": 0.9, "prune_keep": 0.5},
    "guide 0.6 + prune 0.8/0.5": {"guidance_until": 0.6, "prune_from": 0.8, "prune_keep": 0.5},
    "guide 0.6 + prune 0.8/0.3": {"guidance_until": 0.6, "prune_from": 0.8, "prune_keep": 0.3},
    "guide 0.6 + prune 0.6/0.3": {"guidance_until": 0.6, "prune_from": 0.6, "prune_keep": 0.3},
    "guide 0.4 + prune 0.6/0.3": {"guidance_until": 0.4, "prune_from": 0.6, "prune_keep": 0.3},
}


def modes(only: str | None = None) -> dict[str, dict[str, float]]:
    """The named speeds (exact first) and `MODES`; `only`: a comma-separated subset of names."""
    out = {f"speed {name}": values for name, values in SPEEDS.items()} | MODES
    if only:
        names = only.split(",")
        missing = [n for n in names if n not in out]
        if missing:
            raise SystemExit(f"unknown modes {missing}; known: {list(out)}")
        out = {n: out[n] for n in names}
    return out


def work(s: SamplingSettings, patch_nums: tuple[int, ...]) -> float:
    """Rows x tokens the transformer runs over every scale, as a share of exact sampling's."""
    layout = ScaleLayout.of(patch_nums)
    S = layout.num_scales
    exact = (2 if s.cfg else 1) * layout.num_tokens
    done = 0.0
    for si, n in enumerate(layout.sizes):
        if not s.runs(si, S):
            break
        tokens = max(1, round(s.prune_keep * n)) if s.pruned_at(si, S) else n
        done += (2 if s.guided_at(si, S) else 1) * tokens
    return done / exact


# ------------------------------------------------------------------------------------------ quality
def _sample_set(m, settings: SamplingSettings, counts: list[int], seed: int, batch: int = 256):
    """Images of every class (`counts[c]` of class c), image i drawn with its own generator seeded
    ``seed * 1_000_003 + i`` (as the demo draws them), their labels, and the seconds it took."""
    from var.sample import sample

    labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    per_image = [seed * 1_000_003 + i for i in range(len(labels))]
    t0 = time.perf_counter()
    images = [
        sample(m.model, m.vae, labels[i : i + batch], settings, seed=per_image[i : i + batch])
        for i in range(0, len(labels), batch)
    ]
    return torch.cat(images), labels, time.perf_counter() - t0


def quality(args: argparse.Namespace) -> None:
    from var.export import load_model
    from var.pipeline import PipelineOptions, batched, emoji_sample_counts, load_datasets, load_emoji_judge, save_grid

    torch.manual_seed(0)
    m = load_model(args.workdir / "model")
    opts = PipelineOptions(workdir=args.workdir, data=args.data, data_root=args.data_root)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = m.sampling
    if args.data == "emoji":
        from var.emoji_eval import judge_emoji

        train, val = load_datasets(opts, m.vae.image_size)
        judge = load_emoji_judge(opts, len(train.class_names), m.vae.image_size)
        counts = emoji_sample_counts(val.labels, m.num_classes, args.samples_per_class)
        with torch.no_grad():
            train_rec = (batched(m.vae.reconstruct, train.images) + 1) / 2
            val_rec = (batched(m.vae.reconstruct, val.images) + 1) / 2

        def judged(images, labels):
            r = judge_emoji(
                judge, images, labels, train.images, train.labels, val.images, val.labels, train_rec, val_rec,
                class_names=train.class_names,
            )  # fmt: skip
            return {"accuracy": r.accuracy, "frechet": r.frechet, "frechet_floor": r.frechet_floor}
    else:
        from var.digits_eval import judge_samples, load_judge

        judge = load_judge(m.vae.image_size)
        counts = [args.samples_per_class] * m.num_classes

        def judged(images, labels):
            r = judge_samples(images, labels, judge)
            return {"accuracy": r.accuracy, "frechet": r.frechet}

    rows, grids = [], {}
    for name, fields in modes(args.modes).items():
        s = base.replace(**SPEEDS["exact"]).replace(**fields)
        per_seed, seconds = [], 0.0
        for seed in seeds:  # each seed's set judged on its own (the Frechet distance takes n per class), then averaged
            images, labels, t = _sample_set(m, s, counts, seed)
            per_seed.append(judged(images, labels))
            seconds += t
            if seed == seeds[0] and name.startswith("speed "):
                grids[name] = images
        row = {"mode": name, **{k: getattr(s, k) for k in SPEEDS["exact"]}}
        for key in per_seed[0]:
            values = [j[key] for j in per_seed]
            row[key] = statistics.fmean(values)
            if len(values) > 1 and key in ("accuracy", "frechet"):
                row[f"{key}_sd"] = statistics.stdev(values)
        row.update(seconds=seconds, images=len(labels) * len(seeds), work=work(s, m.model.patch_nums))
        if rows:
            ref = rows[0]
            row.update(
                speedup=ref["seconds"] / seconds,
                accuracy_change=row["accuracy"] - ref["accuracy"],
                frechet_change=row["frechet"] / ref["frechet"] - 1,
            )
        rows.append(row)
        print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    meta = metadata(
        torch.device("cpu"),
        data=args.data,
        model=str(args.workdir / "model"),
        patch_nums=list(m.model.patch_nums),
        settings={k: v for k, v in base.as_dict().items() if k not in SPEEDS["exact"]},
        seeds=seeds,
        samples_per_class=counts,
        speeds=SPEEDS,
        note="the same labels and per-image seeds for every mode; seconds: sampling the whole set, decoder "
        "included; work: transformer rows x tokens over exact's; *_change: against exact",
    )
    cols = ["mode", "guidance_until", "prune_from", "prune_keep", "stop_after", "accuracy", "accuracy_sd"]
    cols += ["accuracy_change", "frechet", "frechet_sd", "frechet_change", "seconds", "speedup", "work"]
    md = (
        f"# Fast sampling modes: quality and time ({args.data})\n\n{meta['device']}, {meta['date']}, commit "
        f"{meta['commit']}, torch {meta['torch']}; model {meta['model']} (scales {meta['patch_nums']}), settings "
        f"{meta['settings']}; {rows[0]['images']} samples per mode ({len(labels)} for each of the seeds {seeds}, "
        f"judged seed by seed; mean and sd over the seeds). accuracy: judged"
        f"{' (balanced over categories)' if args.data == 'emoji' else ''}; frechet: in the judge's features.\n\n"
        + markdown_table(rows, cols)
    )
    print(md)
    if args.out:
        base_path = write_results(args.out, f"fast_sampling_quality_{args.data}", meta, rows, md)
        plot(base_path.with_suffix(".json"))
        if grids:
            G = min(8, min(counts))
            for name, imgs in grids.items():
                per = [imgs[sum(counts[:c]) : sum(counts[:c]) + G] for c in range(len(counts))]
                slug = name.split()[-1]
                save_grid(torch.cat(per), G, G, Path(f"{base_path}-{slug}.png"), tile_px=64, colors=128)
        print("wrote", base_path)


def pareto(rows: list[dict], cost: str = "seconds") -> list[dict]:
    """The rows no other row beats on both `cost` (seconds, or work) and Frechet distance, cheapest first."""
    front = [r for r in rows if not any(o[cost] <= r[cost] and o["frechet"] < r["frechet"] for o in rows)]
    return sorted(front, key=lambda r: r[cost])


def plot(json_path: Path) -> Path | None:
    """Frechet distance against the time (left) and against the transformer's work (right), one point a mode,
    the Pareto fronts joined: `<results>.png`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return None
    data = json.loads(Path(json_path).read_text())
    rows, meta = data["rows"], data["meta"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    for ax, cost, label in (
        (axes[0], "seconds", f"seconds for {rows[0]['images']} samples (decoder included)"),
        (axes[1], "work", "transformer work: rows x tokens over every scale, share of exact"),
    ):
        for r in rows:
            named = r["mode"].startswith("speed ")
            ax.scatter(r[cost], r["frechet"], s=40 if named else 14, c="C3" if named else "C0", zorder=3)
            ax.annotate(r["mode"].removeprefix("speed "), (r[cost], r["frechet"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
        front = pareto(rows, cost)
        ax.plot([r[cost] for r in front], [r["frechet"] for r in front], c="C1", lw=1, zorder=2, label="Pareto front")
        ax.set_xlabel(label)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("Frechet distance (judge features; lower is better)")
    fig.suptitle(f"Fast sampling modes, {meta['data']} ({meta['device']}, {meta['date'][:10]})", fontsize=9)
    out = Path(json_path).with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print("wrote", out)
    return out


# -------------------------------------------------------------------------------------------- speed
SPEED_CASES = ((256, 4, True), (512, 4, False), (1024, 1, False))  # (px, batch, with the decoder)


class _Ours:
    """Our sampler with settings `s`, timed in two parts: `transformer` (every scale) and the whole call."""

    def __init__(self, model, vae, labels, s: SamplingSettings, with_decoder: bool) -> None:
        self.model, self.vae, self.labels, self.s, self.with_decoder = model, vae, labels, s, with_decoder
        self.transformer: list[float] = []

    def __call__(self) -> None:
        from var.sample import decode, generate

        t0 = time.perf_counter()
        for scale in generate(self.model, self.vae, self.labels, self.s):
            f_hat = scale.f_hat
        sync(self.labels.device)
        self.transformer.append(time.perf_counter() - t0)
        if self.with_decoder:
            decode(self.vae, f_hat, self.s.precision)

    def transformer_s(self) -> float:
        steady = self.transformer[1:] or self.transformer  # the first call warms up where there are repeats
        return sorted(steady)[len(steady) // 2]


class _Published:
    """The published sampler with the same weights; its own decode is timed apart (`decoder`), or skipped and
    replaced by zeros without the decoder (1024 px), so that its transformer time is its total less that."""

    def __init__(self, repo: Path, model, vae, labels, with_decoder: bool) -> None:
        from sample import published_models

        self.pub, pub_vae = published_models(repo, model, vae, labels.device)
        self.labels, self.with_decoder, self.decoder, self.res = labels, with_decoder, [], vae.image_size
        self._decode = pub_vae.fhat_to_img
        pub_vae.fhat_to_img = self._timed_decode

    def _timed_decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        sync(f_hat.device)
        t0 = time.perf_counter()
        out = self._decode(f_hat) if self.with_decoder else f_hat.new_zeros(len(f_hat), 3, self.res, self.res)
        sync(f_hat.device)
        self.decoder.append(time.perf_counter() - t0)
        return out

    def __call__(self) -> None:
        from sample import SETTING

        with torch.inference_mode():
            self.pub.autoregressive_infer_cfg(B=len(self.labels), label_B=self.labels, g_seed=0, **SETTING)


def _speed_case(res: int, B: int, with_decoder: bool, args: argparse.Namespace) -> list[dict]:
    from _common import timed, timed_pair
    from sample import SETTINGS
    from scaling import PATCH_NUMS

    from tokenizer import MultiScaleVQVAE, VQVAEConfig
    from var import VAR, preset

    device = torch.device(args.device)
    patch_nums = PATCH_NUMS[res]
    torch.manual_seed(0)
    model = VAR(preset("d16", patch_nums=patch_nums)).to(device).eval()
    vae = MultiScaleVQVAE(VQVAEConfig(patch_nums=patch_nums)).to(device).eval()
    labels = torch.arange(B, device=device) % model.config.num_classes
    repeats = args.repeats if res == 256 else 1
    published = _Published(args.compare_published, model, vae, labels, with_decoder) if args.compare_published else None
    rows, exact, pub = [], None, None
    for name in args.speeds.split(","):
        for precision in ("fp32", "auto") if args.auto and res == 256 else ("fp32",):
            s = SamplingSettings.preset(name, SETTINGS).replace(precision=precision)
            ours = _Ours(model, vae, labels, s, with_decoder)
            if published is not None and pub is None and name == "exact" and precision == "fp32":
                t, t_pub = timed_pair(ours, published, device, repeats=repeats)
                steady = published.decoder[1:] or published.decoder
                pub = (t_pub, t_pub - sorted(steady)[len(steady) // 2])
            else:
                t = timed(ours, device, repeats=repeats, warmup=1 if repeats > 1 else 0)
            row = dict(
                resolution=res, tokens=ScaleLayout.of(patch_nums).num_tokens, batch=B, speed=name, precision=precision
            )
            row.update(decoder=with_decoder, seconds=t, transformer_s=ours.transformer_s(), work=work(s, patch_nums))
            if exact is None and name == "exact" and precision == "fp32":
                exact = (t, row["transformer_s"])
            if exact is not None:
                row.update(vs_exact=exact[0] / t, transformer_vs_exact=exact[1] / row["transformer_s"])
            if pub is not None:
                row.update(published_s=pub[0], published_transformer_s=pub[1])
                row.update(vs_published=pub[0] / t, transformer_vs_published=pub[1] / row["transformer_s"])
            rows.append(row)
            print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def speed(args: argparse.Namespace) -> None:
    rows = []
    for res, B, with_decoder in SPEED_CASES:
        if str(res) in args.resolutions.split(","):
            rows += _speed_case(res, B, with_decoder, args)
    meta = metadata(
        torch.device(args.device),
        depth=16,
        setting={"cfg": 1.5, "top_k": 900, "top_p": 0.96},
        speeds=SPEEDS,
        note="random d16 weights; seconds: end to end with the decoder at 256 px, the transformer alone at 512 "
        "and 1024 px (decoder: False); the published sampler with the same weights in the same run, its "
        "transformer time being its total less its own decode (timed apart)",
    )
    cols = ["resolution", "tokens", "batch", "speed", "precision", "decoder", "seconds", "transformer_s", "work"]
    cols += ["vs_exact", "transformer_vs_exact", "published_s", "vs_published", "transformer_vs_published"]
    md = (
        f"# Fast sampling modes: speed (d16)\n\n{meta['device']}, {meta['date']}, commit {meta['commit']}, torch "
        f"{meta['torch']}; cfg 1.5 / top-k 900 / top-p 0.96; the speeds: {SPEEDS}\n\n" + markdown_table(rows, cols)
    )
    print(md)
    if args.out:
        print("wrote", write_results(args.out, "fast_sampling_speed", meta, rows, md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality", help="judged quality and time of every mode on a `var demo` model")
    q.add_argument("--data", choices=("emoji", "digits"), default="emoji")
    q.add_argument("--workdir", type=Path, required=True, help="a finished `var demo` folder")
    q.add_argument("--data-root", help="emoji: an unpacked package instead of the cache")
    q.add_argument("--seeds", default="0,1,2", help="sample seeds: each draws one set of every class")
    q.add_argument("--samples-per-class", type=int, default=20)
    q.add_argument("--modes", help="a comma-separated subset of the mode names (default: all)")
    q.add_argument("--out", type=Path)
    sp = sub.add_parser("speed", help="d16 speed of every named speed against the published sampler")
    sp.add_argument("--speeds", default=",".join(SPEEDS))
    sp.add_argument("--resolutions", default="256,512,1024")
    sp.add_argument("--repeats", type=int, default=3, help="timed runs at 256 px (one at 512 and 1024)")
    sp.add_argument("--auto", action="store_true", help="also precision auto (bf16 where native) at 256 px")
    sp.add_argument("--compare-published", metavar="DIR", type=Path)
    sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sp.add_argument("--out", type=Path)
    pl = sub.add_parser("plot", help="the Pareto plot of a quality results file")
    pl.add_argument("json", type=Path)
    args = p.parse_args()
    {"quality": quality, "speed": speed, "plot": lambda a: plot(a.json)}[args.what](args)


if __name__ == "__main__":
    main()

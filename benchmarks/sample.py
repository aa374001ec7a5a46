"""Sampling throughput (images/s) and peak memory of `var.sample`, per mechanism, backend and precision.

Every configuration samples with the published FID setting (cfg 1.5, top-k 900, top-p 0.96) from
randomly initialised weights (throughput does not depend on the weights). With
`--compare-published DIR` (a local checkout of the published VAR code, never committed), the
published `autoregressive_infer_cfg` samples with the *same* weights, batch and settings in the same
run, and the table gains the ratio ours / published.

Every result also carries the distance to the machine's limit: the fp32 and bf16 (and on GPU fp16)
matrix-multiply throughput measured in the same run, and the share of it that the transformer and the
VAE decoder each reach (their FLOPs, counted by torch's FlopCounterMode, over their time).

Usage::

    python benchmarks/sample.py --quick --out benchmarks/results/            # CPU, < 1 minute
    python benchmarks/sample.py --depth 16 --batch-sizes 4 --mechanisms full \\
        --precisions fp32,auto --repeats 3 --compare-published ../VAR --out benchmarks/results/  # the CPU target
    python benchmarks/sample.py --depth 16 --batch-sizes 1,64 --mechanisms full --precisions fp32,auto \\
        --compile none,reduce-overhead --repeats 5 --compare-published ../VAR --out benchmarks/results/  # GPU

`--compile reduce-overhead` samples through `var.sample.CompiledStep` (static key/value caches, one
compiled graph per scale, CUDA graphs); the one-off compile time of the process is reported as `compile_s`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import _common
import torch
from _common import (
    MECHANISMS,
    attention_of,
    count_flops,
    metadata,
    peak_gemm_flops_per_s,
    peak_mib,
    publish,
    reset_peak,
    sync,
    timed,
    timed_pair,
)

from kernels import ENV_VAR
from scaffold.precision import autocast, resolve_precision
from tokenizer import MultiScaleVQVAE, VQVAEConfig
from var import VAR, preset
from var.official import official_mask_bias
from var.sample import CompiledStep, decode, generate
from var.settings import SamplingSettings

PATCH_NUMS = {px: pns for px, pns in _common.PATCH_NUMS.items() if px <= 512}  # the published resolutions
SETTINGS = SamplingSettings()  # the published FID setting (docs/architecture.md section 8), seed 0, fp32
# the same as the published sampler's arguments, and as recorded with the results
SETTING = dict(cfg=SETTINGS.cfg, top_k=SETTINGS.top_k, top_p=SETTINGS.top_p)


def build(
    mechanism: str, depth: int, resolution: int, quick: bool, device: torch.device
) -> tuple[VAR, MultiScaleVQVAE]:
    patch_nums = PATCH_NUMS[resolution]
    torch.manual_seed(0)
    model = VAR(
        preset(
            f"d{depth}" if depth in (16, 20, 24, 30) else "d16",
            depth=depth,
            patch_nums=patch_nums,
            attention=attention_of(mechanism, depth),
        )
    )
    # --quick: a narrow tokenizer, so that the small transformer, not the decoder, is what is timed
    vae_cfg = VQVAEConfig(patch_nums=patch_nums, ch=32 if quick else 160)
    return model.to(device).eval(), MultiScaleVQVAE(vae_cfg).to(device).eval()


def published_models(repo: Path, model: VAR, vae: MultiScaleVQVAE, device: torch.device):
    """The published VAR and VQVAE (from the checkout `repo`) holding the weights of `model` and `vae`, in eval mode."""
    sys.path.insert(0, str(repo))
    from models.var import VAR as PublishedVAR
    from models.vqvae import VQVAE as PublishedVQVAE

    cfg = model.config
    pub_vae = PublishedVQVAE(
        vocab_size=vae.vocab_size,
        z_channels=vae.c_vae,
        ch=vae.config.ch,
        test_mode=True,
        share_quant_resi=vae.config.num_phi,
        v_patch_nums=tuple(vae.patch_nums),
    )
    pub_vae.load_state_dict(vae.state_dict(), strict=True)
    pub = PublishedVAR(
        vae_local=pub_vae,
        num_classes=cfg.num_classes,
        depth=cfg.depth,
        embed_dim=cfg.width,
        num_heads=cfg.heads,
        norm_eps=cfg.norm_eps,
        shared_aln=cfg.shared_aln,
        attn_l2_norm=cfg.attn_l2_norm,
        patch_nums=tuple(cfg.patch_nums),
        drop_path_rate=cfg.resolved_drop_path_rate(),
    )
    sd = {**model.state_dict(), "attn_bias_for_masking": official_mask_bias(model.patch_nums)}
    pub.load_state_dict(sd, strict=True)
    return pub.to(device).eval(), pub_vae.to(device)


def published_sampler(repo: Path, model: VAR, vae: MultiScaleVQVAE, device: torch.device):
    """The published sampler with our weights: `fn(labels, precision) -> images`, under the autocast that our
    sampler uses for that precision (scaffold.precision.autocast)."""
    pub, _ = published_models(repo, model, vae, device)

    def run(labels: torch.Tensor, precision: str):
        with torch.inference_mode(), autocast(device, precision):
            return pub.autoregressive_infer_cfg(B=len(labels), label_B=labels, g_seed=0, **SETTING)

    return run


class Sampler:
    """`var.sample.sample` split in its two parts, each timed: the transformer (`generate`, every scale)
    and the VAE decode. `parts` holds (transformer s, decoder s) per call, the first being the warm-up."""

    def __init__(self, model, vae, labels, settings: SamplingSettings, step, device: torch.device) -> None:
        self.model, self.vae, self.labels, self.settings, self.step, self.device = (
            model,
            vae,
            labels,
            settings,
            step,
            device,
        )
        self.parts: list[tuple[float, float]] = []

    def __call__(self) -> torch.Tensor:
        t0 = time.perf_counter()
        for scale in generate(self.model, self.vae, self.labels, self.settings, step=self.step):
            f_hat = scale.f_hat
        sync(self.device)
        t1 = time.perf_counter()
        imgs = decode(self.vae, f_hat, self.settings.precision)
        sync(self.device)
        self.parts.append((t1 - t0, time.perf_counter() - t1))
        return imgs

    def medians(self) -> tuple[float, float]:
        steady = self.parts[1:] or self.parts
        mid = len(steady) // 2
        return sorted(p[0] for p in steady)[mid], sorted(p[1] for p in steady)[mid]


def flops_per_image(model, vae, device: torch.device) -> tuple[float, float]:
    """FLOPs of one image's transformer part (with guidance: two rows) and of its decode, counted eagerly."""
    labels = torch.zeros(1, dtype=torch.long, device=device)
    steps: list = []
    transformer = count_flops(lambda: steps.extend(generate(model, vae, labels, SETTINGS)))
    return transformer, count_flops(lambda: decode(vae, steps[-1].f_hat, SETTINGS.precision))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized: depth 2, a narrow tokenizer, batch 1 and 4")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--resolutions", default="256")
    p.add_argument("--mechanisms", default=",".join(MECHANISMS))
    p.add_argument("--backends", default="triton,torch", help="triton is skipped where it cannot run (CPU)")
    p.add_argument("--precisions", default="fp32", help="fp32, bf16, fp16 (autocast), auto (bf16 where native)")
    p.add_argument(
        "--compile",
        default="none",
        help="none (eager), or torch.compile modes of the per-scale step with static caches: "
        "reduce-overhead (CUDA graphs), default, max-autotune",
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--compare-published", metavar="DIR", type=Path, help="a checkout of the published VAR code")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="write JSON + Markdown here (e.g. benchmarks/results/)")
    args = p.parse_args()
    if args.quick:
        args.depth, args.batch_sizes, args.resolutions = 2, "1,4", "256"
    device = torch.device(args.device)
    backends = [b for b in args.backends.split(",") if b == "torch" or device.type == "cuda"]
    gemm_dtypes = {
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        **({"fp16": torch.float16} if device.type == "cuda" else {}),
    }
    gemm, gemm_shape = {}, {}
    # the transformer's linear layers at d16 width (qkv, proj, fc1, fc2; the head is fc1's shape), 2048 rows
    shapes = [(2048, 1024, 3072), (2048, 1024, 1024), (2048, 1024, 4096), (2048, 4096, 1024)]
    for name, dtype in gemm_dtypes.items():
        gemm[name], gemm_shape[name] = peak_gemm_flops_per_s(dtype, device, shapes)
        print(f"GEMM {name} {'x'.join(map(str, gemm_shape[name]))}: {gemm[name] / 1e9:.3g} GFLOP/s", flush=True)
    rows = []
    for res in map(int, args.resolutions.split(",")):
        for mech in args.mechanisms.split(","):
            model, vae = build(mech, args.depth, res, args.quick, device)
            flops_t, flops_d = flops_per_image(model, vae, device)
            pub = (
                published_sampler(args.compare_published, model, vae, device)
                if (args.compare_published and mech == "full")
                else None
            )
            for backend in backends:
                os.environ[ENV_VAR] = backend
                for mode in args.compile.split(","):
                    step = None if mode == "none" else CompiledStep(model, mode=None if mode == "default" else mode)
                    for precision in args.precisions.split(","):
                        resolved = resolve_precision(precision, device)
                        for B in map(int, args.batch_sizes.split(",")):
                            labels = torch.arange(B, device=device) % model.config.num_classes
                            reset_peak(device)
                            settings = SETTINGS.replace(precision=precision)
                            ours = Sampler(model, vae, labels, settings=settings, step=step, device=device)
                            if pub is not None and backend == "torch":
                                t, t_pub = timed_pair(
                                    ours, partial(pub, labels, resolved), device, repeats=args.repeats
                                )
                            else:
                                t, t_pub = timed(ours, device, repeats=args.repeats, warmup=1), None
                            t_transformer, t_decoder = ours.medians()
                            limit = gemm.get(resolved)
                            row = dict(
                                resolution=res,
                                mechanism=mech,
                                backend=backend,
                                compile=mode,
                                precision=precision,
                                resolved=resolved,
                                batch=B,
                                images_per_s=B / t,
                                transformer_s=t_transformer,
                                decoder_s=t_decoder,
                                transformer_gemm_share=B * flops_t / t_transformer / limit if limit else None,
                                decoder_gemm_share=B * flops_d / t_decoder / limit if limit else None,
                                compile_s=sum(ours.parts[0]) - t if step is not None else None,
                                peak_mib=peak_mib(device),
                            )
                            if t_pub is not None:
                                row.update(published_images_per_s=B / t_pub, ratio_vs_published=t_pub / t)
                            rows.append(row)
                            print(row, flush=True)
            os.environ.pop(ENV_VAR, None)
            del model, vae
    meta = metadata(
        device,
        depth=args.depth,
        setting=SETTING,
        quick=args.quick,
        gemm_gflops={k: v / 1e9 for k, v in gemm.items()},
        gemm_shape={k: "x".join(map(str, v)) for k, v in gemm_shape.items()},
        gflop_per_image={"transformer": flops_t / 1e9, "decoder": flops_d / 1e9},
        note="random weights; throughput of the whole sampler incl. the VAE decode; *_gemm_share: the part's "
        "FLOP/s over the GEMM FLOP/s of its resolved precision, measured in the same run",
    )
    cols = [
        "resolution",
        "mechanism",
        "backend",
        "compile",
        "precision",
        "resolved",
        "batch",
        "images_per_s",
        "transformer_s",
        "decoder_s",
        "transformer_gemm_share",
        "decoder_gemm_share",
        "compile_s",
        "peak_mib",
        "published_images_per_s",
        "ratio_vs_published",
    ]
    gemm_text = ", ".join(f"{k} {v / 1e9:.3g} ({'x'.join(map(str, gemm_shape[k]))})" for k, v in gemm.items())
    details = (
        f"depth {args.depth}, cfg 1.5 / top-k 900 / top-p 0.96; GEMM GFLOP/s (m x k x n) in the same run: {gemm_text}"
    )
    publish(args, "sample", "Sampling throughput", details, meta, rows, cols, device)


if __name__ == "__main__":
    main()

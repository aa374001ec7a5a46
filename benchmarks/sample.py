"""Sampling throughput (images/s) and peak memory of `var.sample`, per mechanism, backend and precision.

Every configuration samples with the published FID setting (cfg 1.5, top-k 900, top-p 0.96) from
randomly initialised weights (throughput does not depend on the weights). With
`--compare-published DIR` (a local checkout of the published VAR code, never committed), the
published `autoregressive_infer_cfg` samples with the *same* weights, batch and settings in the same
run, and the table gains the ratio ours / published.

Usage::

    python benchmarks/sample.py --quick --out benchmarks/results/            # CPU, < 1 minute
    python benchmarks/sample.py --depth 16 --batch-sizes 4 --mechanisms full \\
        --precisions fp32,bf16 --compare-published ../VAR --out benchmarks/results/   # the CPU target
    python benchmarks/sample.py --depth 16 --batch-sizes 1,16,64 --resolutions 256,512 \\
        --precisions bf16 --compare-published ../VAR --out benchmarks/results/       # on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

import torch
from _common import (
    MECHANISMS,
    attention_of,
    markdown_table,
    metadata,
    peak_mib,
    reset_peak,
    timed,
    timed_pair,
    write_results,
)

from kernels import ENV_VAR
from tokenizer import PATCH_NUMS_256, PATCH_NUMS_512, MultiScaleVQVAE, VQVAEConfig
from var import VAR, preset, sample
from var.checkpoint import official_mask_bias

PATCH_NUMS = {256: PATCH_NUMS_256, 512: PATCH_NUMS_512}
SETTING = dict(cfg=1.5, top_k=900, top_p=0.96)  # the published FID setting (DESIGN.md section 8)


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


def published_sampler(repo: Path, model: VAR, vae: MultiScaleVQVAE, device: torch.device):
    """The published VAR and VQVAE with our weights; returns `fn(B, labels) -> images`."""
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
    pub = pub.to(device).eval()
    pub_vae.to(device)

    def run(labels: torch.Tensor, autocast_dtype: torch.dtype | None):
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
        ):
            return pub.autoregressive_infer_cfg(B=len(labels), label_B=labels, g_seed=0, **SETTING)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized: depth 2, a narrow tokenizer, batch 1 and 4")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--resolutions", default="256")
    p.add_argument("--mechanisms", default=",".join(MECHANISMS))
    p.add_argument("--backends", default="triton,torch", help="triton is skipped where it cannot run (CPU)")
    p.add_argument("--precisions", default="fp32", help="fp32, bf16, fp16 (autocast)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--compare-published", metavar="DIR", type=Path, help="a checkout of the published VAR code")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="write JSON + Markdown here (e.g. benchmarks/results/)")
    args = p.parse_args()
    if args.quick:
        args.depth, args.batch_sizes, args.resolutions = 2, "1,4", "256"
    device = torch.device(args.device)
    backends = [b for b in args.backends.split(",") if b == "torch" or device.type == "cuda"]
    rows = []
    for res in map(int, args.resolutions.split(",")):
        for mech in args.mechanisms.split(","):
            model, vae = build(mech, args.depth, res, args.quick, device)
            pub = (
                published_sampler(args.compare_published, model, vae, device)
                if (args.compare_published and mech == "full")
                else None
            )
            for backend in backends:
                os.environ[ENV_VAR] = backend
                for precision in args.precisions.split(","):
                    for B in map(int, args.batch_sizes.split(",")):
                        labels = torch.arange(B, device=device) % model.config.num_classes
                        reset_peak(device)
                        ours = partial(sample, model, vae, labels, seed=0, precision=precision, **SETTING)
                        if pub is not None and backend == "torch":
                            dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
                            t, t_pub = timed_pair(ours, partial(pub, labels, dtype), device, repeats=args.repeats)
                        else:
                            t, t_pub = timed(ours, device, repeats=args.repeats, warmup=1), None
                        row = dict(
                            resolution=res,
                            mechanism=mech,
                            backend=backend,
                            precision=precision,
                            batch=B,
                            images_per_s=B / t,
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
        note="random weights; throughput of the whole sampler incl. the VAE decode",
    )
    cols = [
        "resolution",
        "mechanism",
        "backend",
        "precision",
        "batch",
        "images_per_s",
        "peak_mib",
        "published_images_per_s",
        "ratio_vs_published",
    ]
    md = (
        f"# Sampling throughput\n\n{meta['device']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}, "
        f"depth {args.depth}, cfg 1.5 / top-k 900 / top-p 0.96; peak memory: "
        f"{'CUDA peak allocated' if device.type == 'cuda' else 'process peak RSS (upper bound)'}\n\n"
        + markdown_table(rows, cols)
    )
    print(md)
    if args.out:
        print(
            "wrote", write_results(args.out, "sample-" + ("quick" if args.quick else f"d{args.depth}"), meta, rows, md)
        )


if __name__ == "__main__":
    main()

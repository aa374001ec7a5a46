"""How far this project's d16 is from the published code, on each CPU GEMM library (`var.linear`).

Builds VAR-d16 and the VQVAE with random weights, loads the same weights into the published
`models.var.VAR` (a local checkout, never committed), and prints, for `VAR_CPU_GEMM=blas` and `onednn`:
the largest absolute difference of the teacher-forcing logits, whether greedy sampling (top-k 1, cfg 1.5)
chose the same tokens at every scale, and how far the greedy images are apart (in [0, 1], and as 8-bit values).
The published code runs its linear layers on PyTorch's `F.linear` (MKL on x86), as `blas` does.

Usage::

    python benchmarks/parity.py --published ../VAR --out benchmarks/results/
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from _common import markdown_table, metadata, write_results
from sample import build, published_models

from kernels import CPU_GEMM_ENV_VAR, onednn_linear_available
from var import sample


def to_uint8(imgs: torch.Tensor) -> torch.Tensor:
    return imgs.mul(255).round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--published", type=Path, required=True, metavar="DIR", help="a checkout of the published VAR")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", type=Path, help="write JSON + Markdown here (e.g. benchmarks/results/)")
    args = p.parse_args()
    device = torch.device("cpu")
    model, vae = build("full", 16, 256, False, device)
    pub, pub_vae = published_models(args.published, model, vae, device)
    labels = torch.arange(args.batch) * 7 % model.config.num_classes
    g = torch.Generator().manual_seed(0)
    x_BLCv = torch.randn(args.batch, model.L - 1, model.config.c_vae, generator=g)
    pub_idx: list[torch.Tensor] = []  # the published loop embeds each scale's chosen tokens: record them there
    pub_vae.quantize.embedding.register_forward_hook(lambda module, inputs, output: pub_idx.append(inputs[0]))
    pub.cond_drop_rate = 0.0  # the published forward drops labels even in eval mode
    with torch.inference_mode():
        pub_logits = pub(labels, x_BLCv)
        pub_imgs = pub.autoregressive_infer_cfg(B=args.batch, label_B=labels, g_seed=0, cfg=1.5, top_k=1, top_p=0.0)
    rows = []
    for gemm in ["blas", "onednn"] if onednn_linear_available() else ["blas"]:
        os.environ[CPU_GEMM_ENV_VAR] = gemm
        with torch.inference_mode():
            logits = model(labels, x_BLCv)
        imgs, idx = sample(model, vae, labels, top_k=1, top_p=0.0, seed=0, return_tokens=True)
        rows.append(
            dict(
                cpu_gemm=gemm,
                logits_max_abs_diff=(logits - pub_logits).abs().max().item(),
                logits_max_abs=pub_logits.abs().max().item(),
                greedy_tokens_equal=all(torch.equal(a, b) for a, b in zip(idx, pub_idx, strict=True)),
                greedy_images_max_abs_diff=(imgs - pub_imgs).abs().max().item(),
                # as saved to an 8-bit file: the share of pixel values that differ (by one level)
                greedy_uint8_values_differing=(to_uint8(imgs) != to_uint8(pub_imgs)).float().mean().item(),
            )
        )
        print(rows[-1], flush=True)
    os.environ.pop(CPU_GEMM_ENV_VAR)
    meta = metadata(device, depth=16, batch=args.batch, note="random weights; greedy: cfg 1.5, top-k 1, seed 0")
    md = f"# d16 against the published code\n\n{meta['device']}, {meta['date']}, commit {meta['commit']}\n\n"
    md += markdown_table(rows, list(rows[0]))
    print(md)
    if args.out:
        print("wrote", write_results(args.out, "parity-d16", meta, rows, md))


if __name__ == "__main__":
    main()

"""Loading the published VQ-VAE `vae_ch160v4096z32.pth` (FoundationVision/var on the Hugging Face hub)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from kernels import SCHEDULES
from scaffold.checkpoint import hub_download, load_state_dict_strict, read_state_dict

from .vqvae import MultiScaleVQVAE, VQVAEConfig

__all__ = ["OFFICIAL_VAE_FILE", "load_official_vae", "official_vae_config"]

OFFICIAL_VAE_FILE = "vae_ch160v4096z32.pth"
_HUB_NAMES = {"hub", "vae_ch160v4096z32", OFFICIAL_VAE_FILE}


def official_vae_config(patch_nums: tuple[int, ...] = SCHEDULES["256"]) -> VQVAEConfig:
    """The published tokenizer's config; the same weights serve 256 px and 512 px (other patch_nums)."""
    return VQVAEConfig(patch_nums=tuple(patch_nums))


def load_official_vae(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor] = "hub",
    patch_nums: tuple[int, ...] = SCHEDULES["256"],
) -> MultiScaleVQVAE:
    """Build the published VQ-VAE and load its weights strictly; returns it in eval mode, frozen.

    `path_or_state_dict`: a state dict, a local `.pth`/`.safetensors` file, or `"hub"` (also the file
    name) to download `vae_ch160v4096z32.pth` from `FoundationVision/var` (cached by huggingface_hub).
    """
    if isinstance(path_or_state_dict, Mapping):
        sd, what = dict(path_or_state_dict), "the given state dict"
    else:
        source = str(path_or_state_dict)
        if source in _HUB_NAMES and not Path(source).is_file():
            source = hub_download(OFFICIAL_VAE_FILE)
        sd, what = read_state_dict(source), source
    vae = MultiScaleVQVAE(official_vae_config(patch_nums))
    # `ema_vocab_hit_SV` is a training statistic with one row per scale of the run that saved it;
    # like the published loader, keep the model's own buffer when the number of scales differs.
    key = "quantize.ema_vocab_hit_SV"
    if key in sd and sd[key].shape != vae.quantize.ema_vocab_hit_SV.shape:
        sd[key] = vae.quantize.ema_vocab_hit_SV.clone()
    load_state_dict_strict(vae, sd, what)
    return vae.eval().requires_grad_(False)

"""A trained tokenizer as a folder: `model.safetensors` (the weights) and `config.yaml` (its VQVAEConfig).

Loading needs neither Lightning nor the training config: `load_tokenizer(dir)` gives a plain module.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from scaffold.checkpoint import CheckpointError, load_state_dict_strict, read_state_dict, save_state_dict
from scaffold.config import config_to_dict, load_config
from scaffold.io import write_atomic

from .vqvae import MultiScaleVQVAE, VQVAEConfig

__all__ = ["export_tokenizer", "load_tokenizer"]

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"


def export_tokenizer(model: MultiScaleVQVAE, out_dir: str | os.PathLike) -> Path:
    """Write `out_dir/model.safetensors` and `out_dir/config.yaml`, each atomically (`scaffold.io`), readable
    as an ordinary write would leave them (the umask's permissions, not a temporary's 0600); returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), out / WEIGHTS)
    write_atomic(out / CONFIG, OmegaConf.to_yaml(config_to_dict(model.config)))
    return out


def load_tokenizer(path: str | os.PathLike) -> MultiScaleVQVAE:
    """The tokenizer exported in folder `path` (strict load), in eval mode on the CPU."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer folder not found: {folder} (expected {WEIGHTS} and {CONFIG} inside)")
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG}: it is not an exported tokenizer")
    model = MultiScaleVQVAE(load_config(VQVAEConfig, folder / CONFIG, interpolation=False))  # plain YAML
    load_state_dict_strict(model, read_state_dict(folder / WEIGHTS), str(folder / WEIGHTS))
    return model.eval()

"""A trained model as one folder that `var sample`, `var eval` and `var app` take, or a published name.

Layout of an exported folder (everything written atomically)::

    DIR/model.safetensors      the transformer's weights (EMA weights when training kept them)
    DIR/config.yaml            {model: VARConfig, class_names: [...], sampling: {cfg, top_k, top_p}}
    DIR/tokenizer/             the tokenizer it was trained with (tokenizer.export_tokenizer layout)

`load_model("d16")` (d20, d24, d30) takes the published VAR weights and the published tokenizer from
the Hugging Face hub (downloaded once, cached by huggingface_hub) with ImageNet's class names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from scaffold import (
    CheckpointError,
    config_to_dict,
    load_config,
    load_state_dict_strict,
    read_state_dict,
    save_state_dict,
)
from tokenizer import MultiScaleVQVAE, export_tokenizer, load_official_vae, load_tokenizer
from var.model import VAR, VARConfig

__all__ = ["PUBLISHED", "ExportConfig", "LoadedModel", "SamplingDefaults", "export_model", "load_model"]

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.yaml", "tokenizer"
PUBLISHED = ("d16", "d20", "d24", "d30")


@dataclass
class SamplingDefaults:
    """What the UI and the batch CLI start from (the published FID setting by default)."""

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False


@dataclass
class ExportConfig:
    model: VARConfig = field(default_factory=VARConfig)
    class_names: list[str] = field(default_factory=list)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)


@dataclass
class LoadedModel:
    model: VAR
    vae: MultiScaleVQVAE
    class_names: list[str]
    sampling: SamplingDefaults
    name: str  # the folder or the published name it came from

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    def describe(self) -> str:
        """One line for logs and the UI: size, mechanisms per block, resolution."""
        cfg = self.model.config
        n = sum(p.numel() for p in self.model.parameters())
        names = cfg.block_attention()
        mech = names[0] if len(set(names)) == 1 else ", ".join(names)
        return (
            f"{self.name}: depth {cfg.depth}, {n / 1e6:.1f}M parameters, {cfg.num_classes} classes, "
            f"{self.vae.image_size} px, attention: {mech}"
        )


def export_model(
    model: VAR,
    vae: MultiScaleVQVAE,
    out_dir: str | os.PathLike,
    class_names: list[str] | None = None,
    sampling: SamplingDefaults | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the folder described in the module docstring; `state_dict` overrides the model's (EMA weights)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(class_names) if class_names is not None else [str(i) for i in range(model.config.num_classes)]
    if len(names) != model.config.num_classes:
        raise ValueError(f"{len(names)} class names for a model of {model.config.num_classes} classes")
    export_tokenizer(vae, out / TOKENIZER)
    save_state_dict(state_dict if state_dict is not None else model.state_dict(), out / WEIGHTS)
    cfg = ExportConfig(model=model.config, class_names=names, sampling=sampling or SamplingDefaults())
    tmp = out / f".{CONFIG}.tmp-{os.getpid()}"
    OmegaConf.save(config_to_dict(cfg), tmp)
    os.replace(tmp, out / CONFIG)
    return out


def _check_pair(model: VAR, vae: MultiScaleVQVAE, where: str) -> None:
    cfg = model.config
    if tuple(cfg.patch_nums) != tuple(vae.patch_nums) or cfg.vocab_size != vae.vocab_size or cfg.c_vae != vae.c_vae:
        raise CheckpointError(
            f"{where}: the transformer expects patch_nums={tuple(cfg.patch_nums)}, vocab_size={cfg.vocab_size}, "
            f"c_vae={cfg.c_vae} but its tokenizer has patch_nums={tuple(vae.patch_nums)}, "
            f"vocab_size={vae.vocab_size}, c_vae={vae.c_vae}"
        )


def load_model(dir_or_name: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """An exported folder, or one of `PUBLISHED` ("d16", ...): transformer + tokenizer, eval mode, on `device`."""
    source = str(dir_or_name)
    if source in PUBLISHED and not Path(source).exists():
        from var.checkpoint import load_official_var

        from .imagenet import IMAGENET_CLASSES

        model = load_official_var("hub", depth=int(source[1:]))
        vae = load_official_vae("hub")
        loaded = LoadedModel(model, vae, list(IMAGENET_CLASSES), SamplingDefaults(), source)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise CheckpointError(
                f"model not found: {folder} is neither an exported model folder nor one of {', '.join(PUBLISHED)}"
            )
        if not (folder / CONFIG).is_file():
            raise CheckpointError(f"{folder} has no {CONFIG}: it is not an exported model (see `var train`)")
        cfg = load_config(ExportConfig, folder / CONFIG)
        if not (folder / TOKENIZER).is_dir():
            raise CheckpointError(f"{folder} has no {TOKENIZER}/ folder: the tokenizer must be exported with the model")
        vae = load_tokenizer(folder / TOKENIZER)
        with torch.device("meta"):  # every tensor comes from the file: skip the random initialisation
            model = VAR(cfg.model)
        load_state_dict_strict(model, read_state_dict(folder / WEIGHTS), str(folder / WEIGHTS), assign=True)
        names = cfg.class_names or [str(i) for i in range(cfg.model.num_classes)]
        if len(names) != cfg.model.num_classes:
            raise CheckpointError(
                f"{folder / CONFIG}: {len(names)} class names for num_classes={cfg.model.num_classes}"
            )
        loaded = LoadedModel(model, vae, names, cfg.sampling, str(folder))
    _check_pair(loaded.model, loaded.vae, loaded.name)
    loaded.model = loaded.model.to(device).eval().requires_grad_(False)
    loaded.vae = loaded.vae.to(device).eval().requires_grad_(False)
    return loaded

"""A trained model as one folder that `var sample`, `var eval` and `var app` take, or a published model.

Layout of an exported folder (everything written atomically, scaffold.io)::

    DIR/model.safetensors      the transformer's weights (EMA weights when training kept them)
    DIR/config.yaml            {model: VARConfig, class_names: [...], sampling: SamplingSettings.as_dict(),
                                tokenizer_sha256: the SHA-256 of tokenizer/model.safetensors}
    DIR/tokenizer/             the tokenizer it was trained with (tokenizer.export_tokenizer layout)

Loading checks that `tokenizer/` still holds the tokenizer the model was exported with (a tokenizer of
the same architecture but other weights would decode the model's tokens into garbage), and reads the
model's sampling defaults with `SamplingSettings.from_dict`: a setting the file lacks is
`var.settings.MODEL_DEFAULTS`, a bad or unknown one an error naming the file and the key.

`load_model("d16")` (d20, d24, d30) takes the published VAR weights and the published tokenizer from
the Hugging Face hub (downloaded once, cached by huggingface_hub) with ImageNet's class names;
`load_model("/path/var_d16.pth")` takes a published checkpoint file (the depth is read from it) and the
published tokenizer file `vae_ch160v4096z32.pth` from the same folder, else from the hub: what an
offline machine uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from scaffold import (
    CheckpointError,
    config_to_dict,
    hub_download,
    load_config,
    load_state_dict_strict,
    read_state_dict,
    save_state_dict,
    sha256_of,
    write_atomic,
)
from tokenizer import MultiScaleVQVAE, export_tokenizer, load_official_vae, load_tokenizer
from tokenizer.official import OFFICIAL_VAE_FILE
from var.model import VAR, VARConfig
from var.settings import MODEL_DEFAULTS, SamplingSettings, SettingsError

__all__ = [
    "PUBLISHED",
    "ExportConfig",
    "LoadedModel",
    "export_model",
    "load_model",
]

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.yaml", "tokenizer"
PUBLISHED = ("d16", "d20", "d24", "d30")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass
class ExportConfig:
    model: VARConfig = field(default_factory=VARConfig)
    class_names: list[str] = field(default_factory=list)
    # SamplingSettings.as_dict(): kept a plain mapping here so that loading checks it by SamplingSettings'
    # own rule (SamplingSettings.from_dict), with the messages of `var sample` and the web UI
    sampling: dict[str, Any] = field(default_factory=MODEL_DEFAULTS.as_dict)
    tokenizer_sha256: str = ""  # of tokenizer/model.safetensors; empty in folders exported before it was recorded


@dataclass
class LoadedModel:
    model: VAR
    vae: MultiScaleVQVAE
    class_names: list[str]
    sampling: SamplingSettings  # the model's defaults: what `var sample`, `var edit` and the web UI start from
    name: str  # the folder, file or published name it came from
    weights_file: Path | None = None  # the files its weights were read from: what `identity` hashes
    tokenizer_file: Path | None = None

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @functools.cached_property
    def identity(self) -> dict[str, str]:
        """What a sampling folder records of the model: SHA-256s of the weights (with the architecture) and
        of the tokenizer's weights. Computed on first use (a published model takes seconds to hash)."""
        arch = config_to_dict(self.model.config)
        del arch["init_adaln_gamma"]  # how training began, not what the weights compute: identities stay as they were
        model = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
        if self.weights_file is not None:
            model.update(bytes.fromhex(sha256_of(self.weights_file)))
        else:  # built in memory (tests, a caller's own model): hash the tensors themselves
            for k, v in sorted(self.model.state_dict().items()):
                model.update(k.encode() + v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        if self.tokenizer_file is not None:
            tok = sha256_of(self.tokenizer_file)
        else:
            h = hashlib.sha256()
            for k, v in sorted(self.vae.state_dict().items()):
                h.update(k.encode() + v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            tok = h.hexdigest()
        return {"model_sha256": model.hexdigest(), "tokenizer_sha256": tok}

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
    sampling: SamplingSettings | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the folder described in the module docstring; `state_dict` overrides the model's (EMA weights).
    ``sampling``: the model's sampling defaults (default :data:`var.settings.MODEL_DEFAULTS`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(class_names) if class_names is not None else [str(i) for i in range(model.config.num_classes)]
    if len(names) != model.config.num_classes:
        raise ValueError(f"{len(names)} class names for a model of {model.config.num_classes} classes")
    export_tokenizer(vae, out / TOKENIZER)
    save_state_dict(state_dict if state_dict is not None else model.state_dict(), out / WEIGHTS)
    cfg = ExportConfig(
        model=model.config,
        class_names=names,
        sampling=(sampling if sampling is not None else MODEL_DEFAULTS).as_dict(),
        tokenizer_sha256=sha256_of(out / TOKENIZER / WEIGHTS),
    )
    write_atomic(out / CONFIG, OmegaConf.to_yaml(config_to_dict(cfg)))
    return out


def _check_pair(model: VAR, vae: MultiScaleVQVAE, where: str) -> None:
    cfg = model.config
    if tuple(cfg.patch_nums) != tuple(vae.patch_nums) or cfg.vocab_size != vae.vocab_size or cfg.c_vae != vae.c_vae:
        raise CheckpointError(
            f"{where}: the transformer expects patch_nums={tuple(cfg.patch_nums)}, vocab_size={cfg.vocab_size}, "
            f"c_vae={cfg.c_vae} but its tokenizer has patch_nums={tuple(vae.patch_nums)}, "
            f"vocab_size={vae.vocab_size}, c_vae={vae.c_vae}"
        )


def _hub_advice(err: CheckpointError, files: str) -> CheckpointError:
    """The hub's offline message, with advice that `--model` can follow: a local checkpoint file."""
    first = str(err).split(" If this machine is offline", 1)[0]
    return CheckpointError(
        f"{first} If this machine is offline, download {files} from https://huggingface.co/FoundationVision/var "
        f"elsewhere, put them in one folder and pass --model FOLDER/var_dNN.pth"
    )


def _published_depth(state_dict: dict[str, torch.Tensor], path: Path) -> int:
    """The depth of a published-layout VAR checkpoint: its number of blocks."""
    blocks = {int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        from var.official import describe_foreign_checkpoint

        raise CheckpointError(f"{path} is not a VAR transformer checkpoint{describe_foreign_checkpoint(state_dict)}")
    return max(blocks) + 1


def _load_published_file(path: Path, vae_file: Path | None = None) -> LoadedModel:
    """A published checkpoint file (var_d16.pth ...) and the published tokenizer: `vae_file`, else the
    file beside `path`, else the hub's."""
    from var.official import load_official_var

    from .imagenet import IMAGENET_CLASSES

    state_dict = read_state_dict(path)
    model = load_official_var(state_dict, depth=_published_depth(state_dict, path), source=str(path))
    if vae_file is None and (path.parent / OFFICIAL_VAE_FILE).is_file():
        vae_file = path.parent / OFFICIAL_VAE_FILE
    if vae_file is None:
        try:
            vae_file = Path(hub_download(OFFICIAL_VAE_FILE))
        except CheckpointError as err:
            raise CheckpointError(
                f"{path}: the published tokenizer {OFFICIAL_VAE_FILE} is not beside it and cannot be downloaded "
                f"({str(err).split(' (', 1)[0]}): put {OFFICIAL_VAE_FILE} from "
                f"https://huggingface.co/FoundationVision/var in {path.parent}"
            ) from err
    vae = load_official_vae(str(vae_file))
    return LoadedModel(model, vae, list(IMAGENET_CLASSES), MODEL_DEFAULTS, str(path), path, vae_file)


def _load_published_name(name: str) -> LoadedModel:
    try:
        weights = Path(hub_download(f"var_{name}.pth"))
        vae_file = Path(hub_download(OFFICIAL_VAE_FILE))
    except CheckpointError as err:
        raise _hub_advice(err, f"var_{name}.pth and {OFFICIAL_VAE_FILE}") from err
    loaded = _load_published_file(weights, vae_file)
    loaded.name = name
    return loaded


def _load_folder(folder: Path) -> LoadedModel:
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG}: it is not an exported model (see `var train`)")
    cfg = load_config(ExportConfig, folder / CONFIG, interpolation=False)  # plain YAML: not the user's file
    try:
        sampling = SamplingSettings.from_dict(cfg.sampling, defaults=MODEL_DEFAULTS)
    except SettingsError as err:
        key = f"sampling.{err.field}" if err.field else "sampling"
        raise CheckpointError(f"{folder / CONFIG}: key '{key}': {err}") from None
    if not (folder / TOKENIZER).is_dir():
        raise CheckpointError(f"{folder} has no {TOKENIZER}/ folder: the tokenizer must be exported with the model")
    vae = load_tokenizer(folder / TOKENIZER)
    with torch.device("meta"):  # every tensor comes from the file: skip the random initialisation
        model = VAR(cfg.model)
    load_state_dict_strict(model, read_state_dict(folder / WEIGHTS), str(folder / WEIGHTS), assign=True)
    _check_pair(model, vae, str(folder))  # an architecture mismatch says more than a hash mismatch
    tokenizer_file = folder / TOKENIZER / WEIGHTS
    if cfg.tokenizer_sha256 and (found := sha256_of(tokenizer_file)) != cfg.tokenizer_sha256:
        raise CheckpointError(
            f"{folder / TOKENIZER} is not the tokenizer this model was exported with (its weights' SHA-256 is "
            f"{found[:12]}..., {CONFIG} records {cfg.tokenizer_sha256[:12]}...): "
            f"put the original tokenizer back or export the model again with this one"
        )
    names = cfg.class_names or [str(i) for i in range(cfg.model.num_classes)]
    if len(names) != cfg.model.num_classes:
        raise CheckpointError(f"{folder / CONFIG}: {len(names)} class names for num_classes={cfg.model.num_classes}")
    return LoadedModel(model, vae, names, sampling, str(folder), folder / WEIGHTS, tokenizer_file)


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """An exported folder, a published checkpoint file (var_d16.pth ...) or one of `PUBLISHED` ("d16", ...):
    transformer + tokenizer, eval mode, on `device`."""
    text = str(source)
    path = Path(text)
    if text in PUBLISHED and not path.exists():
        loaded = _load_published_name(text)
    elif path.is_dir():
        loaded = _load_folder(path)
    elif path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        loaded = _load_published_file(path)
    elif path.is_file():
        raise CheckpointError(
            f"{path} is a file but not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}): pass an exported model "
            f"folder, a published checkpoint such as var_d16.pth, or one of {', '.join(PUBLISHED)}"
        )
    else:
        raise CheckpointError(
            f"model not found: {path} is neither an exported model folder, a checkpoint file nor one of "
            f"{', '.join(PUBLISHED)}"
        )
    _check_pair(loaded.model, loaded.vae, loaded.name)
    loaded.model = loaded.model.to(device).eval().requires_grad_(False)
    loaded.vae = loaded.vae.to(device).eval().requires_grad_(False)
    return loaded

"""Multi-scale VQ tokenizer: images <-> per-scale token maps of one shared codebook."""

from .checkpoint import (
    CheckpointError,
    check_state_dict,
    hub_download,
    load_state_dict_strict,
    read_state_dict,
    save_state_dict,
)
from .config import ConfigError, config_to_dict, load_config
from .data import DataConfig, DatasetError, DigitsDataset, ImageFolderDataset, build_datasets
from .export import export_tokenizer, load_tokenizer
from .official import load_official_vae, official_vae_config
from .quant import MultiScaleQuantizer, phi_index
from .vqvae import PATCH_NUMS_256, PATCH_NUMS_512, MultiScaleVQVAE, VQVAEConfig

__all__ = [
    "PATCH_NUMS_256",
    "PATCH_NUMS_512",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DatasetError",
    "DigitsDataset",
    "ImageFolderDataset",
    "MultiScaleQuantizer",
    "MultiScaleVQVAE",
    "VQVAEConfig",
    "build_datasets",
    "check_state_dict",
    "config_to_dict",
    "export_tokenizer",
    "hub_download",
    "load_config",
    "load_official_vae",
    "load_state_dict_strict",
    "load_tokenizer",
    "official_vae_config",
    "phi_index",
    "read_state_dict",
    "save_state_dict",
]

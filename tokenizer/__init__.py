"""Multi-scale VQ tokenizer: images <-> per-scale token maps of one shared codebook."""

from .data import DataConfig, DatasetError, DigitsDataset, ImageFolderDataset, build_datasets
from .export import export_tokenizer, load_tokenizer
from .official import load_official_vae, official_vae_config
from .quant import MultiScaleQuantizer, phi_index
from .vqvae import MultiScaleVQVAE, VQVAEConfig

__all__ = [
    "DataConfig",
    "DatasetError",
    "DigitsDataset",
    "ImageFolderDataset",
    "MultiScaleQuantizer",
    "MultiScaleVQVAE",
    "VQVAEConfig",
    "build_datasets",
    "export_tokenizer",
    "load_official_vae",
    "load_tokenizer",
    "official_vae_config",
    "phi_index",
]

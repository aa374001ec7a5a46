"""The VAR transformer, its sampler and zero-shot editing."""

from var.attention import TokenMixer
from var.edit import edit
from var.export import LoadedModel, export_model, load_model
from var.model import PRESETS, VAR, VARConfig, hybrid_attention, preset
from var.official import load_official_var
from var.registry import MIXERS, register_mixer
from var.sample import generate, sample, sample_progressive
from var.settings import MODEL_DEFAULTS, SamplingSettings

__all__ = [
    "MIXERS",
    "MODEL_DEFAULTS",
    "PRESETS",
    "VAR",
    "LoadedModel",
    "SamplingSettings",
    "TokenMixer",
    "VARConfig",
    "edit",
    "export_model",
    "generate",
    "hybrid_attention",
    "load_model",
    "load_official_var",
    "preset",
    "register_mixer",
    "sample",
    "sample_progressive",
]

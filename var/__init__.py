"""The VAR transformer, its sampler and zero-shot editing."""

from var.attention import MIXERS, TokenMixer, register_mixer
from var.checkpoint import load_official_var
from var.edit import edit
from var.model import PRESETS, VAR, VARConfig, preset
from var.sample import generate, sample, sample_progressive

__all__ = [
    "MIXERS",
    "PRESETS",
    "VAR",
    "TokenMixer",
    "VARConfig",
    "edit",
    "generate",
    "load_official_var",
    "preset",
    "register_mixer",
    "sample",
    "sample_progressive",
]

"""The table of mechanisms (var.registry): what it lists, the lookup's message, and a mechanism from outside."""

import pytest
import torch

import var
from var.attention import FullAttention, TokenMixer
from var.registry import MIXERS, build_mixer, mixer_class, register_mixer

NAMES = ["full", "neighborhood", "external", "lka", "gspn"]


def test_the_table_lists_the_five_mechanisms_under_their_own_names():
    assert list(MIXERS) == NAMES and var.MIXERS is MIXERS
    assert all(mixer.name == name and issubclass(mixer, TokenMixer) for name, mixer in MIXERS.items())


def test_an_unknown_mechanism_is_named_with_the_known_ones():
    known = r"\['external', 'full', 'gspn', 'lka', 'neighborhood'\]"
    with pytest.raises(ValueError, match=rf"unknown attention mechanism 'nope'; registered: {known}"):
        mixer_class("nope")
    with pytest.raises(ValueError, match="unknown attention mechanism 'nope'"):
        build_mixer("nope", 128, 2, (1, 2))


class Doubled(FullAttention):
    """Full attention with its output doubled: a mechanism from outside the project."""

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x_BLC)


def test_register_mixer_adds_a_mechanism_under_its_name(mixers):
    assert register_mixer("doubled", Doubled) is Doubled
    assert mixers["doubled"] is Doubled and Doubled.name == "doubled" and FullAttention.name == "full"
    assert isinstance(build_mixer("doubled", 128, 2, (1, 2)), Doubled)


def test_register_mixer_refuses_a_taken_name_a_registered_class_and_a_non_mixer(mixers):
    with pytest.raises(ValueError, match=r"attention mechanism 'full' is already registered \(FullAttention\)"):
        register_mixer("full", Doubled)
    with pytest.raises(ValueError, match=r"FullAttention is already registered as 'full'"):
        register_mixer("also-full", FullAttention)
    with pytest.raises(TypeError, match=r"register_mixer\('mine', ...\) takes a TokenMixer subclass"):
        register_mixer("mine", torch.nn.Linear)
    assert list(mixers) == NAMES and FullAttention.name == "full"

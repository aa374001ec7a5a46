"""The mechanisms a block can use, by name: one table, :data:`MIXERS`, and the lookup that
``VARConfig.attention`` goes through (docs/architecture.md section 7).

The built-in five are listed here, by their own ``name``; importing their modules registers nothing, so
this table is the whole list. A mechanism from outside the project joins with
``register_mixer("mine", MyMixer)`` before the model that names it is built.
"""

from __future__ import annotations

from typing import Any

from var.attention import FullAttention, TokenMixer
from var.mechanisms import ExternalAttention, GSPNMixer, LargeKernelAttention, NeighborhoodAttention

__all__ = ["MIXERS", "build_mixer", "mixer_class", "register_mixer"]

MIXERS: dict[str, type[TokenMixer]] = {
    mixer.name: mixer
    for mixer in (FullAttention, NeighborhoodAttention, ExternalAttention, LargeKernelAttention, GSPNMixer)
}


def register_mixer(name: str, mixer: type[TokenMixer]) -> type[TokenMixer]:
    """Make ``mixer``, a :class:`TokenMixer` subclass from outside the project, selectable as
    ``VARConfig.attention = name`` (it becomes ``mixer.name``); a name already taken is refused."""
    if name in MIXERS:
        raise ValueError(f"attention mechanism {name!r} is already registered ({MIXERS[name].__qualname__})")
    if not (isinstance(mixer, type) and issubclass(mixer, TokenMixer)):
        raise TypeError(f"register_mixer({name!r}, ...) takes a TokenMixer subclass, got {mixer!r}")
    if mixer in MIXERS.values():
        # Renaming it would change the name its other entry's blocks report (`VAR.prunable`, var.sample's compiled step).
        raise ValueError(f"{mixer.__qualname__} is already registered as {mixer.name!r}")
    mixer.name = name
    MIXERS[name] = mixer
    return mixer


def mixer_class(name: str) -> type[TokenMixer]:
    """The mechanism called ``name``; a ValueError naming it and the known ones when there is none."""
    if name not in MIXERS:
        raise ValueError(f"unknown attention mechanism {name!r}; registered: {sorted(MIXERS)}")
    return MIXERS[name]


def build_mixer(
    name: str, dim: int, num_heads: int, patch_nums: tuple[int, ...], *, attn_l2_norm: bool = True, **options: Any
) -> TokenMixer:
    """A block's mixer: mechanism ``name`` with ``options`` (``VARConfig.attention_options[name]``)."""
    return mixer_class(name)(dim, num_heads, patch_nums, attn_l2_norm=attn_l2_norm, **options)

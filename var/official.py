"""Loading the published VAR checkpoints (``var_d16.pth`` ... from ``FoundationVision/var``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

import torch

from kernels import ScaleLayout
from scaffold.checkpoint import (
    CheckpointError,
    check_state_dict,
    hub_download,
    load_state_dict_strict,
    read_state_dict,
)
from var.attention import block_causal_mask
from var.model import VAR, VARConfig, preset

__all__ = ["describe_foreign_checkpoint", "load_official_var", "official_mask_bias"]

MASK_KEY = "attn_bias_for_masking"


def official_mask_bias(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """The published checkpoints' ``attn_bias_for_masking``: 0 where attention is allowed, -inf elsewhere, ``[1,1,L,L]``."""
    mask_LL = block_causal_mask(patch_nums)
    return torch.zeros(mask_LL.shape).masked_fill(~mask_LL, float("-inf"))[None, None]


def describe_foreign_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What a checkpoint that is not a VAR transformer holds, as the end of an error message."""
    keys = list(state_dict)
    if any(k.startswith(("encoder.", "decoder.", "quantize.")) for k in keys):
        return ": it holds a tokenizer (VQ-VAE: encoder, decoder and quantize weights), such as vae_ch160v4096z32.pth"
    heads = sorted({k.split(".", 1)[0] for k in keys})
    return (
        f": its keys start with {', '.join(heads[:6])}{', ...' if len(heads) > 6 else ''}" if heads else ": it is empty"
    )


def load_official_var(
    path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    depth: int = 16,
    *,
    config: VARConfig | None = None,
    source: str | None = None,
    **overrides: Any,
) -> VAR:
    """Build the published model of this ``depth`` (preset ``d{depth}``) and load its weights strictly.

    ``path_or_state_dict``: a ``.pth`` (read with ``weights_only=True``) or ``.safetensors`` file, a state
    dict, or ``"hub"`` to download ``var_d{depth}.pth`` from ``FoundationVision/var``. ``config`` replaces
    the preset; ``overrides`` change preset fields (e.g. ``num_classes``). Every key of the published
    layout must be present with its shape, and no other; the dense mask ``attn_bias_for_masking`` is
    checked against the block-causal mask of ``patch_nums`` and dropped (the model builds its own).
    ``source`` names a given state dict in error messages (the file it was read from).
    Returns the model in eval mode on the CPU.
    """
    if config is None:
        config = preset(f"d{depth}", **overrides)
    elif overrides:
        raise ValueError("pass either config or field overrides, not both")
    if isinstance(path_or_state_dict, str) and path_or_state_dict == "hub":
        path_or_state_dict = hub_download(f"var_d{config.depth}.pth")
    # Built on the meta device: every tensor comes from the checkpoint (assign=True), so the 300M+ random
    # initialisation of the published sizes is skipped.
    with torch.device("meta"):
        model = VAR(config)
    what = source or (
        f"VAR d{config.depth} checkpoint" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    )
    if isinstance(path_or_state_dict, Mapping):
        state_dict = dict(path_or_state_dict)
    else:
        state_dict = read_state_dict(path_or_state_dict)
    if not any(k.startswith("blocks.") for k in state_dict):
        raise CheckpointError(f"{what} is not a VAR transformer checkpoint{describe_foreign_checkpoint(state_dict)}")
    if MASK_KEY not in state_dict:
        raise CheckpointError(f"{what} does not fit VAR d{config.depth}: missing keys: {MASK_KEY}")
    mask = state_dict.pop(MASK_KEY)
    if not torch.equal(mask.float(), official_mask_bias(model.patch_nums)):
        raise CheckpointError(
            f"{what}: {MASK_KEY} {tuple(mask.shape)} is not the block-causal mask of patch_nums={model.patch_nums}"
        )
    check_state_dict(model, state_dict, what)
    if not torch.equal(state_dict["lvl_1L"], ScaleLayout.of(model.patch_nums).scale_ids().view(1, -1)):
        raise CheckpointError(f"{what}: lvl_1L does not match patch_nums={model.patch_nums}")
    load_state_dict_strict(model, state_dict, what, assign=True)
    return model.eval()

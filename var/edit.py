"""Zero-shot editing: in-painting, out-painting and class-conditional editing as one operation.

The image's own tokens are teacher-forced outside the mask at every scale and the model samples
inside it (VAR paper, section 7; the published ``demo_zero_shot_edit.ipynb``). Differences from
that notebook, on purpose: here ``mask`` is 1 where the image is regenerated (the notebook's is 1
where it is kept), it is resized to each scale by area averaging (the notebook: bilinear) and the
1x1 scale is not forced to keep the image (the notebook keeps every scale of at most 3 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from var.model import VAR
from var.sample import Seed, Teacher, decode, generate
from var.settings import SamplingSettings, merge_settings

__all__ = ["edit", "keep_masks"]


def keep_masks(mask_BHW: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """Per scale, True where the image's token is kept: ``[B, pn*pn]`` for each ``pn``.

    ``mask_BHW`` (1 = regenerate) is area-resized to ``pn x pn``; a token is regenerated when more than
    half of its area is masked.
    """
    m_B1HW = mask_BHW.float()[:, None]
    return [F.interpolate(m_B1HW, size=(pn, pn), mode="area").flatten(1) <= 0.5 for pn in patch_nums]


@torch.no_grad()
def edit(
    model: VAR,
    vae,
    image: torch.Tensor,
    mask: torch.Tensor,
    label: Union[int, Sequence[int], torch.Tensor],
    settings: Optional[SamplingSettings] = None,
    *,
    seed: Seed = None,
    return_tokens: bool = False,
    **changes: Any,
) -> Union[torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]]]:
    """Regenerate the masked part of ``image`` for class ``label``; returns images ``[B, 3, H, W]`` in [0, 1].

    ``image``: ``[B, 3, H, W]`` or ``[3, H, W]`` in **[0, 1]** (as :func:`var.sample.sample` returns and
    ``torchvision.transforms.ToTensor`` gives), at the VAE's resolution.
    ``mask``: ``[H, W]`` (every image) or ``[B, H, W]``, any resolution (pixels or a token grid);
    1 = regenerate, 0 = keep. ``label``: the class of the result, an int for all images or one per image;
    the null class (``num_classes``) gives plain in-painting. ``settings`` with keyword ``changes`` of its
    fields, and ``seed``: as in :func:`var.sample.sample` (the rules of :mod:`var.sample`);
    ``return_tokens`` also returns the token indices of every scale.
    """
    s = merge_settings(settings, changes)
    if image.ndim == 3:
        image = image[None]
    B = image.shape[0]
    if image.min() < 0 or image.max() > 1:
        raise ValueError("edit() takes images in [0, 1]")
    if mask.ndim == 2:
        mask = mask[None].expand(B, -1, -1)
    if mask.ndim != 3 or mask.shape[0] != B:
        raise ValueError(f"mask must be [H, W] or [B, H, W] for {B} images, got {tuple(mask.shape)}")
    labels_B = torch.as_tensor(label, dtype=torch.long).view(-1)
    labels_B = labels_B.expand(B) if labels_B.numel() == 1 else labels_B
    device = model.lvl_1L.device
    idx_Bl = vae.img_to_idx(image.to(device) * 2 - 1)
    teacher = Teacher(idx_Bl, [k.to(device) for k in keep_masks(mask.to(device), model.patch_nums)])
    tokens: list[torch.Tensor] = []
    for step in generate(model, vae, labels_B.to(device), s, seed=seed, teacher=teacher):
        tokens.append(step.idx_Bl)
    imgs = decode(vae, step.f_hat, s.precision)
    return (imgs, tokens) if return_tokens else imgs

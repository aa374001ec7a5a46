"""Zero-shot editing: in-painting, out-painting and class-conditional editing as one operation.

The image's own tokens are teacher-forced outside the mask at every scale and the model samples
inside it (VAR paper, section 7; the published ``demo_zero_shot_edit.ipynb``). Differences from
that notebook, on purpose: here ``mask`` is 1 where the image is regenerated (the notebook's is 1
where it is kept), it is resized to each scale by area averaging (the notebook: bilinear) and the
1x1 scale is not forced to keep the image (the notebook keeps every scale of at most 3 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F

from var.model import VAR
from var.sample import Seed, Teacher, decode, generate

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
    cfg: float = 1.5,
    top_k: int = 900,
    top_p: float = 0.96,
    seed: Seed = 0,
    more_smooth: bool = False,
    return_tokens: bool = False,
    precision: str = "fp32",
) -> Union[torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]]]:
    """Regenerate the masked part of ``image`` for class ``label``; returns images ``[B, 3, H, W]`` in [0, 1].

    ``image``: ``[B, 3, H, W]`` or ``[3, H, W]`` in **[0, 1]** (as :func:`var.sample.sample` returns and
    ``torchvision.transforms.ToTensor`` gives), at the VAE's resolution.
    ``mask``: ``[H, W]`` (every image) or ``[B, H, W]``, any resolution (pixels or a token grid);
    1 = regenerate, 0 = keep. ``label``: the class of the result, an int for all images or one per image;
    the null class (``num_classes``) gives plain in-painting. Sampling arguments and seeding as in
    :func:`var.sample.sample`; ``return_tokens`` also returns the token indices of every scale;
    ``precision`` as in :func:`var.sample.autocast`.
    """
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
    for step in generate(model, vae, labels_B.to(device), cfg, top_k, top_p, seed, more_smooth, teacher, precision):
        tokens.append(step.idx_Bl)
    imgs = decode(vae, step.f_hat, precision)
    return (imgs, tokens) if return_tokens else imgs

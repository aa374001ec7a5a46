"""Tokenizer training losses: reconstruction, PatchGAN hinge adversarial loss with the VQGAN adaptive
weight, and an LPIPS-style perceptual loss that runs only from a local weights file.

The multi-scale VQ loss is the model's own (`MultiScaleVQVAE.forward(...).vq_loss`, docs/architecture.md section 4).
Recipes follow taming-transformers' `VQLPIPSWithDiscriminator` (Esser et al. 2021, "Taming
Transformers", eq. 7 for the adaptive weight) and LPIPS (Zhang et al. 2018, "The Unreasonable
Effectiveness of Deep Features", `lpips/pretrained_networks.py`).
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scaffold.checkpoint import load_state_dict_strict, read_state_dict

__all__ = [
    "LPIPS",
    "PatchDiscriminator",
    "adaptive_weight",
    "hinge_d_loss",
    "hinge_g_loss",
    "load_perceptual",
    "reconstruction_loss",
]

log = logging.getLogger(__name__)


def reconstruction_loss(rec_B3HW: torch.Tensor, img_B3HW: torch.Tensor, l1: float, l2: float) -> torch.Tensor:
    """`l1 * |rec - img| + l2 * (rec - img)^2`, each averaged over pixels; computed in fp32."""
    diff = rec_B3HW.float() - img_B3HW.float()
    loss = diff.new_zeros(())
    if l1:
        loss = loss + l1 * diff.abs().mean()
    if l2:
        loss = loss + l2 * diff.square().mean()
    return loss


# ------------------------------------------------------------------------------------- adversarial
class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017; taming's `NLayerDiscriminator`), trained from scratch.

    `n_layers` stride-2 4x4 convs, then a stride-1 conv and a 1-channel stride-1 conv: one logit per
    overlapping patch. Each stride-2 layer halves the image, so `n_layers` must leave at least 3x3
    (16 px images take n_layers <= 2). Init N(0, 0.02) as in taming's `weights_init`.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.main(img_B3HW)  # [B, 1, h, w] patch logits


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.float().mean()


def adaptive_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQGAN's adaptive weight: |grad nll| / (|grad g_loss| + 1e-4) at the decoder's last layer, clamped.

    Balances the adversarial gradient against the reconstruction gradient where they meet the image
    (taming `calculate_adaptive_weight`). Detached: it scales the loss, it is not trained.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()


# -------------------------------------------------------------------------------------- perceptual
# torchvision's `vgg16().features` layout: (conv, relu) pairs with max-pools between the five stages.
_VGG16_STAGES = ((3, 64, 64), (64, 128, 128), (128, 256, 256, 256), (256, 512, 512, 512), (512, 512, 512, 512))


def _vgg16_features() -> tuple[nn.Sequential, list[int]]:
    """torchvision's VGG16 `features` stack (indices 0..29, so its state dict keys load as they are).

    Returns the stack and the indices of the last ReLU of each stage (relu1_2 ... relu5_3 = 3, 8, 15,
    22, 29), the five taps LPIPS compares.
    """
    layers: list[nn.Module] = []
    taps: list[int] = []
    for si, widths in enumerate(_VGG16_STAGES):
        if si:
            layers.append(nn.MaxPool2d(2, 2))
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=False)]
        taps.append(len(layers) - 1)
    return nn.Sequential(*layers), taps


class _LinearHead(nn.Module):
    """LPIPS `NetLinLayer`: dropout then a 1x1 conv without bias to one channel (keys `lin{k}.model.1.weight`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS with the VGG16 backbone: unit-normalised features, squared differences, learned 1x1 heads.

    State dict keys: `features.{i}.weight/bias` (torchvision `vgg16().features`) and
    `lin{k}.model.1.weight` (the `lpips` package's `vgg.pth`). Merge the two files into one (see
    `load_perceptual`). Frozen and in eval mode: it is a fixed metric, never trained here.
    """

    # LPIPS `ScalingLayer`: ImageNet statistics expressed for inputs in [-1, 1].
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self):
        super().__init__()
        self.features, self.taps = _vgg16_features()
        for k, widths in enumerate(_VGG16_STAGES):
            self.add_module(f"lin{k}", _LinearHead(widths[-1]))
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always eval: the heads' dropout stays off

    def _taps(self, x_B3HW: torch.Tensor) -> list[torch.Tensor]:
        h, out = (x_B3HW - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
            if i == self.taps[-1]:
                break
        return out

    def forward(self, rec_B3HW: torch.Tensor, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the LPIPS distance between images in [-1, 1]."""
        rec_B3HW, img_B3HW = rec_B3HW.float(), img_B3HW.float()
        loss = rec_B3HW.new_zeros(())
        for k, (a, b) in enumerate(zip(self._taps(rec_B3HW), self._taps(img_B3HW))):
            a = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
            loss = loss + getattr(self, f"lin{k}").model((a - b).square()).mean()
        return loss


def load_perceptual(path: str | os.PathLike | None) -> LPIPS | None:
    """An LPIPS module from a local weights file, or None (with one log notice) when there is none.

    Never downloads. The file is one flat state dict (`.pth` or `.safetensors`) holding torchvision's
    VGG16 `features.*` tensors and the `lpips` package's `lin{k}.model.1.weight` tensors, e.g.
    `{**{k: v for k, v in vgg16_sd.items() if k.startswith("features.")}, **torch.load("vgg.pth")}`.
    """
    if not path:
        log.warning("perceptual loss off: loss.perceptual_weights is empty (give a local LPIPS-VGG16 weights file)")
        return None
    if not Path(path).is_file():
        log.warning("perceptual loss off: loss.perceptual_weights=%s does not exist (no download is attempted)", path)
        return None
    net = LPIPS()
    load_state_dict_strict(net, read_state_dict(path), f"perceptual weights {path}")
    log.info("perceptual loss on: LPIPS-VGG16 weights from %s", path)
    return net

"""Residual multi-scale vector quantization with one shared codebook (docs/architecture.md section 4).

For each scale k (coarse to fine): quantize the area-downsampled residual to its nearest codes,
embed them, upsample bicubically to the full latent size, refine with a 3x3 conv phi, and move the
result from the residual into `f_hat`. The last scale is full size and skips both resizes.
Names (`embedding`, `quant_resi.qresi_ls.{i}`, `ema_vocab_hit_SV`) are the published ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernels import ScaleLayout
from scaffold.precision import full_precision

__all__ = ["MultiScaleQuantizer", "Phi", "QuantizerOutput", "phi_index"]


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
    """Which of the `num_phi` shared phi convs refines scale `si` of `num_scales`.

    Conv i sits at tick `linspace(1/(3K), 1 - 1/(3K), K)[i]` for K = 4 (= 1/12 ... 11/12) and at
    `linspace(1/(2K), 1 - 1/(2K), K)[i]` otherwise; scale si takes the tick nearest to si/(S-1).
    The ticks are computed exactly as the published `PhiPartiallyShared` does (numpy float64,
    first index on ties): scale 2 of 10 lies exactly between two ticks and must land on conv 1.
    """
    K = num_phi
    ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
    at = si / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(ticks - at)))


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h): the "CNN-refined upsampling" of a scale's embedding."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = ratio

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.ratio) + super().forward(h_BChw).mul_(self.ratio)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ratio={self.ratio}"


class PhiShared(nn.Module):
    """K phi convs shared across the S scales (published `PhiPartiallyShared`)."""

    def __init__(self, channels: int, ratio: float, num_phi: int, num_scales: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) for _ in range(num_phi))
        self.scale_to_phi = [phi_index(si, num_scales, num_phi) for si in range(num_scales)]

    def forward(self, h_BChw: torch.Tensor, si: int) -> torch.Tensor:
        return self.qresi_ls[self.scale_to_phi[si]](h_BChw)

    def extra_repr(self) -> str:
        return f"scale_to_phi={self.scale_to_phi}"


@dataclass
class QuantizerOutput:
    f_hat: torch.Tensor  # [B, C, H, W] with straight-through gradient to the encoder output
    vq_loss: torch.Tensor  # scalar, averaged over scales
    idx_Bl: list[torch.Tensor]  # per scale, [B, pn*pn]
    # Per scale, the residual vectors that were quantized, [B*pn*pn, C] fp32, detached: the pool that
    # training's dead-code restart re-seeds unused codes from. Not used by inference.
    z_NC: list[torch.Tensor] = field(default_factory=list)


class MultiScaleQuantizer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        c_vae: int,
        patch_nums: tuple[int, ...],
        beta: float = 0.25,
        using_znorm: bool = False,
        phi_ratio: float = 0.5,
        num_phi: int = 4,
    ):
        super().__init__()
        self.layout = ScaleLayout.of(patch_nums)  # checks the schedule
        self.vocab_size, self.c_vae, self.patch_nums = vocab_size, c_vae, self.layout.patch_nums
        self.beta, self.using_znorm = beta, using_znorm
        self.embedding = nn.Embedding(vocab_size, c_vae)
        self.quant_resi = PhiShared(c_vae, phi_ratio, num_phi, len(self.patch_nums))
        # Per-scale EMA of code hits; part of the published state dict, used for usage tracking.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def extra_repr(self) -> str:
        return f"V={self.vocab_size}, C={self.c_vae}, patch_nums={self.patch_nums}, beta={self.beta}, znorm={self.using_znorm}"

    # ----------------------------------------------------------------------------------- primitives
    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (L2, or cosine with `using_znorm`) for each row; no gradient."""
        e_VC = self.embedding.weight.detach().float()
        z_NC = z_NC.detach().float()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(e_VC, dim=-1).T, dim=1)
        # |z|^2 + |e|^2 - 2 z.e, in the published order of operations so ties break identically.
        d_NV = z_NC.square().sum(dim=1, keepdim=True) + e_VC.square().sum(dim=1)
        d_NV.addmm_(z_NC, e_VC.T, alpha=-2, beta=1)
        return torch.argmin(d_NV, dim=1)

    def embed_idx(self, idx_Bl: torch.Tensor, si: int) -> torch.Tensor:
        """Codebook lookup of scale `si`: [B, pn*pn] -> h [B, C, pn, pn]."""
        pn = self.patch_nums[si]
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.c_vae, pn, pn)

    def refine(self, h_BChw: torch.Tensor, si: int) -> torch.Tensor:
        """Bicubic upsampling to the full latent size (not at the last scale), then phi."""
        if si != self.num_scales - 1:
            P = self.patch_nums[-1]
            h_BChw = F.interpolate(h_BChw, size=(P, P), mode="bicubic")
        return self.quant_resi(h_BChw, si)

    def next_scale_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale `si`'s embedding to f_hat; return (new f_hat, input map of scale si+1).

        The next scale's input is f_hat area-resized to its size; after the last scale it is f_hat.
        Pure: `f_hat` is not modified in place.
        """
        f_hat = f_hat + self.refine(h_BChw, si)
        if si == self.num_scales - 1:
            return f_hat, f_hat
        pn = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")

    # ------------------------------------------------------------------------------------ encoding
    def _check_latent(self, f_BChw: torch.Tensor) -> None:
        P = self.patch_nums[-1]
        if f_BChw.ndim != 4 or f_BChw.shape[1] != self.c_vae or f_BChw.shape[-2:] != (P, P):
            raise ValueError(
                f"latent of shape {tuple(f_BChw.shape)} does not fit the quantizer: expected [B, {self.c_vae}, {P}, {P}] "
                f"(the last patch number is {P})"
            )

    def _quantize(self, f_BChw: torch.Tensor, with_loss: bool):
        """The residual loop shared by training and encoding; returns (f_hat, idx list, mean VQ loss, z list)."""
        self._check_latent(f_BChw)
        f = f_BChw.float()
        B, C = f.shape[:2]
        S = self.num_scales
        f_rest = f.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        idx_Bl: list[torch.Tensor] = []
        z_NC: list[torch.Tensor] = []
        loss = f.new_zeros(())
        for si, pn in enumerate(self.patch_nums):
            z_BChw = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != S - 1 else f_rest
            z_NC.append(z_BChw.detach().permute(0, 2, 3, 1).reshape(-1, C))  # [B*pn*pn, C]
            idx_N = self.nearest(z_NC[-1])
            idx_Bl.append(idx_N.view(B, pn * pn))
            h_BChw = self.refine(self.embed_idx(idx_Bl[-1], si), si)
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()
            if with_loss:
                # Commitment (encoder towards f_hat) + codebook/phi (f_hat towards the encoder).
                loss = loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
        return f_hat, idx_Bl, loss / S, z_NC

    def forward(self, f_BChw: torch.Tensor) -> QuantizerOutput:
        """Training path: quantized latent with a straight-through gradient, the VQ loss and the indices.

        Runs in fp32 whatever the autocast context (scaffold/precision.py: the VQ is an fp32 island).
        """
        with full_precision(f_BChw.device):
            f = f_BChw.float()
            f_hat, idx_Bl, loss, z_NC = self._quantize(f, with_loss=True)
            # Straight-through: the value of f_hat, the gradient of f.
            f_hat_st = (f_hat.detach() - f.detach()) + f
        return QuantizerOutput(f_hat=f_hat_st, vq_loss=loss, idx_Bl=idx_Bl, z_NC=z_NC)

    @torch.no_grad()
    def f_to_idx(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        with full_precision(f_BChw.device):
            return self._quantize(f_BChw, with_loss=False)[1]

    # ------------------------------------------------------------------------------------ decoding
    def idx_to_fhat(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Sum of the refined embeddings of all given scales (a prefix of the scales is allowed)."""
        self._check_idx(idx_Bl, allow_prefix=True)
        B, P = idx_Bl[0].shape[0], self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(B, self.c_vae, P, P, dtype=torch.float32)
        for si, idx in enumerate(idx_Bl):
            f_hat = f_hat + self.refine(self.embed_idx(idx, si), si)
        return f_hat

    def idx_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input: for k = 1..S-1, area_resize(f_hat after scale k-1, pn_k), row-major.

        Returns [B, L - pn_0**2, C] in fp32.
        """
        self._check_idx(idx_Bl, allow_prefix=False)
        B, P = idx_Bl[0].shape[0], self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(B, self.c_vae, P, P, dtype=torch.float32)
        inputs_BlC = []
        for si in range(self.num_scales - 1):
            f_hat, next_BChw = self.next_scale_input(si, f_hat, self.embed_idx(idx_Bl[si], si))
            inputs_BlC.append(next_BChw.flatten(2).transpose(1, 2))  # [B, pn*pn, C]
        if not inputs_BlC:
            return f_hat.new_zeros(B, 0, self.c_vae)
        return torch.cat(inputs_BlC, dim=1)

    def _check_idx(self, idx_Bl: list[torch.Tensor], allow_prefix: bool) -> None:
        n = len(idx_Bl)
        if n == 0 or n > self.num_scales or (not allow_prefix and n != self.num_scales):
            raise ValueError(
                f"expected {self.num_scales} per-scale index tensors (patch_nums={self.patch_nums}), got {n}"
            )
        for si, idx in enumerate(idx_Bl):
            n = self.layout.sizes[si]
            if idx.ndim != 2 or idx.shape[1] != n or idx.shape[0] != idx_Bl[0].shape[0]:
                raise ValueError(f"indices of scale {si} have shape {tuple(idx.shape)}, expected [B, {n}]")
            if idx.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"indices of scale {si} must be integers, got {idx.dtype}")

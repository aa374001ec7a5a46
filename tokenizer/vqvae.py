"""The multi-scale VQ-VAE: CNN encoder -> quant_conv -> residual multi-scale quantizer ->
post_quant_conv -> CNN decoder. Defaults are the published `vae_ch160v4096z32` (docs/architecture.md section 4).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from kernels import SCHEDULES

from .cnn import Decoder, Encoder
from .quant import MultiScaleQuantizer, QuantizerOutput

__all__ = ["MultiScaleVQVAE", "VQVAEConfig", "VQVAEOutput"]


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # the decoder has one more per level
    dropout: float = 0.0
    attn_lowest: bool = True  # self-attention at the lowest resolution
    attn_mid: bool = True
    patch_nums: tuple[int, ...] = SCHEDULES["256"]
    beta: float = 0.25  # commitment weight of the VQ loss
    using_znorm: bool = False  # cosine instead of L2 nearest-code search
    quant_conv_ks: int = 3
    phi_ratio: float = 0.5  # phi(h) = (1 - r) h + r conv(h)
    num_phi: int = 4  # phi convs shared across scales

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def validate(self) -> None:
        pn = self.patch_nums
        if not pn or any(p < 1 for p in pn) or any(a >= b for a, b in itertools.pairwise(pn)):
            raise ValueError(f"patch_nums must be positive and strictly increasing, got {pn}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        widths = {self.ch * m for m in self.ch_mult}
        if any(w % 32 for w in widths):
            raise ValueError(
                f"GroupNorm(32) needs every width ch*mult divisible by 32; ch={self.ch}, ch_mult={self.ch_mult}"
            )
        if self.vocab_size < 2 or self.z_channels < 1 or self.num_res_blocks < 1 or self.num_phi < 1:
            raise ValueError("vocab_size >= 2, z_channels >= 1, num_res_blocks >= 1 and num_phi >= 1 are required")
        if self.quant_conv_ks % 2 == 0:
            raise ValueError(f"quant_conv_ks must be odd, got {self.quant_conv_ks}")


@dataclass
class VQVAEOutput:
    rec_B3HW: torch.Tensor  # decoder output (not clamped: the training losses see the raw values)
    vq_loss: torch.Tensor
    idx_Bl: list[torch.Tensor]
    z_NC: list[torch.Tensor] = field(default_factory=list)  # per scale, the quantized residuals (training)


class MultiScaleVQVAE(nn.Module):
    """Images in [-1, 1] <-> per-scale token maps of one shared codebook."""

    def __init__(self, config: VQVAEConfig | None = None):
        super().__init__()
        config = config or VQVAEConfig()
        config.validate()
        self.config = config
        cnn = dict(
            ch=config.ch,
            ch_mult=tuple(config.ch_mult),
            num_res_blocks=config.num_res_blocks,
            z_channels=config.z_channels,
            dropout=config.dropout,
            attn_lowest=config.attn_lowest,
            attn_mid=config.attn_mid,
        )
        self.encoder = Encoder(**cnn)
        self.decoder = Decoder(**cnn)
        self.quantize = MultiScaleQuantizer(
            config.vocab_size,
            config.z_channels,
            config.patch_nums,
            beta=config.beta,
            using_znorm=config.using_znorm,
            phi_ratio=config.phi_ratio,
            num_phi=config.num_phi,
        )
        ks = config.quant_conv_ks
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, ks, padding=ks // 2)

    # ---------------------------------------------------------------------------------- properties
    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.patch_nums

    @property
    def c_vae(self) -> int:
        return self.config.z_channels

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # -------------------------------------------------------------------------------------- checks
    def _check_image(self, img_B3HW: torch.Tensor) -> None:
        if img_B3HW.ndim != 4 or img_B3HW.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(img_B3HW.shape)}")
        H, W = img_B3HW.shape[-2:]
        if H != W:
            raise ValueError(
                f"images must be square; got {H}x{W} (crop or resize to {self.image_size}x{self.image_size})"
            )
        if self.image_size != H:
            raise ValueError(
                f"images must be {self.image_size}x{self.image_size} for patch_nums={self.patch_nums} and "
                f"downsampling {self.config.downsample}; got {H}x{W}"
            )

    # ------------------------------------------------------------------------------------ training
    def forward(self, img_B3HW: torch.Tensor) -> VQVAEOutput:
        """Training path: reconstruction, VQ loss and indices (straight-through gradients)."""
        self._check_image(img_B3HW)
        q: QuantizerOutput = self.quantize(self.quant_conv(self.encoder(img_B3HW)))
        rec = self.decoder(self.post_quant_conv(q.f_hat))
        return VQVAEOutput(rec_B3HW=rec, vq_loss=q.vq_loss, idx_Bl=q.idx_Bl, z_NC=q.z_NC)

    # ---------------------------------------------------------------------------- the contract
    def img_to_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous latent before quantization, [B, C, P, P]."""
        self._check_image(img_B3HW)
        return self.quant_conv(self.encoder(img_B3HW))

    @torch.no_grad()
    def img_to_idx(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] -> list over scales of LongTensor [B, pn*pn] (row-major)."""
        return self.quantize.f_to_idx(self.img_to_f(img_B3HW))

    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """[B, C, P, P] -> images [B, 3, H, W] clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp(-1, 1)

    def idx_to_fhat(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        return self.quantize.idx_to_fhat(idx_Bl)

    def idx_to_img(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale indices (all scales, or a coarse prefix) -> images [B, 3, H, W] in [-1, 1]."""
        return self.fhat_to_img(self.idx_to_fhat(idx_Bl))

    def idx_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of the transformer, [B, L - pn_0**2, C]."""
        return self.quantize.idx_to_var_input(idx_Bl)

    def embed_idx(self, idx_Bl: torch.Tensor, si: int) -> torch.Tensor:
        """Codebook lookup of scale `si`: [B, pn*pn] -> [B, C, pn, pn]."""
        return self.quantize.embed_idx(idx_Bl, si)

    def next_scale_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampler step: add scale `si`'s embedding [B, C, pn, pn] to f_hat; return (f_hat, next input map)."""
        return self.quantize.next_scale_input(si, f_hat, h_BChw)

    @torch.no_grad()
    def reconstruct(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Encode, quantize at every scale, decode: [B, 3, H, W] -> [B, 3, H, W] in [-1, 1]."""
        return self.idx_to_img(self.img_to_idx(img_B3HW))

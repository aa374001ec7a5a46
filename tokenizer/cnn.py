"""The VQGAN/LDM f16 convolutional encoder and decoder (docs/architecture.md section 4).

Module and parameter names follow the published `vae_ch160v4096z32.pth` state dict
(`encoder.down.{level}.block.{i}.conv1.weight`, `decoder.up.{level}.attn.{i}.qkv.weight`, ...),
so the published weights load strictly. The layout is LDM's `vq-f16` config: five levels with
channel multipliers (1, 1, 2, 2, 4), self-attention at the lowest resolution and in the middle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Decoder", "Encoder"]


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def norm_silu(norm: nn.GroupNorm, x_BChw: torch.Tensor) -> torch.Tensor:
    """``silu(norm(x))``, the SiLU in place on the norm's fresh output where no gradient is recorded (as the
    published blocks do): one full-resolution tensor fewer to allocate, the same numbers."""
    return F.silu(norm(x_BChw), inplace=not torch.is_grad_enabled())


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # The published blocks only have a shortcut conv when the width changes.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x_BChw))
        h = self.conv2(self.dropout(norm_silu(self.norm2, h)))
        return h.add_(self.nin_shortcut(x_BChw))  # into conv2's fresh output (its backward does not read it)


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, one fused 1x1 `qkv` conv, residual `proj_out`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BChw.shape
        q, k, v = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, H * W).unbind(1)  # 3 x [B, C, HW]
        # Explicit bmm + softmax in the published order of operations (not SDPA), so that encodings,
        # and with them the argmin of the quantizer, match the published VQVAE bit for bit on CPU.
        w_BNN = torch.bmm(q.transpose(1, 2), k).mul_(C**-0.5).softmax(dim=2)  # [B, HW(q), HW(k)]
        h_BCN = torch.bmm(v, w_BNN.transpose(1, 2))  # [B, C, HW(q)]
        return x_BChw + self.proj_out(h_BCN.reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        # Asymmetric right/bottom padding then a stride-2 valid conv: the LDM/taming convention.
        return self.conv(F.pad(x_BChw, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` and `attn` lists plus an optional resampler (the published names)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: tuple[str, nn.Module] | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        self.resample_name = None
        if resample is not None:
            self.resample_name = resample[0]  # "downsample" or "upsample", the published attribute names
            self.add_module(*resample)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if self.resample_name is not None:
            h = getattr(self, self.resample_name)(h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float, attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """[B, 3, H, W] -> [B, z_channels, H/f, W/f] with f = 2**(len(ch_mult) - 1)."""

    def __init__(
        self,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        attn_lowest: bool = True,
        attn_mid: bool = True,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels, block_in = [], ch
        for i_level, mult in enumerate(ch_mult):
            block_out, last = ch * mult, i_level == len(ch_mult) - 1
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if last and attn_lowest:
                    attns.append(AttnBlock(block_in))
            levels.append(_Level(blocks, attns, None if last else ("downsample", Downsample(block_in))))
        self.down = nn.ModuleList(levels)
        self.mid = _Middle(block_in, dropout, attn_mid)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HW)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(norm_silu(self.norm_out, h))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, 3, h*f, w*f]; one more res block per level than the encoder."""

    def __init__(
        self,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        out_channels: int = 3,
        dropout: float = 0.0,
        attn_lowest: bool = True,
        attn_mid: bool = True,
    ):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in, dropout, attn_mid)
        levels: list[_Level] = []
        for i_level in reversed(range(len(ch_mult))):
            block_out, lowest = ch * ch_mult[i_level], i_level == len(ch_mult) - 1
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if lowest and attn_lowest:
                    attns.append(AttnBlock(block_in))
            levels.insert(0, _Level(blocks, attns, ("upsample", Upsample(block_in)) if i_level != 0 else None))
        # `up[0]` is the full-resolution level, as in the published state dict; run from the last.
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(norm_silu(self.norm_out, h))

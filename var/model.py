"""The VAR transformer: config, blocks, model and named presets (docs/architecture.md section 5).

Architecture, parameter names and initialisation follow the published ``models/var.py`` and
``models/basic_var.py`` (FoundationVision/VAR), so the published checkpoints load strictly
(:func:`var.official.load_official_var`). The attention sublayer is any registered
:class:`var.attention.TokenMixer`, chosen per block by ``VARConfig.attention``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from torch import nn

from kernels import SCHEDULES, ScaleLayout
from scaffold.precision import full_precision
from var.attention import TokenMixer
from var.linear import Linear, linear
from var.registry import build_mixer

__all__ = ["PRESETS", "VAR", "VARConfig", "hybrid_attention", "preset"]


@dataclass
class VARConfig:
    """Hyperparameters of :class:`VAR`. Width ``64 * depth`` and ``depth`` heads, as all published models."""

    depth: int = 16
    num_classes: int = 1000
    patch_nums: tuple[int, ...] = SCHEDULES["256"]
    vocab_size: int = 4096
    c_vae: int = 32
    # one registered mechanism name for every block, or a list with one name per block
    attention: Any = "full"
    # keyword arguments per mechanism name, passed to its constructor, e.g. {"neighborhood": {"kernel_size": 7}}
    attention_options: dict[str, Any] = field(default_factory=dict)
    attn_l2_norm: bool = True
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    drop_path_rate: Optional[float] = None  # None: 0.1 * depth / 24, the published schedule
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    init_adaln_gamma: float = 1e-5  # initial scale of the AdaLN gates (published alng; its d16 recipe: 1e-3)

    @classmethod
    def presets(cls) -> dict[str, VARConfig]:
        """The named configs, `PRESETS`: a config file starts from one with `model: {preset: d16}` (scaffold.config)."""
        return PRESETS

    @property
    def width(self) -> int:
        return 64 * self.depth

    @property
    def heads(self) -> int:
        return self.depth

    @property
    def num_tokens(self) -> int:
        return ScaleLayout.of(self.patch_nums).num_tokens

    def resolved_drop_path_rate(self) -> float:
        return 0.1 * self.depth / 24 if self.drop_path_rate is None else self.drop_path_rate

    def block_attention(self) -> list[str]:
        """The mechanism name of every block."""
        if isinstance(self.attention, str):
            return [self.attention] * self.depth
        names = list(self.attention)
        if len(names) != self.depth:
            raise ValueError(f"attention lists {len(names)} mechanisms for depth={self.depth}")
        return names


PRESETS: dict[str, VARConfig] = {
    "d16": VARConfig(depth=16),
    "d20": VARConfig(depth=20),
    "d24": VARConfig(depth=24),
    "d30": VARConfig(depth=30),
    "d36": VARConfig(depth=36, patch_nums=SCHEDULES["512"], shared_aln=True),  # the 512 px model
}


def preset(name: str, **overrides: Any) -> VARConfig:
    """A copy of ``PRESETS[name]`` with fields overridden, e.g. ``preset("d16", attention="neighborhood")``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def hybrid_attention(depth: int) -> list[str]:
    """The mechanism of every block of the hybrid preset (configs/var/d16_hybrid.yaml) at any depth: local
    mechanisms early, global ones late - lka in the first quarter of the blocks, neighborhood in the second,
    full in the rest. Below depth 4 a quarter rounds to nothing: one lka block, then full (the digits
    model, depth 2: lka, full), so that the preset stays a mix of local and global."""
    if depth < 2:
        raise ValueError(f"the hybrid preset mixes local and global blocks: it needs depth >= 2, got {depth}")
    quarter = depth // 4
    lka = max(quarter, 1)
    return ["lka"] * lka + ["neighborhood"] * quarter + ["full"] * (depth - lka - quarter)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(linear(x, self.fc1.weight, self.fc1.bias, activation="gelu_tanh"))


def drop_path(x_BLC: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's ``drop_path``, used by the published blocks)."""
    if p == 0.0 or not training:
        return x_BLC
    keep = x_BLC.new_empty(x_BLC.shape[0], 1, 1).bernoulli_(1 - p)
    return x_BLC * keep / (1 - p)


class AdaLNBlock(nn.Module):
    """Pre-norm block with AdaLN from the class embedding (published ``AdaLNSelfAttn``).

    Six modulation vectors in the published order gamma1, gamma2, scale1, scale2, shift1, shift2,
    either from the block's own ``ada_lin`` or (``shared_aln``) ``ada_gss`` plus the model's shared ones.
    """

    def __init__(self, mixer: TokenMixer, dim: int, mlp_ratio: float, shared_aln: bool, drop_path_p: float, eps: float):
        super().__init__()
        self.dim, self.shared_aln, self.drop_path_p = dim, shared_aln, drop_path_p
        self.attn = mixer
        self.ffn = FFN(dim, round(dim * mlp_ratio))
        self.ln = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``cond``: ``[B, D]`` class embedding, or ``[B, 1, 6, C]`` from the shared AdaLN -> six ``[B, 1, C]``."""
        if self.shared_aln:
            return (self.ada_gss + cond).unbind(2)
        return self.ada_lin(cond).view(-1, 1, 6, self.dim).unbind(2)

    def forward(self, x_BLC: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over the whole packed sequence."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond)
        h = self.attn(self.ln(x_BLC) * (1 + scale1) + shift1)
        x_BLC = x_BLC + drop_path(h * gamma1, self.drop_path_p, self.training)
        h = self.ffn(self.ln(x_BLC) * (1 + scale2) + shift2)
        return x_BLC + drop_path(h * gamma2, self.drop_path_p, self.training)

    def step(
        self, x_BlC: torch.Tensor, mods: tuple[torch.Tensor, ...], state: Any, si: int, begin: Optional[int] = None
    ) -> torch.Tensor:
        """One scale ``si`` of sampling (no grad, eval mode) with the mixer's state (``None`` for mechanisms that
        keep none, such as lka and gspn) and ``mods`` from :meth:`VAR.block_modulations`. The same operations
        as :meth:`forward`, but in place where the published block is (``AdaLNSelfAttn.forward``): no new
        tensor for the modulation and the gates, and the second residual added into the first's result.
        ``begin``: a subset of the scale's tokens after as many cached ones (token pruning; a
        :attr:`~var.attention.TokenMixer.prunable` mixer only)."""
        gamma1, gamma2, scale1p1, scale2p1, shift1, shift2 = mods
        h = self.ln(x_BlC).mul_(scale1p1).add_(shift1)
        h = self.attn.step(h, state, si) if begin is None else self.attn.step(h, state, si, begin=begin)
        x_BlC = x_BlC + h.mul_(gamma1)  # a new tensor: the caller's input stays as it was
        h = self.ffn(self.ln(x_BlC).mul_(scale2p1).add_(shift2))
        return x_BlC.add_(h.mul_(gamma2))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim = dim
        self.ln = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.dim).unbind(2)
        return self.ln(x_BLC) * (1 + scale) + shift


class VAR(nn.Module):
    """Class-conditional next-scale prediction transformer.

    Sequence layout: ``L = sum(pn**2)`` tokens, coarse to fine, row-major inside a scale. Token 0..first_l-1
    is the start token (class embedding + ``pos_start``); the others embed the VAE feature map of the
    previous scale (``x_BLCv``, from ``vae.idx_to_var_input``).
    """

    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        self.config = config
        C, V, S = config.width, config.vocab_size, len(config.patch_nums)
        self.layout = ScaleLayout.of(config.patch_nums)
        self.patch_nums = self.layout.patch_nums
        self.L = self.layout.num_tokens
        self.first_l = self.layout.sizes[0]

        self.word_embed = Linear(config.c_vae, C)
        self.class_emb = nn.Embedding(config.num_classes + 1, C)  # last row: the null class for guidance
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        self.lvl_embed = nn.Embedding(S, C)
        # published: the scale id of every token, a persistent buffer of the checkpoints
        self.register_buffer("lvl_1L", self.layout.scale_ids().view(1, self.L))
        # The published checkpoints also hold `attn_bias_for_masking`, the dense [1, 1, L, L] block-causal
        # mask as 0/-inf floats. It is not kept here (L^2 floats on every device, moved and broadcast by
        # DDP for nothing: each mixer builds its own mask from patch_nums); load_official_var checks
        # the checkpoint's copy against the mask and drops it.

        if config.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), Linear(C, 6 * C))
        else:
            self.shared_ada_lin = nn.Identity()
        rate = config.resolved_drop_path_rate()
        dpr = [rate * i / max(config.depth - 1, 1) for i in range(config.depth)]  # rising linearly from 0
        self.blocks = nn.ModuleList(
            [
                AdaLNBlock(
                    build_mixer(
                        name,
                        C,
                        config.heads,
                        self.patch_nums,
                        attn_l2_norm=config.attn_l2_norm,
                        **config.attention_options.get(name, {}),
                    ),
                    C,
                    config.mlp_ratio,
                    config.shared_aln,
                    dpr[i],
                    config.norm_eps,
                )
                for i, name in enumerate(config.block_attention())
            ]
        )
        self.head_nm = AdaLNBeforeHead(C, config.norm_eps)
        self.head = Linear(C, V)
        self.init_weights()

    @torch.no_grad()
    def init_weights(
        self,
        init_adaln: float = 0.5,
        init_adaln_gamma: Optional[float] = None,
        init_head: float = 0.02,
        init_std: float = -1.0,
    ) -> None:
        """The published initialisation (``VAR.init_weights`` as called by ``build_vae_var``).

        Linear and embedding weights ~ truncated normal (std ``sqrt(1/C/3)`` when ``init_std < 0``),
        biases 0; residual output projections divided by ``sqrt(2 * depth)``; AdaLN gates (gamma)
        scaled by ``init_adaln_gamma`` (None: the config's, 1e-5 by default) and scales/shifts by 0.5,
        so every block starts close to the identity.
        """
        C = self.config.width
        if init_adaln_gamma is None:
            init_adaln_gamma = self.config.init_adaln_gamma
        if init_std < 0:
            init_std = math.sqrt(1 / C / 3)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=init_std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        depth = len(self.blocks)
        for block in self.blocks:
            for name in ("proj", "fc2"):  # residual outputs (the ffn's fc2 and a mixer's proj, when it has one)
                lin = getattr(block.ffn if name == "fc2" else block.attn, name, None)
                if isinstance(lin, nn.Linear):
                    lin.weight.div_(math.sqrt(2 * depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                lin = block.ada_lin[-1]
                lin.weight[2 * C :].mul_(init_adaln)
                lin.weight[: 2 * C].mul_(init_adaln_gamma)
                lin.bias.zero_()

    # ---- pieces shared by teacher forcing and sampling ----

    def lvl_pos(self) -> torch.Tensor:
        """Scale embedding plus absolute position embedding, ``[1, L, C]``."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def first_scale_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Input tokens of scale 0, ``[B, first_l, C]``, from the class embedding."""
        B = cond_BD.shape[0]
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        return sos + self.lvl_pos()[:, : self.first_l]

    def scale_tokens(self, si: int, next_BChw: torch.Tensor) -> torch.Tensor:
        """Input tokens of scale ``si >= 1``, ``[B, pn*pn, C]``, from the VAE's next-scale input ``[B, Cvae, pn, pn]``."""
        begin, end = self.layout.bounds[si]
        x_BlCv = next_BChw.flatten(2).transpose(1, 2)  # [B, pn*pn, Cvae]
        return self.word_embed(x_BlCv) + self.lvl_pos()[:, begin:end]

    def block_cond(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """What the blocks' AdaLN reads: the class embedding ``[B, D]``, or ``[B, 1, 6, C]`` with ``shared_aln``."""
        if self.config.shared_aln:
            return self.shared_ada_lin(cond_BD).view(-1, 1, 6, self.config.width)
        return cond_BD

    def logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Head: AdaLN then Linear, always in fp32 (published ``get_logits``)."""
        with full_precision(h_BLC.device):
            return self.head(self.head_nm(h_BLC.float(), cond_BD.float()))

    # ---- teacher forcing ----

    def forward(self, labels_B: torch.Tensor, x_BLCv: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing logits ``[B, L, V]`` (fp32).

        ``x_BLCv``: ``[B, L - first_l, Cvae]``, the VAE's teacher-forcing input. In training mode each label
        is replaced by the null class with probability ``cond_drop_rate`` (classifier-free guidance).
        """
        B = x_BLCv.shape[0]
        if self.training and self.config.cond_drop_rate > 0:
            drop_B = torch.rand(B, device=labels_B.device) < self.config.cond_drop_rate
            labels_B = torch.where(drop_B, self.config.num_classes, labels_B)
        with full_precision(x_BLCv.device):
            cond_BD = self.class_emb(labels_B)
            sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
            x_BLC = torch.cat((sos, self.word_embed(x_BLCv.float())), dim=1) + self.lvl_pos()
        cond = self.block_cond(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond)
        return self.logits(x_BLC, cond_BD)

    # ---- sampling: one scale at a time over explicit per-block states ----

    def init_state(self, batch: int) -> list[Any]:
        """Fresh sampling states, one per block."""
        return [block.attn.init_state(batch) for block in self.blocks]

    def block_modulations(self, cond_BD: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Every block's AdaLN vectors for sampling, ``(gamma1, gamma2, 1 + scale1, 1 + scale2, shift1, shift2)``,
        each ``[B, 1, C]``: the class embedding is the same at every scale, so a sampling call computes them
        once instead of once per scale (the published sampler runs every ``ada_lin`` at every scale)."""
        cond = self.block_cond(cond_BD)
        mods = []
        for block in self.blocks:
            gamma1, gamma2, scale1, scale2, shift1, shift2 = block.modulation(cond)
            mods.append((gamma1, gamma2, scale1.add(1), scale2.add(1), shift1, shift2))
        return mods

    def forward_scale(
        self,
        x_BlC: torch.Tensor,
        cond_BD: torch.Tensor,
        states: list[Any],
        si: int,
        mods: Optional[list[tuple[torch.Tensor, ...]]] = None,
    ) -> torch.Tensor:
        """Logits ``[B, pn*pn, V]`` of scale ``si`` from its input tokens; updates ``states`` in place.
        ``mods``: :meth:`block_modulations` of ``cond_BD``, computed here when not given."""
        if mods is None:
            mods = self.block_modulations(cond_BD)
        return self.logits(self.hidden_scale(x_BlC, states, si, mods), cond_BD)

    def hidden_scale(
        self,
        x_BlC: torch.Tensor,
        states: list[Any],
        si: int,
        mods: list[tuple[torch.Tensor, ...]],
        begin: Optional[int] = None,
    ) -> torch.Tensor:
        """The last block's output ``[B, l, C]`` at scale ``si`` (what :meth:`logits` reads); updates ``states``.
        ``begin``: ``x_BlC`` is a subset of the scale's tokens, after ``begin`` cached ones (token pruning)."""
        for block, block_mods, state in zip(self.blocks, mods, states):
            x_BlC = block.step(x_BlC, block_mods, state, si, begin)
        return x_BlC

    def prunable(self) -> Optional[str]:
        """None when every block's mixer can run on a subset of a scale's tokens (token pruning), else why not."""
        for i, block in enumerate(self.blocks):
            if not block.attn.prunable:
                return (
                    f"token pruning needs mechanisms that mix a token with the cached ones only; block {i} "
                    f"uses {block.attn.name!r}, which mixes it with its grid neighbours (prune_keep must stay 1)"
                )
        return None

    def first_rows(self, states: list[Any], rows: int) -> list[Any]:
        """Every block's sampling state for the first ``rows`` sequences only (guidance stops midway)."""
        return [block.attn.first_rows(state, rows) for block, state in zip(self.blocks, states)]

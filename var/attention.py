"""The token-mixing sublayer of a VAR block, behind one interface, and its "full" mechanism.

Every mechanism (docs/architecture.md section 7) is a :class:`TokenMixer`: a module that maps normalised
tokens ``[B, L, C]`` to ``[B, L, C]`` while keeping block causality (docs/architecture.md section 6). It is
called in two ways:

- teacher forcing, ``mixer(x_BLC)``: the whole packed sequence, coarse to fine, every scale of
  ``patch_nums``;
- sampling, ``mixer.step(x_BlC, state, si)``: the ``pn * pn`` tokens of scale ``si`` only, with an
  explicit per-block ``state`` made by ``mixer.init_state(batch)`` and updated in place
  (full attention: the key/value cache; other mechanisms: running statistics, or nothing).

Running ``step`` over the scales in order must give the rows of the teacher-forcing output.

A mechanism names itself (``name``) and is listed in the table of :mod:`var.registry`;
``VARConfig.attention`` picks one name per block and :func:`var.registry.build_mixer` constructs it, so
adding a mechanism touches neither the block nor the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from var.linear import Linear, linear

__all__ = ["FullAttention", "KVCache", "TokenMixer", "block_causal_mask"]


def block_causal_mask(patch_nums: tuple[int, ...], device: Optional[torch.device] = None) -> torch.Tensor:
    """Boolean ``[L, L]`` mask, True where query ``n`` may attend to key ``m`` (scale(m) <= scale(n))."""
    sid_L = kernels.ScaleLayout.of(patch_nums).scale_ids(device)
    return sid_L[:, None] >= sid_L[None, :]


class TokenMixer(nn.Module):
    """Interface of a block's attention sublayer. Subclasses set ``name`` (their key in
    :data:`var.registry.MIXERS`) and implement the three methods.

    Constructor: ``Mixer(dim, num_heads, patch_nums, *, attn_l2_norm=True, **options)``, where
    ``options`` come from ``VARConfig.attention_options[name]`` (e.g. a kernel size).
    """

    name: ClassVar[str]
    # Whether `step` takes any subset of a scale's tokens with ``begin=`` (token pruning, var.sample): a
    # mechanism that mixes a token with its grid neighbours (a window, a convolution, a scan) cannot.
    prunable: ClassVar[bool] = False

    def __init__(self, dim: int, num_heads: int, patch_nums: tuple[int, ...]) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.layout = kernels.ScaleLayout.of(patch_nums)
        self.patch_nums = self.layout.patch_nums

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over the whole packed sequence ``[B, L, C]`` -> ``[B, L, C]``."""
        raise NotImplementedError

    def init_state(self, batch: int) -> Any:
        """A fresh sampling state for ``batch`` sequences (``None`` for a stateless mechanism)."""
        raise NotImplementedError

    def step(self, x_BlC: torch.Tensor, state: Any, si: int) -> torch.Tensor:
        """Tokens of scale ``si`` only, ``[B, pn*pn, C]`` -> ``[B, pn*pn, C]``; updates ``state`` in place.

        Called for ``si = 0, 1, ...`` in order, with the same ``state``. A :attr:`prunable` mechanism also
        takes ``begin=``: the tokens given are any subset of the scale's, and the state holds ``begin``
        tokens of the earlier scales (fewer than the packed offset when earlier scales were pruned).
        """
        raise NotImplementedError

    @staticmethod
    def first_rows(state: Any, rows: int) -> Any:
        """The state of the first ``rows`` sequences only (guidance turned off midway: the conditional half)."""
        return None if state is None else state.first_rows(rows)


@dataclass
class KVCache:
    """Sampling state of :class:`FullAttention`: the keys and values of the scales seen so far.

    Two buffers ``[B, H, L, D]`` for the whole sequence, allocated once (by :meth:`allocate`, or at the
    first :meth:`write`), so that a scale writes its keys once instead of re-concatenating the cache
    at every scale. A token sits at its packed position: scale ``si`` writes ``[begin, end)`` and reads
    ``[0, end)``, never a position it has not written earlier in the same call, so the buffers can be
    reused from call to call (the static caches of the CUDA-graph path, :func:`var.sample.static_states`).
    """

    length: int  # L, the tokens of every scale
    k: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None

    def allocate(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.k = torch.empty(batch, heads, self.length, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)

    def write(self, k_BHlD: torch.Tensor, v_BHlD: torch.Tensor, begin: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one scale's keys and values at ``[begin, begin + l)``; return every one up to there, ``[B, H, end, D]``."""
        B, H, l, D = k_BHlD.shape
        if self.k is None or self.k.shape[0] != B or self.k.dtype != k_BHlD.dtype:
            self.allocate(B, H, D, k_BHlD.dtype, k_BHlD.device)
        end = begin + l
        self.k[:, :, begin:end] = k_BHlD
        self.v[:, :, begin:end] = v_BHlD
        return self.k[:, :, :end], self.v[:, :, :end]

    def first_rows(self, rows: int) -> KVCache:
        """The cache of the first ``rows`` sequences: views of the same buffers (nothing is copied)."""
        if self.k is None:
            return KVCache(self.length)
        return KVCache(self.length, self.k[:rows], self.v[:rows])


class FullAttention(TokenMixer):
    """Softmax attention with the block-causal mask, as in the published ``models/basic_var.py``.

    Parameter and buffer names follow the published state dict: ``mat_qkv`` (no bias) with
    ``q_bias``, ``zero_k_bias`` (a persistent buffer there, so here too) and ``v_bias``;
    ``scale_mul_1H11`` when ``attn_l2_norm``; ``proj``.
    """

    name: ClassVar[str] = "full"
    # published: max_scale_mul = log(100), a cap on the learned per-head temperature
    MAX_SCALE_MUL: ClassVar[float] = math.log(100)
    prunable: ClassVar[bool] = True  # a query sees every cached key: any subset of queries, in any order

    def __init__(
        self, dim: int, num_heads: int, patch_nums: tuple[int, ...], *, attn_l2_norm: bool = True, backend: str = "auto"
    ) -> None:
        super().__init__(dim, num_heads, patch_nums)
        self.attn_l2_norm, self.backend = attn_l2_norm, backend
        if attn_l2_norm:
            # cosine attention: q and k unit vectors, q times a learned per-head temperature, initially 4
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = Linear(dim, dim)

    def _qkv(self, x_BlC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, l, _ = x_BlC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = linear(x_BlC, self.mat_qkv.weight, bias).view(B, l, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, l, D]
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp(max=self.MAX_SCALE_MUL).exp()
            # the fp32 temperature would promote q under autocast; keep q, k, v in one dtype for the kernels
            q = (F.normalize(q, dim=-1) * scale_mul).to(v.dtype)
            # the norm runs in fp32 under autocast; attention casts k to v's dtype anyway, so the
            # sampling cache holds it in that dtype (known before the first step: static caches)
            k = F.normalize(k, dim=-1).to(v.dtype)
        return q, k, v

    def _out(self, o_BHlD: torch.Tensor) -> torch.Tensor:
        B, H, l, D = o_BHlD.shape
        return self.proj(o_BHlD.transpose(1, 2).reshape(B, l, H * D))

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x_BLC)
        # The block-causal op: a fused flash-attention kernel that skips later-scale key tiles on CUDA,
        # a per-scale SDPA loop elsewhere; never an L x L x D tensor.
        return self._out(
            kernels.block_causal_attention(q, k, v, self.patch_nums, scale=self.scale, backend=self.backend)
        )

    def init_state(self, batch: int) -> KVCache:
        return KVCache(self.layout.num_tokens)

    def step(self, x_BlC: torch.Tensor, state: KVCache, si: int, begin: Optional[int] = None) -> torch.Tensor:
        q, k, v = self._qkv(x_BlC)
        if begin is None:  # every token of every scale so far: the packed offset of scale si
            begin = self.layout.begin(si)
        k, v = state.write(k, v, begin=begin)
        # the new scale's queries see all cached scales and their own scale: no mask
        return self._out(F.scaled_dot_product_attention(q, k, v, scale=self.scale))

    def extra_repr(self) -> str:
        backend = backend_repr("block_causal_attention", self.backend, self)
        return f"heads={self.num_heads}, attn_l2_norm={self.attn_l2_norm}, backend={backend}"


def backend_repr(op: str, backend: str, module: nn.Module) -> str:
    """The backend `op` runs with on `module`'s device, for `extra_repr`."""
    device = next(module.parameters()).device
    try:
        return kernels.resolve_backend(op, backend, device)
    except kernels.BackendUnavailableError as err:
        return f"unavailable ({err})"

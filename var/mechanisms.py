"""The four other token mixers of docs/architecture.md section 7: neighborhood, external, lka and gspn.

Each is a :class:`~var.attention.TokenMixer` (teacher forcing over the packed sequence, plus a
one-scale `step` with an explicit sampling state), listed under its `name` in `var.registry.MIXERS` so
that `VARConfig.attention` can pick it per block. Each keeps its parameter count at or below that of
full attention (4 C^2 + O(C)); the numbers are in each class docstring and tested.
The computation goes through the `kernels` ops (PyTorch reference or fused Triton kernel, chosen
by `backend`); `extra_repr` names the backend that runs on the module's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels.neighborhood_attention.reference import neighborhood_mask

from .attention import FullAttention, TokenMixer, backend_repr
from .linear import Linear

__all__ = ["ExternalAttention", "ExternalState", "GSPNMixer", "LargeKernelAttention", "NeighborhoodAttention"]


# ------------------------------------------------------------------------------------ neighborhood
class NeighborhoodAttention(FullAttention):
    """Pyramid neighborhood attention: the projections of full attention (same parameters, 4 C^2 + O(C)),
    but a query of scale k sees, in every scale s <= k, only a `kernel_size` window around its projected
    position (docs/architecture.md section 7.2). Sampling state: the key/value cache, as for full attention."""

    name: ClassVar[str] = "neighborhood"
    prunable: ClassVar[bool] = False  # its windows are tied to grid positions

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_nums: tuple[int, ...],
        *,
        attn_l2_norm: bool = True,
        kernel_size: int = 7,
        backend: str = "auto",
    ) -> None:
        super().__init__(dim, num_heads, patch_nums, attn_l2_norm=attn_l2_norm, backend=backend)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"neighborhood attention needs an odd kernel_size >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self._step_masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x_BLC)
        o = kernels.neighborhood_attention(
            q, k, v, self.patch_nums, self.kernel_size, scale=self.scale, backend=self.backend
        )
        return self._out(o)

    def _step_mask(self, si: int, device: torch.device) -> torch.Tensor:
        key = (si, device)
        if key not in self._step_masks:  # [pn*pn, end_si] booleans, built once per scale
            self._step_masks[key] = neighborhood_mask(self.patch_nums, self.kernel_size, si, device)
        return self._step_masks[key]

    def step(self, x_BlC: torch.Tensor, state, si: int) -> torch.Tensor:
        q, k, v = self._qkv(x_BlC)
        k, v = state.write(k, v, begin=self.layout.begin(si))
        # The newest scale's queries against the cached keys of all scales, through the same windows.
        mask = self._step_mask(si, x_BlC.device)
        return self._out(
            F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=self.scale)
        )

    def extra_repr(self) -> str:
        backend = backend_repr("neighborhood_attention", self.backend, self)
        return f"heads={self.num_heads}, attn_l2_norm={self.attn_l2_norm}, kernel_size={self.kernel_size}, backend={backend}"


# ---------------------------------------------------------------------------------------- external
@dataclass
class ExternalState:
    """Running max and sum of exp(logit) over the tokens seen so far, per (batch, head, memory slot)."""

    max_BH1S: Optional[torch.Tensor] = None
    sum_BH1S: Optional[torch.Tensor] = None

    def update(self, a_BHlS: torch.Tensor) -> torch.Tensor:
        """Fold in one scale's logits; return the log-sum-exp over every token seen, [B, H, 1, S]."""
        block_max = a_BHlS.amax(dim=2, keepdim=True)
        if self.max_BH1S is None:
            new_max = block_max
            self.sum_BH1S = torch.exp(a_BHlS - new_max).sum(dim=2, keepdim=True)
        else:
            new_max = torch.maximum(self.max_BH1S, block_max)
            self.sum_BH1S = self.sum_BH1S * torch.exp(self.max_BH1S - new_max) + torch.exp(a_BHlS - new_max).sum(
                dim=2, keepdim=True
            )
        self.max_BH1S = new_max
        return new_max + self.sum_BH1S.log()

    def first_rows(self, rows: int) -> ExternalState:
        if self.max_BH1S is None:
            return ExternalState()
        return ExternalState(self.max_BH1S[:rows], self.sum_BH1S[:rows])


class ExternalAttention(TokenMixer):
    """External attention (two learned memories per head) with the block-causal double normalisation
    of docs/architecture.md section 7.3: softmax over the visible tokens, then L1 over the memory slots.

    Parameters: q projection C^2 + C, memories 2 * H * S * D = 2 S C, output projection C^2 + C:
    2 C^2 + (2S + 2) C <= 4 C^2 + O(C). Cost and memory are linear in L.
    Sampling state: a running max and sum per (head, memory slot) (:class:`ExternalState`).
    """

    name: ClassVar[str] = "external"
    prunable: ClassVar[bool] = True  # each token on its own against the memories

    L1_EPS: ClassVar[float] = 1e-6

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_nums: tuple[int, ...],
        *,
        attn_l2_norm: bool = True,
        num_slots: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__(dim, num_heads, patch_nums)
        del attn_l2_norm  # a property of softmax attention over keys; the memories are learned directly
        self.num_slots, self.backend = num_slots, backend
        self.mat_q = Linear(dim, dim)
        std = 1.0 / math.sqrt(self.head_dim)
        self.mem_k = nn.Parameter(torch.randn(num_heads, num_slots, self.head_dim) * std)
        self.mem_v = nn.Parameter(torch.randn(num_heads, num_slots, self.head_dim) * std)
        self.proj = Linear(dim, dim)
        self.scale = self.head_dim**-0.5

    def _q(self, x_BlC: torch.Tensor) -> torch.Tensor:
        B, l, _ = x_BlC.shape
        return self.mat_q(x_BlC).view(B, l, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, l, D]

    def _out(self, o_BHlD: torch.Tensor) -> torch.Tensor:
        B, H, l, D = o_BHlD.shape
        return self.proj(o_BHlD.transpose(1, 2).reshape(B, l, H * D))

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        q = self._q(x_BLC)
        mem_k, mem_v = self.mem_k.to(q.dtype), self.mem_v.to(q.dtype)
        o = kernels.external_attention(q, mem_k, mem_v, self.patch_nums, scale=self.scale, backend=self.backend)
        return self._out(o)

    def init_state(self, batch: int) -> ExternalState:
        return ExternalState()

    def step(self, x_BlC: torch.Tensor, state: ExternalState, si: int, begin: Optional[int] = None) -> torch.Tensor:
        del begin  # the state is running statistics over whichever tokens were seen, not positions
        q = self._q(x_BlC).float()
        a_BHlS = torch.einsum("bhld,hsd->bhls", q, self.mem_k.float()) * self.scale
        A_BHlS = torch.exp(a_BHlS - state.update(a_BHlS))  # softmax over every visible token, per slot
        A_BHlS = A_BHlS / (A_BHlS.sum(dim=-1, keepdim=True) + self.L1_EPS)
        o = torch.einsum("bhls,hsd->bhld", A_BHlS, self.mem_v.float()).to(x_BlC.dtype)
        return self._out(o)

    def extra_repr(self) -> str:
        backend = backend_repr("external_attention", self.backend, self)
        return f"heads={self.num_heads}, slots={self.num_slots}, backend={backend}"


# ------------------------------------------------------------------------------------ per-scale mixers


class _PerScaleMixer(TokenMixer):
    """A mixer that reads each scale's map alone (lka, gspn): block causal by construction, and sampling
    needs no state, since a scale's output depends on that scale's tokens only. Subclasses define
    ``_mix(x_BLC, patch_nums)`` over any run of whole scales."""

    def _mix(self, x_BLC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self._mix(x_BLC, self.patch_nums)

    def init_state(self, batch: int) -> None:
        return None

    def step(self, x_BlC: torch.Tensor, state: None, si: int) -> torch.Tensor:
        return self._mix(x_BlC, (self.patch_nums[si],))


# --------------------------------------------------------------------------------------------- lka
def _depthwise_weight(channels: int, k: int) -> tuple[nn.Parameter, nn.Parameter]:
    # nn.Conv2d's default init for a depthwise conv: fan_in = k*k
    bound = 1.0 / math.sqrt(k * k)
    return (
        nn.Parameter(torch.empty(channels, k, k).uniform_(-bound, bound)),
        nn.Parameter(torch.empty(channels).uniform_(-bound, bound)),
    )


class LargeKernelAttention(_PerScaleMixer):
    """Large kernel attention on each scale's map separately (docs/architecture.md section 7.4):
    u = gelu(proj_1(x)); attn = pw(dw_dilated(dw(u))); out = proj(u * attn), with dw depthwise 5x5 and
    dw_dilated depthwise 7x7 dilation 3 (receptive field 23x23), zero padding at each map's border.

    Parameters: proj_1, pw, proj: 3 (C^2 + C); depthwise 25 C + 49 C + 2 C: 3 C^2 + 79 C <= 4 C^2 + O(C).
    Nothing crosses scales, so sampling needs no state: a step convolves the current scale alone.
    """

    name: ClassVar[str] = "lka"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_nums: tuple[int, ...],
        *,
        attn_l2_norm: bool = True,
        kernel_size: int = 5,
        dilated_kernel_size: int = 7,
        dilation: int = 3,
        backend: str = "auto",
    ) -> None:
        super().__init__(dim, num_heads, patch_nums)
        del attn_l2_norm
        self.backend, self.dilation = backend, dilation
        self.proj_1 = Linear(dim, dim)
        self.dw_weight, self.dw_bias = _depthwise_weight(dim, kernel_size)
        self.dwd_weight, self.dwd_bias = _depthwise_weight(dim, dilated_kernel_size)
        self.pw = Linear(dim, dim)  # the 1x1 conv
        self.proj = Linear(dim, dim)

    def _mix(self, x_BlC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        u = F.gelu(self.proj_1(x_BlC))
        dt = u.dtype
        a = kernels.ragged_depthwise_conv2d(
            u, patch_nums, self.dw_weight.to(dt), self.dw_bias.to(dt), dilation=1, backend=self.backend
        )
        a = kernels.ragged_depthwise_conv2d(
            a, patch_nums, self.dwd_weight.to(dt), self.dwd_bias.to(dt), dilation=self.dilation, backend=self.backend
        )
        return self.proj(u * self.pw(a))

    def extra_repr(self) -> str:
        backend = backend_repr("ragged_depthwise_conv2d", self.backend, self)
        return f"dw={tuple(self.dw_weight.shape[1:])}, dw_dilated={tuple(self.dwd_weight.shape[1:])} x{self.dilation}, backend={backend}"


# -------------------------------------------------------------------------------------------- gspn
# Directions as orientations of a square map: the scan always runs along the last axis (W).
def _orient(m_NChw: torch.Tensor, d: int) -> torch.Tensor:
    if d == 0:  # left -> right
        return m_NChw
    if d == 1:  # right -> left
        return m_NChw.flip(-1)
    if d == 2:  # top -> bottom
        return m_NChw.transpose(-1, -2)
    return m_NChw.transpose(-1, -2).flip(-1)  # bottom -> top


def _unorient(m_NChw: torch.Tensor, d: int) -> torch.Tensor:
    if d == 0:
        return m_NChw
    if d == 1:
        return m_NChw.flip(-1)
    if d == 2:
        return m_NChw.transpose(-1, -2)
    return m_NChw.flip(-1).transpose(-1, -2)


class _GSPNPacking:
    """Where each scale and direction of a GSPN layer sits in the packed maps of the reference path.

    The oriented ``p x p`` maps of every scale are stacked along H: scale s takes rows
    ``[sum(p_<s), sum(p_<=s))`` and columns ``[0, p)`` of a ``R x W`` map (R = sum(p), W = max(p)); the
    other cells read a zero token (index L) and what the scan writes there is never read back.
    """

    _cache: ClassVar[dict[tuple[tuple[int, ...], torch.device], _GSPNPacking]] = {}

    def __init__(self, patch_nums: tuple[int, ...], device: torch.device) -> None:
        layout = kernels.ScaleLayout.of(patch_nums)
        nd, L = GSPNMixer.DIRECTIONS, layout.num_tokens
        self.rows, self.width = sum(patch_nums), max(patch_nums)
        token = torch.full((self.width, self.rows, nd), L, dtype=torch.long)
        first_row, last_row = torch.zeros(self.rows, dtype=torch.bool), torch.zeros(self.rows, dtype=torch.bool)
        row0 = 0
        for p, (begin, end) in zip(layout.patch_nums, layout.bounds):
            tok_pp = torch.arange(begin, end).view(1, p, p)
            # the same orientations as the per-scale layout: oriented[d][i, j] = token at row i, column j
            oriented = _orient(tok_pp, 0), _orient(tok_pp, 1), _orient(tok_pp, 2), _orient(tok_pp, 3)
            for d in range(nd):
                token[:p, row0 : row0 + p, d] = oriented[d][0].T  # [column, row]
            first_row[row0], last_row[row0 + p - 1] = True, True
            row0 += p
        # rows to gather, in the packed order [W, R, nd]: a token's row, or its (token, direction) row
        self.token_cells = token.flatten().to(device)
        self.token_direction_cells = (token * nd + torch.arange(nd)).flatten().to(device)
        # g0 reads row r-1, g2 row r+1: another scale's row on a scale's first / last row
        other = torch.zeros(self.width, self.rows, 3, dtype=torch.bool)
        other[:, first_row, 0], other[:, last_row, 2] = True, True
        self.other_scale_WR3 = other.to(device)
        # inverse map: for each direction and token, its cell (column * R + row) in the packed maps
        cell = torch.empty(nd, L, dtype=torch.long)
        flat = token.view(-1, nd)
        for d in range(nd):
            real = flat[:, d] < L
            cell[d, flat[real, d]] = torch.arange(flat.shape[0])[real]
        # [nd, L] -> row of [W * R * nd] packed cells
        self.direction_tokens = (cell * nd + torch.arange(nd)[:, None]).flatten().to(device)

    @classmethod
    def get(cls, patch_nums: tuple[int, ...], device: torch.device) -> _GSPNPacking:
        key = (tuple(patch_nums), device)
        if key not in cls._cache:
            cls._cache[key] = cls(tuple(patch_nums), device)
        return cls._cache[key]


class GSPNMixer(_PerScaleMixer):
    """Generalized spatial propagation (docs/architecture.md section 7.5) on each scale's map separately.

    v = proj_in(x) is propagated by the 3-neighbour line scan in four directions; each direction has its
    own gates (3 per pixel), input gate lam = sigmoid(.) and output gate u, computed from x per group of
    channels (one group per head: the "compact" GSPN variant, gates shared inside a head), and its own
    per-channel skip d: y_dir = u * h + d * v. The four aligned outputs are merged by a learned per-channel
    linear map over the directions, then projected: out = proj(sum_dir w_dir * y_dir).

    Parameters: proj_in, proj: 2 (C^2 + C); gate projection C * 20 G + 20 G (G = heads); w and d: 8 C.
    With G = C / 64 that is about 2.3 C^2 <= 4 C^2 + O(C). Nothing crosses scales: no sampling state.

    Two layouts, the same function. With the Triton kernels (CUDA), each scale's four directions go
    through one scan call (stacked on the batch axis). With the PyTorch reference (CPU), every scale
    and direction go through one call: the oriented maps are stacked along H (:class:`_GSPNPacking`),
    so the column loop runs max(p) steps once instead of p steps per scale, on tensors laid out as the
    reference scans them; a gate towards a row of another scale gets the raw value -inf, which the
    normalisation turns into exactly 0, as it does for a row outside a map. Gates and input weights
    stay one per head: the scan reads them broadcast over the head's channels (stride 0), uncopied.
    Both layouts agree to float rounding (tested in float64, gradients included).
    """

    name: ClassVar[str] = "gspn"
    DIRECTIONS: ClassVar[int] = 4

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_nums: tuple[int, ...],
        *,
        attn_l2_norm: bool = True,
        chunk: Optional[int] = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(dim, num_heads, patch_nums)
        del attn_l2_norm
        self.chunk, self.backend = chunk, backend
        G, nd = num_heads, self.DIRECTIONS
        self.proj_in = Linear(dim, dim)
        # per direction and head: 3 raw gates, lam, u
        self.gate_proj = Linear(dim, nd * 5 * G)
        self.skip_d = nn.Parameter(torch.ones(nd, dim))
        self.merge_w = nn.Parameter(torch.full((nd, dim), 1.0 / nd))
        self.proj = Linear(dim, dim)

    def _mix_scale(self, x_BlC: torch.Tensor, pn: int) -> torch.Tensor:
        B, _l, C = x_BlC.shape
        G, nd, hd = self.num_heads, self.DIRECTIONS, self.head_dim
        v_BChw = self.proj_in(x_BlC).transpose(1, 2).reshape(B, C, pn, pn)
        gates = self.gate_proj(x_BlC).transpose(1, 2).reshape(B, nd, 5, G, pn, pn)
        # expand head-wise gates over the head's channels: [B, nd, 5, C, pn, pn]
        gates = gates.repeat_interleave(hd, dim=3)
        # stack the directions on the batch axis, each oriented so that its scan runs along W
        v_N = torch.cat([_orient(v_BChw, d) for d in range(nd)])  # [nd*B, C, pn, pn]
        g_N = torch.cat([_orient(gates[:, d], d) for d in range(nd)])  # [nd*B, 5, C, pn, pn]
        g_raw, lam, u = g_N[:, :3], torch.sigmoid(g_N[:, 3]), g_N[:, 4]
        g = kernels.gspn_normalize_gates(g_raw.contiguous(), backend=self.backend)
        h = kernels.gspn_scan(v_N.contiguous(), lam.contiguous(), g, chunk=self.chunk, backend=self.backend)
        d_N = self.skip_d.repeat_interleave(B, dim=0)[:, :, None, None].to(h.dtype)  # [nd*B, C, 1, 1]
        y_N = u * h + d_N * v_N
        w = self.merge_w.to(y_N.dtype)
        y_BChw = sum(w[d][None, :, None, None] * _unorient(y_N[d * B : (d + 1) * B], d) for d in range(nd))
        return self.proj(y_BChw.flatten(2).transpose(1, 2))  # [B, pn*pn, C]

    def _mix_per_scale(self, x_BLC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        layout = kernels.ScaleLayout.of(patch_nums)
        return torch.cat([self._mix_scale(x_BlC, pn) for x_BlC, pn in zip(layout.split(x_BLC), patch_nums)], dim=1)

    def _mix_packed(self, x_BLC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        B, L, C = x_BLC.shape
        G, nd, hd = self.num_heads, self.DIRECTIONS, self.head_dim
        pack = _GSPNPacking.get(patch_nums, x_BLC.device)
        W, R, N = pack.width, pack.rows, nd * B
        # Token-major [L + 1, B, ...] with a zero token at L for the padding cells, then one row gather
        # into the packed maps [W, R, nd, B, ...]: the scan's own memory order, with N = (nd, B).
        v_LBC = F.pad(self.proj_in(x_BLC).transpose(0, 1), (0, 0, 0, 0, 0, 1))
        v_WRDBC = v_LBC.view(L + 1, B * C).index_select(0, pack.token_cells).view(W, R, nd, B, C)
        gates_LBD5G = F.pad(self.gate_proj(x_BLC).transpose(0, 1), (0, 0, 0, 0, 0, 1)).view(L + 1, B, nd, 5 * G)
        gates_LDB5G = gates_LBD5G.transpose(1, 2).reshape((L + 1) * nd, B * 5 * G)  # row: (token, direction)
        gates_WRDB5G = gates_LDB5G.index_select(0, pack.token_direction_cells).view(W, R, nd, B, 5, G)
        g_raw_WRDB3G = gates_WRDB5G[..., :3, :].masked_fill(pack.other_scale_WR3[:, :, None, None, :, None], -math.inf)
        g_raw_N3GRW = g_raw_WRDB3G.reshape(W, R, N, 3, G).permute(2, 3, 4, 1, 0)
        g_N3GRW = kernels.gspn_normalize_gates(g_raw_N3GRW, backend=self.backend)
        # The scan sees the heads as batch entries, N' = (nd, B, G), and a head's channels as its channels,
        # so that a head's gates and input weights are one value broadcast over them (stride 0).
        NG = N * G
        g_W3RN1 = g_N3GRW.permute(4, 1, 3, 0, 2).reshape(W, 3, R, NG, 1)
        lam_WRN1 = torch.sigmoid(gates_WRDB5G[..., 3, :]).reshape(W, R, NG, 1)
        h = kernels.gspn_scan(
            v_WRDBC.view(W, R, NG, hd).permute(2, 3, 1, 0),
            lam_WRN1.expand(W, R, NG, hd).permute(2, 3, 1, 0),
            g_W3RN1.expand(W, 3, R, NG, hd).permute(3, 1, 4, 2, 0),
            chunk=self.chunk,
            backend=self.backend,
        )
        h_WRDBGh = h.permute(3, 2, 0, 1).view(W, R, nd, B, G, hd)
        u_WRDBGh = gates_WRDB5G[..., 4, :, None]
        d_DGh = self.skip_d.to(h.dtype).view(nd, G, hd)
        y_WRDBC = (u_WRDBGh * h_WRDBGh + d_DGh[:, None] * v_WRDBC.view(W, R, nd, B, G, hd)).view(W, R, nd, B, C)
        # Back to the tokens, one direction at a time, merged in the order of the per-scale layout.
        y_DLBC = y_WRDBC.view(W * R * nd, B * C).index_select(0, pack.direction_tokens).view(nd, L, B, C)
        w_DC = self.merge_w.to(y_DLBC.dtype)
        y_per_direction = (w_DC[:, None, None] * y_DLBC).unbind(0)
        y_LBC = y_per_direction[0]
        for y_d in y_per_direction[1:]:
            y_LBC = y_LBC + y_d
        return self.proj(y_LBC.transpose(0, 1))  # [B, L, C]

    def _mix(self, x_BLC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        if kernels.resolve_backend("gspn_scan", self.backend, x_BLC.device) == "torch":
            return self._mix_packed(x_BLC, patch_nums)
        return self._mix_per_scale(x_BLC, patch_nums)

    def extra_repr(self) -> str:
        backend = backend_repr("gspn_scan", self.backend, self)
        return f"groups={self.num_heads}, directions={self.DIRECTIONS}, chunk={self.chunk}, backend={backend}"

"""Class-conditional sampling, one scale at a time over explicit per-block states (docs/architecture.md section 8).

The pieces are small functions: :func:`guidance_ratio` and :func:`guide` (classifier-free guidance
schedule), :func:`filter_top_k_top_p`, :func:`draw` and :func:`gumbel_embed` (token choice), and
:func:`generate`, the loop that yields every scale. :func:`sample` and :func:`sample_progressive`
are the public entry points.

Settings rule. Every sampling function takes ``settings``, a :class:`~var.settings.SamplingSettings`
(default ``SamplingSettings()``: the paper's FID setting in exact fp32), and keyword changes of its
fields, applied over it by :meth:`~var.settings.SamplingSettings.replace` (:func:`~var.settings.merge_settings`;
as Hugging Face's ``generate`` applies keyword arguments over its ``GenerationConfig``):
``sample(model, vae, labels, cfg=2.0, top_k=1)`` is ``sample(model, vae, labels, SamplingSettings(cfg=2.0, top_k=1))``.
What is not a setting - the labels, the seeding of this call, a teacher, a compiled step - is an argument of its own.

Seeding rule. ``seed`` is an ``int``, a sequence of ints (one per image) or ``None``:

- ``int``: one ``torch.Generator`` for the whole batch, drawn row by row as the published
  ``autoregressive_infer_cfg`` does, so a batch reproduces the published code exactly; an image
  then depends on its position in the batch and on the batch size.
- sequence: one generator per image, seeded with its own seed, so an image depends only on its
  label and seed, never on the rest of the batch (for the batch CLI and resumable runs).
- ``None`` (the default): the settings' ``seed``, as an ``int``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from scaffold.precision import AUTOCAST_DTYPES, autocast, resolve_precision
from var.attention import KVCache
from var.model import VAR
from var.settings import SamplingSettings, SettingsError, merge_settings

__all__ = [
    "CompiledStep",
    "ScaleStep",
    "Teacher",
    "decode",
    "draw",
    "fill_pruned",
    "filter_top_k_top_p",
    "generate",
    "guidance_ratio",
    "guide",
    "gumbel_embed",
    "kept_tokens",
    "make_generators",
    "prune_scores",
    "sample",
    "sample_progressive",
    "static_states",
]

Seed = Union[int, Sequence[int], None]  # None: the settings' seed


@dataclass
class ScaleStep:
    """What :func:`generate` yields after scale ``si``."""

    si: int
    idx_Bl: torch.Tensor  # chosen tokens of this scale [B, pn*pn]
    # model logits of this scale: [2B, pn*pn, V] (conditional half first) where the scale is guided, else [B, ...]
    logits_BlV: torch.Tensor
    f_hat: torch.Tensor  # accumulated VAE feature map [B, Cvae, P, P]


@dataclass
class Teacher:
    """Tokens forced at every scale (zero-shot editing): where ``keep_Bl[si]`` is True, ``idx_Bl[si]`` is used."""

    idx_Bl: list[torch.Tensor]
    keep_Bl: list[torch.Tensor]


def guidance_ratio(cfg: float, si: int, num_scales: int) -> float:
    """Guidance strength at scale ``si``: rises linearly from 0 to ``cfg`` (published schedule)."""
    return cfg * si / max(num_scales - 1, 1)


def guide(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """``(1 + t) * cond - t * uncond`` over a batch stacked as [conditional; unconditional]."""
    cond, uncond = logits_2BlV.chunk(2)
    return (1 + t) * cond - t * uncond


def filter_top_k_top_p(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits to -inf outside the top-k, then outside the nucleus (published ``sample_with_top_k_top_p_``).

    Top-k keeps every logit >= the k-th largest (ties kept). Top-p sorts ascending and removes the tokens
    whose cumulative probability is <= ``1 - top_p``, always keeping the largest. 0 disables either.
    """
    V = logits_BlV.shape[-1]
    if top_k > 0:
        kth = logits_BlV.topk(min(top_k, V), dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BlV = logits_BlV.masked_fill(logits_BlV < kth, float("-inf"))
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        sorted_remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        sorted_remove[..., -1:] = False
        remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
        logits_BlV = logits_BlV.masked_fill(remove, float("-inf"))
    return logits_BlV


def make_generators(
    seed: Union[int, Sequence[int]], batch: int, device: torch.device
) -> Union[torch.Generator, list[torch.Generator]]:
    """One generator for the batch (an int seed), or one per image (a sequence of ``batch`` seeds)."""
    if isinstance(seed, numbers.Integral):
        return torch.Generator(device).manual_seed(int(seed))
    seeds = list(seed)
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for {batch} images")
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def draw(logits_BlV: torch.Tensor, rng: Union[torch.Generator, list[torch.Generator], None]) -> torch.Tensor:
    """One token per position from ``softmax(logits)``: ``[B, l]``. ``rng``: one generator, or one per image."""
    B, l, V = logits_BlV.shape
    probs_BlV = logits_BlV.softmax(dim=-1)
    if isinstance(rng, list):
        return torch.stack([torch.multinomial(probs_BlV[b], 1, generator=g)[:, 0] for b, g in enumerate(rng)])
    return torch.multinomial(probs_BlV.view(-1, V), 1, generator=rng).view(B, l)


def gumbel_embed(
    logits_BlV: torch.Tensor,
    tau: float,
    codebook_VC: torch.Tensor,
    rng: Union[torch.Generator, list[torch.Generator], None],
) -> torch.Tensor:
    """Soft code ``gumbel_softmax(logits, tau) @ codebook``: ``[B, l, Cvae]`` (published ``more_smooth``)."""
    if isinstance(rng, list):
        exp_BlV = torch.stack([torch.empty_like(logits_BlV[b]).exponential_(generator=g) for b, g in enumerate(rng)])
    else:
        exp_BlV = torch.empty_like(logits_BlV).exponential_(generator=rng)
    y_soft = ((logits_BlV - exp_BlV.log()) / tau).softmax(dim=-1)
    return y_soft @ codebook_VC


@torch.no_grad()
def decode(vae, f_hat: torch.Tensor, precision: str) -> torch.Tensor:
    """f_hat -> images [B, 3, H, W] in [0, 1] (fp32, contiguous), the decoder under the `precision` autocast;
    never recorded for autograd, whoever calls it (the web UI's progressive path and the sampling benchmark
    called it with autograd on: the decoder kept every activation and ran 1.4-3x slower).

    On a CPU the decoder runs channels-last, oneDNN's own layout: its convolutions then skip the reorders
    to and from the blocked layout, and the d16 decode of 4 images took 6.6-7.3 s instead of 8.3-10.7 s
    (2-core AMD EPYC, 2026-12-02; the same fp32 arithmetic, 2e-5 apart)."""
    if f_hat.device.type == "cpu":
        f_hat = f_hat.contiguous(memory_format=torch.channels_last)
    with autocast(f_hat.device, precision):
        return vae.fhat_to_img(f_hat).float().add(1).mul(0.5).contiguous()


def static_states(model: VAR, batch: int, dtype: torch.dtype, device: torch.device) -> list[Any]:
    """Sampling states for ``batch`` rows (2B with guidance) whose tensors are allocated now, once, and never
    replaced: every key/value cache (:class:`~var.attention.KVCache`) for the whole sequence, marked as a
    static address for ``torch.compile``, so that CUDA graphs replay over the same memory call after call
    (gpt-fast's static caches). ``dtype``: the attention's dtype, the autocast dtype or fp32.
    Mechanisms whose sampling state is rebuilt at every scale (external attention) cannot be held so."""
    states = model.init_state(batch)
    for i, (block, state) in enumerate(zip(model.blocks, states)):
        if isinstance(state, KVCache):
            state.allocate(batch, block.attn.num_heads, block.attn.head_dim, dtype, device)
            torch._dynamo.mark_static_address(state.k)
            torch._dynamo.mark_static_address(state.v)
        elif state is not None:
            raise ValueError(
                f"block {i}: the {block.attn.name!r} mechanism's sampling state is rebuilt at every scale; "
                "a compiled step with static caches supports the key/value caches and stateless mechanisms"
            )
    return states


class CompiledStep:
    """The per-scale step of sampling, ``model.forward_scale``, under ``torch.compile`` with static caches:
    the GPU path (``mode="reduce-overhead"`` captures every scale's step as a CUDA graph).

    Each scale has its own shapes, so it is its own graph: ``len(patch_nums)`` compilations per batch size
    and precision, paid by the first call in the process and reused after. The states come from
    :func:`static_states`, one set per (rows, dtype), kept here across calls. Pass it to :func:`generate`
    or :func:`sample` as ``step=``. ``backend="eager"`` traces without compiling (tests on any device).
    """

    def __init__(self, model: VAR, mode: Optional[str] = "reduce-overhead", backend: str = "inductor") -> None:
        self.model = model
        options = {"mode": mode} if backend == "inductor" else {}
        self._compiled = torch.compile(model.forward_scale, backend=backend, fullgraph=True, dynamic=False, **options)
        self._states: dict[tuple[int, torch.dtype, torch.device], list[Any]] = {}
        # One graph per scale, per batch size and per precision (room for 8 such pairs), where dynamo allows 8
        # in all: raised for this step's calls only, never for the process (config.patch restores it).
        limit = 8 * len(model.patch_nums)
        self._limits = {
            "recompile_limit": max(torch._dynamo.config.recompile_limit, limit),
            "accumulated_recompile_limit": max(torch._dynamo.config.accumulated_recompile_limit, 4 * limit),
        }

    def forward_scale(self, *args: Any, **kwargs: Any) -> Any:
        """``model.forward_scale``, compiled (its arguments and result)."""
        with torch._dynamo.config.patch(**self._limits):
            return self._compiled(*args, **kwargs)

    def states(self, batch: int, dtype: torch.dtype, device: torch.device) -> list[Any]:
        key = (batch, dtype, device)
        if key not in self._states:
            self._states[key] = static_states(self.model, batch, dtype, device)
        return self._states[key]


def _labels(labels_B: Union[torch.Tensor, Sequence[int], int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(labels_B, dtype=torch.long, device=device).view(-1)


def prune_scores(next_BChw: torch.Tensor) -> torch.Tensor:
    """How much each token of a scale's input map ``[B, Cvae, pn, pn]`` differs from the map's mean, ``[B, pn*pn]``:
    the squared distance in the tokenizer's feature space (FastVAR's pivotal-token score). Flat regions score
    low and are pruned first; edges and detail score high and keep running through the transformer."""
    return (next_BChw - next_BChw.mean(dim=(2, 3), keepdim=True)).square().sum(dim=1).flatten(1)


def kept_tokens(scores_Bl: torch.Tensor, keep: float) -> torch.Tensor:
    """The positions ``[B, n]`` (ascending) of the ``n = max(1, round(keep * l))`` highest scores of each
    row; ties go to the earlier position, so the choice is the same whatever the batch."""
    n = max(1, round(keep * scores_Bl.shape[1]))
    order = scores_Bl.argsort(dim=1, descending=True, stable=True)
    return order[:, :n].sort(dim=1).values


def fill_pruned(hidden_BkC: torch.Tensor, kept_Bk: torch.Tensor, previous_BLC: torch.Tensor, pn: int) -> torch.Tensor:
    """A scale's hidden states ``[B, pn*pn, C]`` (fp32): the previous scale's, ``previous_BLC`` (``[B, pn'*pn', C]``)
    area-resized to ``pn x pn``, with the kept tokens' own ``hidden_BkC`` at their positions ``kept_Bk``."""
    B, L, C = previous_BLC.shape
    p = math.isqrt(L)
    grid = previous_BLC.float().transpose(1, 2).reshape(B, C, p, p)
    full_BlC = F.interpolate(grid, size=(pn, pn), mode="area").flatten(2).transpose(1, 2).contiguous()
    return full_BlC.scatter(1, kept_Bk[..., None].expand(-1, -1, C), hidden_BkC.float())


@torch.no_grad()
def generate(
    model: VAR,
    vae,
    labels_B: Union[torch.Tensor, Sequence[int]],
    settings: Optional[SamplingSettings] = None,
    *,
    seed: Seed = None,
    teacher: Optional[Teacher] = None,
    step: Optional[CompiledStep] = None,
    **changes: Any,
) -> Iterator[ScaleStep]:
    """Sample scale by scale, yielding a :class:`ScaleStep` after each. Labels may include the null class.

    ``settings`` and ``changes``: the settings rule, ``seed``: the seeding rule (module docstring).
    With ``cfg > 0`` the batch is doubled with the null class; with ``cfg == 0`` only the conditional
    half runs (the unconditional one would be weighted by 0). ``precision``: see :func:`scaffold.precision.autocast`.
    ``teacher`` forces tokens (editing). ``step``: a :class:`CompiledStep` of ``model`` (static caches and
    one compiled graph per scale) instead of the eager ``model.forward_scale`` with fresh caches.
    Call it with the model in eval mode: in training mode drop-path would perturb every scale.

    Fast modes (:class:`~var.settings.SamplingSettings`; docs/architecture.md section 8.1): past
    ``guidance_until`` the unconditional half is dropped (caches included) and the scale's logits are the
    conditional ones, ``[B, l, V]``; at a pruned scale the blocks run on the kept tokens only and the
    others take the previous scale's hidden state (:func:`fill_pruned`); past ``stop_after`` nothing runs
    and no step is yielded. With every mode off, the loop is the exact one, operation for operation.
    """
    s = merge_settings(settings, changes)
    device = model.lvl_1L.device
    precision = resolve_precision(s.precision, device)
    labels_B = _labels(labels_B, device)
    B, S = labels_B.shape[0], len(model.patch_nums)
    if tuple(vae.patch_nums) != model.patch_nums:
        raise ValueError(f"VAE patch_nums {tuple(vae.patch_nums)} != model patch_nums {model.patch_nums}")
    pruning = any(s.pruned_at(si, S) for si in range(S))
    if pruning:
        why = model.prunable()
        if why is not None:
            raise SettingsError(why, "prune_keep")
        if step is not None:
            raise ValueError("token pruning runs the eager step: drop step= or set prune_keep=1")
    rng = make_generators(s.seed if seed is None else seed, B, device)
    guided = s.cfg != 0
    if guided:
        labels_B = torch.cat((labels_B, torch.full_like(labels_B, model.config.num_classes)))
    cond_BD = model.class_emb(labels_B)
    with autocast(device, precision):
        mods = model.block_modulations(cond_BD)
    if step is None:
        forward_scale, states = model.forward_scale, model.init_state(labels_B.shape[0])
    else:
        if step.model is not model:
            raise ValueError("step= was compiled for another model")
        dtype = AUTOCAST_DTYPES[precision] or model.head.weight.dtype
        forward_scale, states = step.forward_scale, step.states(labels_B.shape[0], dtype, device)
        torch.compiler.cudagraph_mark_step_begin()  # a new call: the previous call's graph outputs are done
    codebook_VC = vae.quantize.embedding.weight
    P = model.patch_nums[-1]
    f_hat = torch.zeros(B, vae.c_vae, P, P, device=device)
    x_BlC = model.first_scale_tokens(cond_BD)
    cached = 0  # tokens per row in the caches so far (fewer than the packed offset once scales are pruned)
    hidden_BlC = next_BChw = None  # with pruning: the last scale's hidden states, this scale's input map
    for si, pn in enumerate(model.patch_nums):
        if not s.runs(si, S):
            break
        if guided and not s.guided_at(si, S):  # from here on the conditional half alone
            guided = False
            states, cond_BD, x_BlC = model.first_rows(states, B), cond_BD[:B], x_BlC[:B]
            mods = [tuple(m[:B] for m in block_mods) for block_mods in mods]
            hidden_BlC = None if hidden_BlC is None else hidden_BlC[:B]
        ratio = si / max(S - 1, 1)
        with autocast(device, precision):
            if s.pruned_at(si, S):
                kept_Bk = kept_tokens(prune_scores(next_BChw), s.prune_keep)
                kept_Rk = kept_Bk.repeat(2, 1) if guided else kept_Bk  # the same tokens in both halves
                x_RkC = x_BlC.gather(1, kept_Rk[..., None].expand(-1, -1, x_BlC.shape[-1]))
                h_RkC = model.hidden_scale(x_RkC, states, si, mods, begin=cached)
                hidden_BlC = fill_pruned(h_RkC, kept_Rk, hidden_BlC, pn)
                logits_BlV = model.logits(hidden_BlC, cond_BD)
                cached += kept_Bk.shape[1]
            elif pruning:  # a later scale is pruned: keep this one's hidden states for it
                hidden_BlC = model.hidden_scale(x_BlC, states, si, mods)
                logits_BlV = model.logits(hidden_BlC, cond_BD)
                cached += model.layout.sizes[si]
            else:
                logits_BlV = forward_scale(x_BlC, cond_BD, states, si, mods)
        if step is not None:  # a CUDA graph's output is overwritten by its next replay; the caller may keep it
            logits_BlV = logits_BlV.clone()
        chosen_BlV = guide(logits_BlV, guidance_ratio(s.cfg, si, S)) if guided else logits_BlV
        chosen_BlV = filter_top_k_top_p(chosen_BlV, s.top_k, s.top_p)
        idx_Bl = draw(chosen_BlV, rng)
        if teacher is not None:
            keep_Bl = teacher.keep_Bl[si]
            idx_Bl = torch.where(keep_Bl, teacher.idx_Bl[si], idx_Bl)
        if s.more_smooth:  # visuals only; published: on the filtered logits, tau as in MaskGIT, sharper at finer scales
            tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
            h_BlC = gumbel_embed(chosen_BlV * (1 + ratio), tau, codebook_VC, rng)
            if teacher is not None:
                h_BlC = torch.where(keep_Bl[..., None], F.embedding(teacher.idx_Bl[si], codebook_VC), h_BlC)
            h_BChw = h_BlC.transpose(1, 2).reshape(B, vae.c_vae, pn, pn)
        else:
            h_BChw = vae.embed_idx(idx_Bl, si)
        f_hat, next_BChw = vae.next_scale_input(si, f_hat, h_BChw)
        yield ScaleStep(si, idx_Bl, logits_BlV, f_hat)
        if si + 1 < S:
            x_BlC = model.scale_tokens(si + 1, next_BChw)
            if guided:
                x_BlC = x_BlC.repeat(2, 1, 1)


@torch.no_grad()
def sample_progressive(
    model: VAR,
    vae,
    labels_B: Union[torch.Tensor, Sequence[int]],
    settings: Optional[SamplingSettings] = None,
    *,
    seed: Seed = None,
    step: Optional[CompiledStep] = None,
    **changes: Any,
) -> Iterator[torch.Tensor]:
    """Like :func:`sample`, but yields the partial image ``[B, 3, H, W]`` in [0, 1] after every scale."""
    s = merge_settings(settings, changes)
    for scale in generate(model, vae, labels_B, s, seed=seed, step=step):
        yield decode(vae, scale.f_hat, s.precision)


@torch.no_grad()
def sample(
    model: VAR,
    vae,
    labels_B: Union[torch.Tensor, Sequence[int]],
    settings: Optional[SamplingSettings] = None,
    *,
    seed: Seed = None,
    return_tokens: bool = False,
    step: Optional[CompiledStep] = None,
    **changes: Any,
) -> Union[torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]]]:
    """Class-conditional images ``[B, 3, H, W]`` in [0, 1] (and, with ``return_tokens``, the token indices
    of every scale, a list of ``[B, pn*pn]``).

    ``settings`` (default ``SamplingSettings()``: cfg 1.5, top-k 900, top-p 0.96, exact fp32) with keyword
    ``changes`` of its fields, e.g. ``sample(model, vae, labels, top_k=1)``; ``seed``: an int, one per
    image, or ``None`` for the settings' seed. Both rules: the module docstring. ``step``: see :func:`generate`.
    """
    s = merge_settings(settings, changes)
    idx_Bl: list[torch.Tensor] = []
    for scale in generate(model, vae, labels_B, s, seed=seed, step=step):
        idx_Bl.append(scale.idx_Bl)  # keep the tokens, not every scale's [2B, l, V] logits
    imgs = decode(vae, scale.f_hat, s.precision)
    return (imgs, idx_Bl) if return_tokens else imgs

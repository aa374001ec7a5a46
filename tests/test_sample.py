import pytest
import torch
from helpers import tiny_var

from kernels import CPU_GEMM_ENV_VAR
from var import VAR, SamplingSettings, generate, sample, sample_progressive
from var.attention import KVCache
from var.sample import (
    CompiledStep,
    decode,
    fill_pruned,
    filter_top_k_top_p,
    guidance_ratio,
    guide,
    kept_tokens,
    prune_scores,
    static_states,
)
from var.settings import SPEEDS, SettingsError


@pytest.fixture
def model() -> VAR:
    return tiny_var(seed=1)


@pytest.fixture
def vae(tiny_vae):
    with torch.no_grad():  # spread the codebook so that different tokens decode to visibly different images
        tiny_vae.quantize.embedding.weight.normal_(generator=torch.Generator().manual_seed(2))
    return tiny_vae


def test_guidance_schedule():
    assert [guidance_ratio(1.5, k, 4) for k in range(4)] == [0.0, 0.5, 1.0, 1.5]
    cond, uncond = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[1.0, 1.0]]])
    assert torch.equal(guide(torch.cat((cond, uncond)), 1.0), torch.tensor([[[3.0, -1.0]]]))


def test_top_k_top_p_semantics():
    logits = torch.tensor([[[0.0, 3.0, 1.0, 3.0, 2.0]]])
    inf = float("-inf")
    # top-k keeps every logit >= the k-th largest, ties included
    assert torch.equal(filter_top_k_top_p(logits, top_k=1), torch.tensor([[[inf, 3.0, inf, 3.0, inf]]]))
    assert torch.equal(filter_top_k_top_p(logits, top_k=100), logits)
    # top-p: drop ascending-sorted tokens whose cumulative probability is <= 1 - top_p
    probs = logits.softmax(-1)[0, 0]  # [0.02, 0.40, 0.06, 0.40, 0.12]
    kept = filter_top_k_top_p(logits, top_p=0.85)[0, 0] > inf
    assert kept.tolist() == [False, True, False, True, True]
    assert probs[~kept].sum() <= 0.15
    # the largest logit always stays, even with a tiny top_p
    assert (filter_top_k_top_p(logits, top_p=1e-6)[0, 0] > inf).sum() >= 1


@pytest.mark.parametrize("cfg", [0.0, 2.0], ids=["no_guidance", "guidance"])
def test_cache_gives_the_teacher_forcing_logits(model, vae, cfg):
    labels = torch.tensor([1, 4, 7])
    steps = list(generate(model, vae, labels, cfg=cfg, top_k=20, top_p=0.9, seed=3))
    idx = [s.idx_Bl for s in steps]
    sampled = torch.cat([s.logits_BlV[:3] for s in steps], 1)  # conditional half
    with torch.no_grad():
        forced = model(labels, vae.idx_to_var_input(idx))
    torch.testing.assert_close(sampled, forced, atol=1e-5, rtol=1e-5)
    if cfg:  # the unconditional half is the null class's teacher forcing
        uncond = torch.cat([s.logits_BlV[3:] for s in steps], 1)
        with torch.no_grad():
            forced_null = model(torch.full_like(labels, 10), vae.idx_to_var_input(idx))
        torch.testing.assert_close(uncond, forced_null, atol=1e-5, rtol=1e-5)


def test_sample_shapes_range_and_tokens(model, vae):
    imgs, idx = sample(model, vae, [1, 2], seed=0, return_tokens=True)
    assert imgs.shape == (2, 3, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1
    assert [t.shape for t in idx] == [(2, 1), (2, 4), (2, 9), (2, 16)]
    torch.testing.assert_close(imgs, vae.idx_to_img(idx).add(1).mul(0.5), atol=1e-5, rtol=0)


def test_same_seed_same_images_different_seed_different_images(model, vae):
    a = sample(model, vae, [1, 2], seed=0)
    assert torch.equal(a, sample(model, vae, [1, 2], seed=0))
    assert not torch.allclose(a, sample(model, vae, [1, 2], seed=1))
    s = sample(model, vae, [1, 2], seed=0, more_smooth=True)
    assert torch.equal(s, sample(model, vae, [1, 2], seed=0, more_smooth=True))
    assert not torch.allclose(s, sample(model, vae, [1, 2], seed=1, more_smooth=True))


@pytest.mark.parametrize("more_smooth", [False, True], ids=["tokens", "more_smooth"])
def test_per_image_seeds_do_not_depend_on_the_batch(model, vae, more_smooth):
    kw = dict(cfg=1.5, top_k=30, top_p=0.95, more_smooth=more_smooth, return_tokens=True)
    batch, idx_batch = sample(model, vae, [3, 5, 8], seed=[10, 11, 12], **kw)
    alone, idx_alone = sample(model, vae, [5], seed=[11], **kw)
    other, idx_other = sample(model, vae, [9, 5], seed=[99, 11], **kw)
    for t_batch, t_alone, t_other in zip(idx_batch, idx_alone, idx_other):
        assert torch.equal(t_batch[1], t_alone[0]) and torch.equal(t_other[1], t_alone[0])
    # same tokens; the decoded images agree to float rounding (batched convolutions may sum in another order)
    torch.testing.assert_close(batch[1], alone[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(other[1], alone[0], atol=1e-4, rtol=0)
    assert not torch.allclose(batch[0], batch[2])
    with pytest.raises(ValueError, match="2 seeds for 3 images"):
        sample(model, vae, [1, 2, 3], seed=[1, 2])


def test_progressive_ends_with_the_sample(model, vae):
    frames = list(sample_progressive(model, vae, [1, 2], seed=4))
    assert len(frames) == 4 and all(f.shape == (2, 3, 32, 32) for f in frames)
    assert torch.equal(frames[-1], sample(model, vae, [1, 2], seed=4))


def test_settings_object_and_keyword_changes_are_one_rule(model, vae):
    """``sample(..., cfg=2.0)`` is ``sample(..., SamplingSettings(cfg=2.0))``; ``seed`` defaults to the settings'."""
    labels = [1, 2]
    s = SamplingSettings(cfg=2.0, top_k=5, seed=3)
    want = sample(model, vae, labels, s)
    assert torch.equal(want, sample(model, vae, labels, cfg=2.0, top_k=5, seed=3))
    assert torch.equal(want, sample(model, vae, labels, SamplingSettings(cfg=2.0), top_k=5, seed=3))
    assert torch.equal(want, sample(model, vae, labels, s.replace(seed=0), seed=3))  # the call's seed wins
    frames = list(sample_progressive(model, vae, labels, s))
    assert torch.equal(frames[-1], want)
    assert torch.equal(
        next(generate(model, vae, labels, s)).idx_Bl, next(generate(model, vae, labels, **s.as_dict())).idx_Bl
    )
    with pytest.raises(SettingsError, match="unknown setting 'topk'"):
        sample(model, vae, labels, topk=5)
    with pytest.raises(TypeError, match="settings must be a SamplingSettings, got float"):
        sample(model, vae, labels, 1.5)  # the old positional cfg


@pytest.mark.parametrize(
    "change",
    [dict(cfg=0.0), dict(top_k=1), dict(top_p=0.2), dict(more_smooth=True), dict(seed=1), dict(precision="bf16")],
    ids=lambda c: next(iter(c)),
)
def test_every_setting_changes_the_images(model, vae, change):
    labels = [1, 2]
    base, base_idx = sample(model, vae, labels, return_tokens=True)
    other, other_idx = sample(model, vae, labels, return_tokens=True, **change)
    assert not torch.equal(base, other)
    if "more_smooth" not in change and "precision" not in change:  # these two may keep the tokens
        assert any(not torch.equal(a, b) for a, b in zip(base_idx, other_idx))


def test_the_default_call_is_exact_fp32_even_where_auto_is_bf16(monkeypatch, model, vae):
    """The library's default sample() is the published sampler's fp32; "auto" is what models carry."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})  # "auto" would be bf16
    labels = [1, 2]
    default = sample(model, vae, labels)
    assert torch.equal(default, sample(model, vae, labels, precision="fp32"))
    assert not torch.equal(default, sample(model, vae, labels, precision="auto"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_sampling(model, vae, precision):
    """Autocast sampling runs, keeps fp32 images in [0, 1], and mostly picks the fp32 tokens when greedy."""
    labels = torch.tensor([1, 4, 7, 2])
    ref, ref_idx = sample(model, vae, labels, cfg=1.0, top_k=1, top_p=0.0, seed=0, return_tokens=True)
    imgs, idx = sample(model, vae, labels, cfg=1.0, top_k=1, top_p=0.0, seed=0, return_tokens=True, precision=precision)
    assert imgs.dtype == torch.float32 and imgs.shape == ref.shape and imgs.min() >= 0 and imgs.max() <= 1
    same = torch.cat([(a == b).flatten() for a, b in zip(idx, ref_idx)]).float().mean()
    assert same > 0.5, f"{precision} greedy tokens agree with fp32 on only {same:.0%}"
    with pytest.raises(ValueError, match="precision must be one of"):
        sample(model, vae, labels, precision="int8")


@pytest.mark.parametrize("native", [False, True], ids=["no-native-bf16", "native-bf16"])
def test_auto_precision_samples_as_the_resolved_precision(monkeypatch, model, vae, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native})
    labels = torch.tensor([1, 4])
    auto = sample(model, vae, labels, seed=0, precision="auto")
    assert torch.equal(auto, sample(model, vae, labels, seed=0, precision="bf16" if native else "fp32"))
    frames = list(sample_progressive(model, vae, labels, seed=0, precision="auto"))
    assert torch.equal(frames[-1], auto)


def test_a_scale_step_leaves_its_input_and_reuses_its_caches(model, vae):
    """The in-place block step must not touch its input tokens, and the preallocated key/value caches can be
    reused by a second call (each scale writes its positions before reading them)."""
    labels = torch.tensor([1, 4, 10, 10])  # the conditional and null halves of two images
    with torch.no_grad():
        cond_BD = model.class_emb(labels)
        x_BlC = model.first_scale_tokens(cond_BD)
        x_copy = x_BlC.clone()
        states = model.init_state(4)
        first = model.forward_scale(x_BlC, cond_BD, states, 0)
        assert torch.equal(x_BlC, x_copy)
        k_buffer = states[0].k
        assert k_buffer.shape[2] == model.L  # allocated once for every scale
        x1_BlC = torch.randn(4, model.patch_nums[1] ** 2, model.config.width)
        second = model.forward_scale(x1_BlC, cond_BD, states, 1)
        # reuse: the same states give the same logits again, in the same buffers
        assert torch.equal(model.forward_scale(x_BlC, cond_BD, states, 0), first)
        assert torch.equal(model.forward_scale(x1_BlC, cond_BD, states, 1), second)
        assert states[0].k is k_buffer


@pytest.mark.parametrize("cfg", [0.0, 1.5], ids=["no_guidance", "guidance"])
def test_compiled_step_with_static_caches_gives_the_eager_samples(model, vae, cfg, monkeypatch):
    """The GPU path's mechanism on CPU: dynamo traces every scale's step as one graph (fullgraph) over
    static caches, and two calls through the same caches give the eager samples and logits exactly."""
    monkeypatch.setenv(CPU_GEMM_ENV_VAR, "blas")  # a compiled graph keeps F.linear: the same GEMM for both
    torch._dynamo.reset()
    step = CompiledStep(model, backend="eager")
    labels = torch.tensor([1, 4, 7])
    kwargs = dict(cfg=cfg, top_k=20, top_p=0.9, seed=3)
    eager = list(generate(model, vae, labels, **kwargs))
    for _ in range(2):
        compiled = list(generate(model, vae, labels, step=step, **kwargs))
        for e, c in zip(eager, compiled, strict=True):
            assert torch.equal(e.idx_Bl, c.idx_Bl) and torch.equal(e.logits_BlV, c.logits_BlV)
            assert torch.equal(e.f_hat, c.f_hat)
    assert len(step._states) == 1  # the same static caches served both calls
    assert torch.equal(sample(model, vae, labels, step=step, **kwargs), sample(model, vae, labels, **kwargs))
    with pytest.raises(ValueError, match="another model"):
        next(generate(tiny_var(seed=2), vae, labels, step=step))


def test_compiled_step_raises_dynamo_s_limits_for_its_own_calls_only(model, vae):
    """Three batch sizes of a 4-scale model are 12 graphs, over dynamo's default 8: the step raises the
    limits while it runs and leaves the process's configuration as it found it."""
    before = (torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit)
    torch._dynamo.reset()
    step = CompiledStep(model, backend="eager")
    for n in (1, 2, 3):
        labels = torch.arange(n)
        assert torch.equal(
            sample(model, vae, labels, top_k=5, seed=1, step=step), sample(model, vae, labels, top_k=5, seed=1)
        )
    assert len(step._states) == 3
    assert (torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit) == before


def test_static_states_refuse_a_state_rebuilt_at_every_scale():
    model = tiny_var(seed=1, attention="external")
    with pytest.raises(ValueError, match="block 0: the 'external' mechanism"):
        static_states(model, 2, torch.float32, torch.device("cpu"))


@pytest.mark.slow
def test_inductor_compiled_step_matches_eager_on_cpu(model, vae, monkeypatch):
    """The compiled step (inductor, default mode: CUDA graphs need a GPU) samples the eager tokens."""
    monkeypatch.setenv(CPU_GEMM_ENV_VAR, "blas")
    torch._dynamo.reset()
    step = CompiledStep(model, mode=None)
    labels = torch.tensor([1, 4])
    ref, ref_idx = sample(model, vae, labels, top_k=1, top_p=0.0, seed=0, return_tokens=True)
    imgs, idx = sample(model, vae, labels, top_k=1, top_p=0.0, seed=0, return_tokens=True, step=step)
    assert [t.tolist() for t in idx] == [t.tolist() for t in ref_idx]
    torch.testing.assert_close(imgs, ref, atol=1e-4, rtol=1e-4)


def test_decode_is_never_recorded_for_autograd(model, vae):
    """The web UI's progressive path calls decode outside any no_grad block: the decoder keeps no activations."""
    steps = list(generate(model, vae, [1], top_k=1))
    assert torch.is_grad_enabled()
    img = decode(vae, steps[-1].f_hat, "fp32")
    assert not img.requires_grad and img.grad_fn is None


# ---------------------------------------------------------------------------------------- fast modes
# guidance up to a scale, token pruning, stopping early: exact stays exact, each mode computes what it says,
# and every mode is deterministic and independent of the batch

FAST = [
    dict(guidance_until=0.5),
    dict(prune_from=0.3, prune_keep=0.5),
    dict(stop_after=0.5),
    dict(guidance_until=0.4, prune_from=0.6, prune_keep=0.4),
]
FAST_IDS = ["guidance", "pruning", "stop", "combined"]


KW = dict(cfg=2.0, top_k=30, top_p=0.95)


def test_exact_preset_is_the_default_sampler_and_fast_modes_leave_it_alone(model, vae):
    labels = [1, 2, 3]
    want, want_idx = sample(model, vae, labels, seed=5, return_tokens=True, **KW)
    for fields in FAST:  # a fast run in between must not change what exact gives afterwards
        sample(model, vae, labels, seed=5, **KW, **fields)
    exact = SamplingSettings.preset("exact").replace(**KW)
    got, got_idx = sample(model, vae, labels, exact, seed=5, return_tokens=True)
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(got_idx, want_idx))
    assert SamplingSettings().exact and SamplingSettings().speed() == "exact"


@pytest.mark.parametrize("fields", FAST, ids=FAST_IDS)
def test_every_mode_changes_the_images_and_is_deterministic(model, vae, fields):
    labels = [1, 2, 3]
    base = sample(model, vae, labels, seed=5, **KW)
    fast = sample(model, vae, labels, seed=5, **KW, **fields)
    assert not torch.equal(base, fast)
    assert torch.equal(fast, sample(model, vae, labels, seed=5, **KW, **fields))


@pytest.mark.parametrize("fields", FAST, ids=FAST_IDS)
def test_every_mode_is_independent_of_the_batch(model, vae, fields):
    kw = dict(KW, return_tokens=True, **fields)
    batch, idx_batch = sample(model, vae, [3, 5, 8], seed=[10, 11, 12], **kw)
    alone, idx_alone = sample(model, vae, [5], seed=[11], **kw)
    other, idx_other = sample(model, vae, [9, 5], seed=[99, 11], **kw)
    for t_batch, t_alone, t_other in zip(idx_batch, idx_alone, idx_other, strict=True):
        assert torch.equal(t_batch[1], t_alone[0]) and torch.equal(t_other[1], t_alone[0])
    torch.testing.assert_close(batch[1], alone[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(other[1], alone[0], atol=1e-4, rtol=0)


def test_guidance_until_samples_from_the_conditional_half_with_its_own_caches(model, vae):
    """Past guidance_until the logits are the conditional ones alone ([B, l, V]), and they are still the
    teacher-forcing logits of the sampled tokens: the caches kept the conditional rows."""
    labels = torch.tensor([1, 4, 7])
    steps = list(generate(model, vae, labels, seed=3, guidance_until=0.4, **KW))  # positions 0, 1/3 guided
    assert [s.logits_BlV.shape[0] for s in steps] == [6, 6, 3, 3]
    sampled = torch.cat([s.logits_BlV[:3] for s in steps], 1)
    with torch.no_grad():
        forced = model(labels, vae.idx_to_var_input([s.idx_Bl for s in steps]))
    torch.testing.assert_close(sampled, forced, atol=1e-5, rtol=1e-5)
    # the guided scales are exact sampling's, token for token
    exact = list(generate(model, vae, labels, seed=3, **KW))
    for e, f in zip(exact[:2], steps[:2]):
        assert torch.equal(e.idx_Bl, f.idx_Bl) and torch.equal(e.logits_BlV, f.logits_BlV)
    # guidance_until past every scale is exact
    late = list(generate(model, vae, labels, seed=3, guidance_until=1.0, **KW))
    assert all(torch.equal(e.logits_BlV, f.logits_BlV) for e, f in zip(exact, late))


def test_stop_after_gives_the_exact_image_of_the_last_scale_it_runs(model, vae):
    labels = [1, 2]
    exact = list(generate(model, vae, labels, seed=4, **KW))
    img, idx = sample(model, vae, labels, seed=4, stop_after=0.5, return_tokens=True, **KW)  # scales 0 and 1
    assert len(idx) == 2 and all(torch.equal(a, e.idx_Bl) for a, e in zip(idx, exact))
    assert torch.equal(img, sample(model, vae, labels, seed=4, stop_after=0.34, **KW))
    assert torch.equal(img, decode(vae, exact[1].f_hat, "fp32"))


def test_pruning_that_keeps_every_token_is_exact(model, vae):
    """A keep fraction that rounds to every token runs the pruned path (gathered inputs, compacted cache
    offsets, filled hidden states) and must give exact sampling's tokens and logits bit for bit."""
    labels = [1, 2, 3]
    exact = list(generate(model, vae, labels, seed=6, **KW))
    pruned = list(generate(model, vae, labels, seed=6, prune_from=0.3, prune_keep=0.99, **KW))
    for e, p in zip(exact, pruned, strict=True):
        assert torch.equal(e.idx_Bl, p.idx_Bl) and torch.equal(e.logits_BlV, p.logits_BlV)


def test_pruned_scales_run_the_kept_tokens_after_the_kept_cache(model, vae, monkeypatch):
    """Scales at positions 2/3 and 1 (3x3 and 4x4) keep round(0.5 * 9) = 4 and 8 tokens per row: each block's
    cache takes the kept keys right after the tokens cached before them (1 + 4, then 1 + 4 + 4)."""
    writes = []
    write = KVCache.write

    def spy(self, k, v, begin):
        writes.append((begin, k.shape[0], k.shape[2]))
        return write(self, k, v, begin)

    monkeypatch.setattr(KVCache, "write", spy)
    steps = list(generate(model, vae, [1, 2], seed=1, prune_from=0.6, prune_keep=0.5, **KW))
    per_block = writes[::2]  # depth 2: the first block's writes
    assert per_block == [(0, 4, 1), (1, 4, 4), (5, 4, 4), (9, 4, 8)]
    assert [s.logits_BlV.shape[1] for s in steps] == [1, 4, 9, 16]  # every token still gets logits


def test_kept_tokens_and_the_fill_of_the_pruned_ones():
    scores = torch.tensor([[0.1, 3.0, 2.0, 3.0], [5.0, 0.0, 0.0, 1.0]])
    assert kept_tokens(scores, 0.5).tolist() == [[1, 3], [0, 3]]  # highest first, ties to the earlier, ascending
    assert kept_tokens(scores, 0.01).tolist() == [[1], [0]]  # at least one token
    flat = torch.zeros(1, 8, 2, 2)
    flat[0, :, 1, 1] = 1.0
    assert prune_scores(flat).argmax().item() == 3  # the token that differs from the mean scores highest
    previous = torch.arange(4.0).view(1, 4, 1).expand(1, 4, 3)  # a 2x2 grid of 3 channels: 0, 1, 2, 3
    kept = torch.tensor([[0, 5]])
    own = torch.full((1, 2, 3), -1.0)
    full = fill_pruned(own, kept, previous, 4)  # 2x2 -> 4x4: each previous token covers a 2x2 block
    assert full.shape == (1, 16, 3) and full.dtype == torch.float32
    want = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3.0])
    want[[0, 5]] = -1.0
    assert torch.equal(full[0, :, 0], want)


@pytest.mark.parametrize("mechanism", ["neighborhood", "lka", "gspn"])
def test_pruning_is_refused_for_mechanisms_that_mix_grid_neighbours(vae, mechanism):
    model = tiny_var(seed=1, attention=mechanism)
    with pytest.raises(SettingsError, match=f"block 0 uses '{mechanism}'"):
        sample(model, vae, [1], prune_keep=0.5)
    sample(model, vae, [1], guidance_until=0.5)  # the other modes work with every mechanism


def test_external_attention_prunes_and_drops_guidance(vae):
    model = tiny_var(seed=1, attention="external")
    exact = sample(model, vae, [1, 2], seed=2, **KW)
    fast = sample(model, vae, [1, 2], seed=2, guidance_until=0.4, prune_from=0.6, prune_keep=0.5, **KW)
    assert fast.shape == exact.shape and not torch.equal(fast, exact)
    assert torch.equal(sample(model, vae, [1, 2], seed=2, prune_from=0.3, prune_keep=0.99, **KW), exact)


def test_compiled_step_drops_guidance_like_the_eager_step_and_refuses_pruning(model, vae, monkeypatch):
    monkeypatch.setenv(CPU_GEMM_ENV_VAR, "blas")
    torch._dynamo.reset()
    step = CompiledStep(model, backend="eager")
    labels = torch.tensor([1, 4])
    kw = dict(KW, seed=3, guidance_until=0.4)
    eager = list(generate(model, vae, labels, **kw))
    compiled = list(generate(model, vae, labels, step=step, **kw))
    for e, c in zip(eager, compiled, strict=True):
        assert torch.equal(e.idx_Bl, c.idx_Bl) and torch.equal(e.logits_BlV, c.logits_BlV)
    with pytest.raises(ValueError, match="token pruning runs the eager step"):
        next(generate(model, vae, labels, step=step, prune_keep=0.5))


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "field, bad, message",
    [
        ("guidance_until", 1.5, r"guidance_until \(the last guided scale's position\) must be in \[0, 1\], got 1.5"),
        ("guidance_until", -0.1, r"must be in \[0, 1\]"),
        ("prune_from", "x", "prune_from .* must be a number, got 'x'"),
        ("prune_keep", 0, r"prune_keep \(the fraction of tokens kept\) must be in \(0, 1\], got 0"),
        ("prune_keep", 1.01, r"must be in \(0, 1\]"),
        ("stop_after", float("nan"), "stop_after .* must be finite"),
        ("stop_after", None, "must be a number, got None"),
    ],
)
def test_fast_mode_fields_are_checked_and_name_the_field(field, bad, message):
    with pytest.raises(SettingsError, match=message) as err:
        SamplingSettings(**{field: bad})
    assert err.value.field == field


def test_fast_mode_fields_accept_text_and_keep_floats():
    s = SamplingSettings(guidance_until="0.5", prune_keep=" 0.25 ", stop_after=1)
    assert (s.guidance_until, s.prune_keep, s.stop_after) == (0.5, 0.25, 1.0)
    assert SamplingSettings.from_dict(s.as_dict()) == s


def test_presets_are_fast_mode_values_over_any_base():
    assert set(SPEEDS) == {"exact", "fast", "faster"}
    base = SamplingSettings(cfg=4.0, top_k=20, seed=9, precision="auto")
    for name in SPEEDS:
        s = SamplingSettings.preset(name, base)
        assert (s.cfg, s.top_k, s.seed, s.precision) == (4.0, 20, 9, "auto")
        assert s.speed() == name and s.exact == (name == "exact")
    assert SamplingSettings.preset("exact") == SamplingSettings()
    assert not SamplingSettings.preset("fast").exact and not SamplingSettings.preset("faster").exact
    assert SamplingSettings(prune_keep=0.9).speed() is None
    with pytest.raises(SettingsError, match="speed must be one of exact, fast, faster, got 'fastest'"):
        SamplingSettings.preset("fastest")


def test_positions_are_fractions_of_the_schedule():
    """One value means the same at any schedule: 0.8 guides the first 80% of a 6-scale schedule (4 / 5
    included) and the first 8 of 10 scales."""
    s = SamplingSettings(guidance_until=0.8, prune_from=0.8, prune_keep=0.5, stop_after=0.9)
    assert [s.guided_at(si, 6) for si in range(6)] == [True] * 5 + [False]
    assert [s.guided_at(si, 10) for si in range(10)] == [True] * 8 + [False] * 2
    assert [s.pruned_at(si, 10) for si in range(10)] == [False] * 8 + [True] * 2
    assert [s.runs(si, 10) for si in range(10)] == [True] * 9 + [False]
    assert not SamplingSettings(cfg=0.0).guided_at(0, 4)
    assert SamplingSettings(stop_after=0.0).runs(0, 4)  # the first scale always runs
    assert not SamplingSettings(prune_from=0.0, prune_keep=0.5).pruned_at(0, 4)  # one token: nothing to prune


def _torch_switches() -> dict:
    return dict(
        matmul=torch.get_float32_matmul_precision(),
        cuda_tf32=torch.backends.cuda.matmul.allow_tf32,
        cudnn_tf32=torch.backends.cudnn.allow_tf32,
        grad=torch.is_grad_enabled(),
        autocast=torch.is_autocast_enabled("cpu"),
        threads=torch.get_num_threads(),
        deterministic=torch.are_deterministic_algorithms_enabled(),
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_sampling_leaves_torch_global_switches_alone(model, vae, precision):
    # TF32 and the rest of torch's process-wide state belong to the user (scaffold/precision.py).
    before = _torch_switches()
    sample(model, vae, torch.tensor([0, 1]), seed=0, precision=precision)
    list(sample_progressive(model, vae, torch.tensor([2]), seed=0, precision=precision))
    assert _torch_switches() == before

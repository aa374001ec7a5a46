"""The fast sampling modes of var.sample (guidance up to a scale, token pruning, stopping early): exact stays
exact, each mode computes what it says, and every mode is deterministic and independent of the batch."""

import pytest
import torch
from helpers import tiny_var

from var import SamplingSettings, generate, sample
from var.attention import KVCache
from var.linear import CPU_GEMM_ENV_VAR
from var.sample import CompiledStep, fill_pruned, kept_tokens, prune_scores
from var.settings import SPEEDS, SettingsError

FAST = [
    dict(guidance_until=0.5),
    dict(prune_from=0.3, prune_keep=0.5),
    dict(stop_after=0.5),
    dict(guidance_until=0.4, prune_from=0.6, prune_keep=0.4),
]
FAST_IDS = ["guidance", "pruning", "stop", "combined"]


@pytest.fixture
def model():
    return tiny_var(seed=1)


@pytest.fixture
def vae(tiny_vae):
    with torch.no_grad():  # spread the codebook so that different tokens decode to visibly different images
        tiny_vae.quantize.embedding.weight.normal_(generator=torch.Generator().manual_seed(2))
    return tiny_vae


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
    from var.sample import decode

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

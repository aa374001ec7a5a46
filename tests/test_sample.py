import pytest
import torch
from helpers import tiny_var

from scaffold.errors import UserError
from var import VAR, SamplingSettings, generate, sample, sample_progressive
from var.linear import CPU_GEMM_ENV_VAR
from var.sample import (
    CompiledStep,
    PrecisionError,
    decode,
    filter_top_k_top_p,
    guidance_ratio,
    guide,
    native_bf16,
    resolve_precision,
    static_states,
)
from var.settings import SettingsError


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


@pytest.mark.parametrize(
    "caps, expected",
    [
        ({"avx2": True}, "fp32"),  # this project's 2-core AMD EPYC (Zen 2): no AVX-512 at all
        ({"avx512_f": True, "avx512_vnni": True}, "fp32"),  # a Xeon without AVX512-BF16: bf16 emulated, 3.8x slower
        ({"avx512_f": True, "avx512_bf16": True}, "bf16"),  # AMD EPYC Zen 4 / Intel Cooper Lake
        ({"amx_tile": True, "amx_bf16": True}, "bf16"),  # Intel Sapphire Rapids
    ],
    ids=["avx2", "avx512-no-bf16", "avx512-bf16", "amx"],
)
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert native_bf16("cpu") == (expected == "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == expected
    for explicit in ("fp32", "bf16", "fp16"):  # an explicit choice is never second-guessed
        assert resolve_precision(explicit, "cpu") == explicit


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_cuda_needs_compute_capability_8(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected


def test_unknown_precision_is_a_user_error():
    with pytest.raises(PrecisionError, match="precision must be one of auto, fp32, bf16, fp16, got 'tf32'"):
        resolve_precision("tf32", "cpu")
    assert issubclass(PrecisionError, UserError)


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

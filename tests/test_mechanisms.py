"""The five mechanisms inside the model: block causality, cache exactness, parameter budget,
training, sampling and editing (docs/architecture.md sections 6 and 7)."""

import pytest
import torch
from helpers import L_TINY, TINY_VAR, randomise, tiny_var

from var import VAR, VARConfig, edit, generate, sample
from var.registry import build_mixer

NAMES = ["full", "neighborhood", "external", "lka", "gspn"]
# neighborhood with kernel 3 is really local on the 4x4 scale; gspn chunked so that the restart path runs too
OPTIONS = {"neighborhood": {"kernel_size": 3}, "gspn": {"chunk": 3}, "external": {"num_slots": 16}}
MIXES = {
    **{name: dict(attention=name) for name in NAMES},
    "hybrid": dict(attention=["lka", "full"]),
    "mix4": dict(depth=4, attention=["gspn", "neighborhood", "external", "full"]),
}


def make(mix: str, seed: int = 0) -> VAR:
    return tiny_var(seed=seed, attention_options=OPTIONS, **MIXES[mix])


@pytest.mark.parametrize("mix", list(MIXES))
def test_block_causality(mix):
    model = make(mix)
    labels = torch.tensor([3, 7])
    x = torch.randn(2, L_TINY - 1, 8)
    ref = model(labels, x)
    ends = [e for _, e in model.layout.bounds]
    for k, end in enumerate(ends[:-1]):
        x2 = x.clone()
        x2[:, end - 1 :] = torch.randn_like(x2[:, end - 1 :])  # the inputs of every scale > k
        out = model(labels, x2)
        assert torch.equal(out[:, :end], ref[:, :end]), f"{mix}: scale {k} saw a later scale"
        assert not torch.allclose(out[:, end:], ref[:, end:])


@pytest.mark.parametrize("cfg", [0.0, 2.0], ids=["no_guidance", "guidance"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_cache_gives_the_teacher_forcing_logits(mix, cfg, tiny_vae):
    model = make(mix)
    labels = torch.tensor([1, 4, 7])
    steps = list(generate(model, tiny_vae, labels, cfg=cfg, top_k=20, top_p=0.9, seed=3))
    idx = [s.idx_Bl for s in steps]
    sampled = torch.cat([s.logits_BlV[:3] for s in steps], 1)  # the conditional half
    with torch.no_grad():
        forced = model(labels, tiny_vae.idx_to_var_input(idx))
    torch.testing.assert_close(sampled, forced, atol=1e-5, rtol=1e-5)
    if cfg:
        uncond = torch.cat([s.logits_BlV[3:] for s in steps], 1)
        with torch.no_grad():
            null = model(torch.full((3,), 10), tiny_vae.idx_to_var_input(idx))
        torch.testing.assert_close(uncond, null, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dim, heads", [(128, 2), (1024, 16)], ids=["C128", "C1024-d16"])
def test_parameter_budget(name, dim, heads):
    """Each mixer has at most the parameters of full attention: 4 C^2 + O(C)."""
    patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    full = sum(p.numel() for p in build_mixer("full", dim, heads, patch_nums).parameters())
    assert full == 4 * dim * dim + 3 * dim + heads  # mat_qkv, proj (+bias), q_bias, v_bias, scale_mul
    mixer = build_mixer(name, dim, heads, patch_nums)
    assert sum(p.numel() for p in mixer.parameters()) <= full


@pytest.mark.parametrize("mix", ["neighborhood", "external", "lka", "gspn", "hybrid"])
def test_trains(mix, tiny_vae):
    """A few AdamW steps on a fixed batch of real tokens reduce the cross-entropy."""
    torch.manual_seed(0)
    model = VAR(VARConfig(**{**TINY_VAR, **MIXES[mix], "attention_options": OPTIONS, "drop_path_rate": 0.0}))
    model.train()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    idx = tiny_vae.img_to_idx(images)
    with torch.no_grad():  # the tokenizer is frozen while the transformer trains
        x, target = tiny_vae.idx_to_var_input(idx), torch.cat(idx, 1)
    labels = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(labels, x).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses


@pytest.mark.parametrize("mix", ["neighborhood", "external", "lka", "gspn", "mix4"])
def test_samples_and_edits(mix, tiny_vae):
    model = make(mix, seed=1)
    imgs = sample(model, tiny_vae, torch.tensor([2, 5]), cfg=1.5, top_k=10, top_p=0.9, seed=0)
    assert imgs.shape == (2, 3, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1
    again = sample(model, tiny_vae, torch.tensor([2, 5]), cfg=1.5, top_k=10, top_p=0.9, seed=0)
    assert torch.equal(imgs, again)
    mask = torch.zeros(32, 32)
    mask[:, 16:] = 1  # regenerate the right half
    out, edit_idx = edit(model, tiny_vae, imgs, mask, 7, cfg=1.0, top_k=10, top_p=0.9, seed=1, return_tokens=True)
    assert out.shape == imgs.shape
    # the left half of the finest scale (4x4) keeps the image's own tokens exactly
    image_idx = tiny_vae.img_to_idx(imgs * 2 - 1)
    kept = torch.zeros(4, 4, dtype=torch.bool)
    kept[:, :2] = True
    assert torch.equal(edit_idx[-1][:, kept.flatten()], image_idx[-1][:, kept.flatten()])


def test_neighborhood_with_a_covering_kernel_is_full_attention():
    full = make("full")
    nbhd = VAR(VARConfig(**TINY_VAR, attention="neighborhood", attention_options={"neighborhood": {"kernel_size": 5}}))
    nbhd.load_state_dict(full.state_dict())  # the same parameters by design
    nbhd.eval()
    labels, x = torch.tensor([1, 2]), torch.randn(2, L_TINY - 1, 8)
    torch.testing.assert_close(nbhd(labels, x), full(labels, x), atol=1e-5, rtol=1e-5)
    small = randomise(VAR(VARConfig(**TINY_VAR, attention="neighborhood", attention_options=OPTIONS))).eval()
    small.load_state_dict(full.state_dict())
    assert not torch.allclose(small(labels, x), full(labels, x), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_extra_repr_names_the_backend(name):
    mixer = build_mixer(name, 128, 2, (1, 2, 3), **OPTIONS.get(name, {}))
    assert "backend=torch" in repr(mixer)  # CPU tensors: the PyTorch reference


def test_bad_mechanism_options():
    with pytest.raises(ValueError, match="odd kernel_size"):
        build_mixer("neighborhood", 128, 2, (1, 2), kernel_size=4)
    with pytest.raises(TypeError):
        build_mixer("lka", 128, 2, (1, 2), kernel_sise=5)


@pytest.mark.parametrize("preset", ["full", "neighborhood", "external", "lka", "gspn", "hybrid"])
def test_var_presets_build(preset):
    """configs/var/d16.yaml and its d16_<mechanism>.yaml overlays: their `model:` builds a VAR (at depth 2 here)."""
    from pathlib import Path

    from scaffold import load_config
    from var.train import VARTrainConfig

    folder = Path(__file__).parents[1] / "configs" / "var"
    files = [folder / "d16.yaml"] + ([] if preset == "full" else [folder / f"d16_{preset}.yaml"])
    cfg = load_config(VARTrainConfig, files).model
    names = cfg.block_attention()
    assert len(names) == 16 and set(names) <= set(NAMES)
    if preset == "hybrid":
        assert names[0] != "full" and names[-1] == "full"
    small = VARConfig(**{**TINY_VAR, "attention": names[::8], "attention_options": cfg.attention_options})
    assert VAR(small)(torch.tensor([1]), torch.randn(1, L_TINY - 1, 8)).shape == (1, L_TINY, 64)


@pytest.mark.parametrize("name", NAMES)
def test_fused_and_reference_paths_agree_in_the_module(name):
    """The same mixer with backend="triton" (the interpreter on CPU) and backend="torch": forward and grads."""
    torch.manual_seed(0)
    opts = {"neighborhood": {"kernel_size": 3}, "gspn": {"chunk": 2}, "external": {"num_slots": 8}}.get(name, {})
    patch_nums = (1, 2, 3)
    fused = build_mixer(name, 32, 2, patch_nums, backend="triton", **opts)
    ref = build_mixer(name, 32, 2, patch_nums, backend="torch", **opts)
    ref.load_state_dict(fused.state_dict())
    # gspn stacks its four scan directions on the kernel's batch axis (N = 4 B), so one image already runs
    # the scan at N = 4; the Triton interpreter runs its N * C programs one by one.
    x = torch.randn(1 if name == "gspn" else 2, 14, 32)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fused(x1), ref(x2)
    torch.testing.assert_close(y1, y2, atol=1e-4, rtol=1e-4)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    for (n, p1), p2 in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-4, rtol=1e-4, msg=n)
    assert "backend=triton" in repr(fused) and "backend=torch" in repr(ref)


@pytest.mark.parametrize(
    "patch_nums, chunk", [((1, 2, 3, 4), None), ((1, 2, 3, 4), 3), ((2, 5, 3), 2), ((4,), None)], ids=str
)
def test_gspn_packed_layout_is_the_per_scale_layout(patch_nums, chunk):
    """GSPN's reference path scans every scale and direction in one packed map; the Triton path scans
    each scale on its own. In float64 both give the same outputs and gradients, for every scale at once
    (forward) and for one scale (sampling step)."""
    torch.manual_seed(0)
    mixer = build_mixer("gspn", 32, 2, patch_nums, chunk=chunk, backend="torch").double()
    with torch.no_grad():  # away from the initial values, where every direction would weigh the same
        mixer.skip_d.normal_()
        mixer.merge_w.normal_()
    for pns in (patch_nums, patch_nums[-1:]):  # teacher forcing; a sampling step on the last scale
        x = torch.randn(3, sum(p * p for p in pns), 32, dtype=torch.float64, requires_grad=True)
        packed, per_scale = mixer._mix_packed(x, pns), mixer._mix_per_scale(x, pns)
        torch.testing.assert_close(packed, per_scale, rtol=1e-12, atol=1e-12)
        cotangent = torch.randn_like(packed)
        inputs = [x, *mixer.parameters()]
        for got, want in zip(
            torch.autograd.grad(packed, inputs, cotangent), torch.autograd.grad(per_scale, inputs, cotangent)
        ):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

import math

import pytest
import torch
from helpers import L_TINY, TINY_VAR, tiny_var

from scaffold import CheckpointError, sha256_of
from scaffold.checkpoint import HUB_REVISION, HUB_SHA256
from var import PRESETS, VAR, TokenMixer, VARConfig, load_official_var, preset, register_mixer
from var.attention import FullAttention

# ------------------------------------------------------------------------------------ published layout


def published_d16_layout() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Keys and shapes of the published var_d16.pth, written out from models/var.py and models/basic_var.py."""
    C, V, L, S, Cvae = 1024, 4096, 680, 10, 32
    f = torch.float32
    layout = {
        "pos_start": ((1, 1, C), f),
        "pos_1LC": ((1, L, C), f),
        "lvl_1L": ((1, L), torch.int64),
        "attn_bias_for_masking": ((1, 1, L, L), f),
        "word_embed.weight": ((C, Cvae), f),
        "word_embed.bias": ((C,), f),
        "class_emb.weight": ((1001, C), f),
        "lvl_embed.weight": ((S, C), f),
        "head_nm.ada_lin.1.weight": ((2 * C, C), f),
        "head_nm.ada_lin.1.bias": ((2 * C,), f),
        "head.weight": ((V, C), f),
        "head.bias": ((V,), f),
    }
    for i in range(16):
        b = f"blocks.{i}."
        layout |= {
            b + "attn.scale_mul_1H11": ((1, 16, 1, 1), f),
            b + "attn.q_bias": ((C,), f),
            b + "attn.v_bias": ((C,), f),
            b + "attn.zero_k_bias": ((C,), f),
            b + "attn.mat_qkv.weight": ((3 * C, C), f),
            b + "attn.proj.weight": ((C, C), f),
            b + "attn.proj.bias": ((C,), f),
            b + "ffn.fc1.weight": ((4 * C, C), f),
            b + "ffn.fc1.bias": ((4 * C,), f),
            b + "ffn.fc2.weight": ((C, 4 * C), f),
            b + "ffn.fc2.bias": ((C,), f),
            b + "ada_lin.1.weight": ((6 * C, C), f),
            b + "ada_lin.1.bias": ((6 * C,), f),
        }
    return layout


def published_d16_state_dict() -> dict[str, torch.Tensor]:
    pns = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    lvl_L = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(pns)])
    sd = {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in published_d16_layout().items()}
    sd["lvl_1L"] = lvl_L[None]
    sd["attn_bias_for_masking"] = torch.where(lvl_L[:, None] >= lvl_L[None, :], 0.0, -torch.inf)[None, None]
    sd["head.bias"] = torch.arange(4096.0)
    return sd


def test_published_d16_state_dict_loads_strictly():
    model = load_official_var(published_d16_state_dict(), depth=16)
    assert not model.training
    assert torch.equal(model.head.bias, torch.arange(4096.0))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(310.28e6, rel=1e-4)  # "310M" in the paper
    layout = published_d16_layout()
    del layout["attn_bias_for_masking"]  # checked on load and dropped (see var/model.py)
    assert {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()} == layout


def test_load_names_every_mismatch():
    sd = published_d16_state_dict()
    sd.pop("blocks.3.attn.q_bias")
    sd["blocks.0.extra"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(10, 1024)
    with pytest.raises(CheckpointError) as err:
        load_official_var(sd, depth=16)
    msg = str(err.value)
    assert "missing keys: blocks.3.attn.q_bias" in msg and "unexpected keys: blocks.0.extra" in msg
    assert "head.weight: checkpoint (10, 1024) vs model (4096, 1024)" in msg


def test_load_checks_the_dense_mask():
    sd = published_d16_state_dict()
    sd["attn_bias_for_masking"] = torch.zeros(1, 1, 680, 680)
    with pytest.raises(CheckpointError, match="not the block-causal mask"):
        load_official_var(sd, depth=16)
    sd.pop("attn_bias_for_masking")
    with pytest.raises(CheckpointError, match="missing keys: attn_bias_for_masking"):
        load_official_var(sd, depth=16)


def test_load_from_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = tiny_var()
    sd = {**model.state_dict(), "attn_bias_for_masking": published_mask(TINY_VAR["patch_nums"])}
    torch.save(sd, tmp_path / "var.pth")
    save_file(sd, str(tmp_path / "var.safetensors"))
    x = torch.randn(2, L_TINY - 1, 8)
    for name in ("var.pth", "var.safetensors"):
        loaded = load_official_var(tmp_path / name, config=model.config)
        assert torch.equal(loaded(torch.tensor([1, 2]), x), model(torch.tensor([1, 2]), x))


def published_mask(patch_nums):
    lvl_L = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(patch_nums)])
    return torch.where(lvl_L[:, None] >= lvl_L[None, :], 0.0, -torch.inf)[None, None]


def test_hub_offline_message():
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported
    with pytest.raises(CheckpointError) as err:
        load_official_var("hub", depth=16)
    msg = str(err.value)
    assert "var_d16.pth" in msg and "FoundationVision/var" in msg and "local file path" in msg


def test_hub_download_uses_the_published_file_name(monkeypatch, tmp_path):
    model = tiny_var()  # the file name follows the depth: var_d2.pth here, var_d16.pth for the d16 preset
    torch.save(
        {**model.state_dict(), "attn_bias_for_masking": published_mask(TINY_VAR["patch_nums"])}, tmp_path / "var_d2.pth"
    )
    calls = []

    def fake_download(repo_id, filename, revision):
        calls.append((repo_id, filename, revision))
        return str(tmp_path / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    monkeypatch.setitem(HUB_SHA256, "var_d2.pth", sha256_of(tmp_path / "var_d2.pth"))  # the stand-in's hash
    loaded = load_official_var("hub", config=model.config)
    assert calls == [("FoundationVision/var", "var_d2.pth", HUB_REVISION)]
    assert torch.equal(loaded.head.weight, model.head.weight)


# ----------------------------------------------------------------------------------------- config


def test_presets_are_the_published_models():
    for name, depth in [("d16", 16), ("d20", 20), ("d24", 24), ("d30", 30)]:
        cfg = PRESETS[name]
        assert (cfg.depth, cfg.width, cfg.heads, cfg.num_tokens, cfg.shared_aln) == (
            depth,
            64 * depth,
            depth,
            680,
            False,
        )
        assert cfg.resolved_drop_path_rate() == pytest.approx(0.1 * depth / 24)
    d36 = PRESETS["d36"]
    assert d36.shared_aln and d36.patch_nums == (1, 2, 3, 4, 6, 9, 13, 18, 24, 32) and d36.num_tokens == 2240
    assert preset("d16", attention=["full"] * 16).block_attention() == ["full"] * 16
    with pytest.raises(ValueError, match="unknown preset"):
        preset("d17")


def test_attention_choice_is_validated():
    with pytest.raises(ValueError, match="2 mechanisms for depth=3"):
        VAR(VARConfig(**{**TINY_VAR, "depth": 3, "attention": ["full", "full"]}))
    with pytest.raises(ValueError, match="unknown attention mechanism 'nope'"):
        VAR(VARConfig(**{**TINY_VAR, "attention": "nope"}))


def test_published_initialisation():
    torch.manual_seed(0)
    model = VAR(VARConfig(**{**TINY_VAR, "depth": 4}))
    C = model.config.width
    std = math.sqrt(1 / C / 3)
    assert model.head.weight.std().item() == pytest.approx(0.02 * std, rel=0.1)
    assert model.head.bias.abs().max() == 0
    ada = model.blocks[0].ada_lin[-1].weight
    assert ada[: 2 * C].std().item() == pytest.approx(1e-5 * std, rel=0.1)  # gates: blocks start as identity
    assert ada[2 * C :].std().item() == pytest.approx(0.5 * std, rel=0.1)
    fc2 = model.blocks[0].ffn.fc2.weight
    assert fc2.std().item() == pytest.approx(std / math.sqrt(2 * 4), rel=0.1)
    assert torch.allclose(model.blocks[0].attn.scale_mul_1H11.exp(), torch.tensor(4.0))
    assert model.class_emb.weight.shape == (11, C)


# -------------------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("shared_aln", [False, True], ids=["ada_lin", "shared_aln"])
@pytest.mark.parametrize("attn_l2_norm", [True, False], ids=["l2norm", "scaled"])
def test_block_causality(shared_aln, attn_l2_norm):
    model = tiny_var(shared_aln=shared_aln, attn_l2_norm=attn_l2_norm)
    labels = torch.tensor([3, 7])
    x = torch.randn(2, L_TINY - 1, 8)
    ref = model(labels, x)
    for k, (_, end) in enumerate(model.layout.bounds[:-1]):
        x2 = x.clone()
        x2[:, end - 1 :] = torch.randn_like(x2[:, end - 1 :])  # inputs of every scale > k (x has no first token)
        out = model(labels, x2)
        assert torch.equal(out[:, :end], ref[:, :end]), f"scale {k} saw a later scale"
        assert not torch.allclose(out[:, end:], ref[:, end:])


def test_forward_backward_and_label_dropout():
    model = tiny_var(cond_drop_rate=1.0)
    labels, x = torch.tensor([3, 7]), torch.randn(2, L_TINY - 1, 8)
    null = model(torch.tensor([10, 10]), x)
    assert torch.equal(model(labels, x), model(labels, x))  # eval: no label dropout
    model.train()
    model.config.drop_path_rate = 0.0
    for block in model.blocks:
        block.drop_path_p = 0.0
    logits = model(labels, x)
    assert logits.dtype == torch.float32 and logits.shape == (2, L_TINY, 64)
    assert torch.allclose(logits, null)  # cond_drop_rate=1: every label is the null class
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "class_emb" not in n)


def test_logits_are_fp32_under_autocast():
    model = tiny_var()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.tensor([1]), torch.randn(1, L_TINY - 1, 8))
    assert logits.dtype == torch.float32


def test_a_registered_mechanism_plugs_in_per_block(mixers):
    class MeanOfPast(TokenMixer):
        """Mean of every token of scales <= the query's: a stateful, block-causal toy mechanism."""

        def __init__(self, dim, num_heads, patch_nums, *, attn_l2_norm=True, gain=1.0):
            super().__init__(dim, num_heads, patch_nums)
            self.proj = torch.nn.Linear(dim, dim)
            self.gain = gain

        def forward(self, x_BLC):
            out, start = [], 0
            for pn in self.patch_nums:
                start += pn * pn
                out.append(x_BLC[:, :start].mean(1, keepdim=True).expand(-1, pn * pn, -1))
            return self.proj(torch.cat(out, 1) * self.gain)

        def init_state(self, batch):
            return {"sum": 0.0, "count": 0}

        def step(self, x_BlC, state, si):
            state["sum"] = state["sum"] + x_BlC.sum(1, keepdim=True)
            state["count"] += x_BlC.shape[1]
            return self.proj((state["sum"] / state["count"]).expand_as(x_BlC) * self.gain)

    register_mixer("mean", MeanOfPast)
    model = tiny_var(attention=["mean", "full"], attention_options={"mean": {"gain": 2.0}})
    assert isinstance(model.blocks[1].attn, FullAttention) and model.blocks[0].attn.gain == 2.0
    labels, x = torch.tensor([3, 7]), torch.randn(2, L_TINY - 1, 8)
    ref = model(labels, x)
    # scale by scale through the states gives the teacher-forcing logits
    cond = model.class_emb(labels)
    states = model.init_state(2)
    tokens = [model.first_scale_tokens(cond)]
    for si in range(1, 4):
        begin, end = model.layout.bounds[si]
        pn = model.patch_nums[si]
        tokens.append(model.scale_tokens(si, x[:, begin - 1 : end - 1].transpose(1, 2).reshape(2, 8, pn, pn)))
    got = torch.cat([model.forward_scale(t, cond, states, si) for si, t in enumerate(tokens)], 1)
    assert torch.allclose(got, ref, atol=1e-5)

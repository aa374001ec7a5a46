import pytest
import torch
from helpers import seeded_weights

from kernels import SCHEDULES
from scaffold import CheckpointError, save_state_dict, sha256_of
from scaffold.checkpoint import HUB_REVISION, HUB_SHA256
from tokenizer import (
    MultiScaleQuantizer,
    MultiScaleVQVAE,
    VQVAEConfig,
    load_official_vae,
    phi_index,
)

# ------------------------------------------------------------------------------ the published layout


def published_vae_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of `vae_ch160v4096z32.pth`, written out from the published layout (docs/architecture.md section 4):
    ch 160, ch_mult (1,1,2,2,4), 2 res blocks per level (decoder 3), attention at the lowest level and in
    the middle, z 32, V 4096, 4 phi convs, one EMA hit row per scale. Independent of our module code."""
    ch, mult, z, V = 160, (1, 1, 2, 2, 4), 32, 4096
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cout, cin, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def resblock(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        conv(f"{name}.qkv", 3 * c, c, 1)
        conv(f"{name}.proj_out", c, c, 1)

    def middle(name, c):
        resblock(f"{name}.block_1", c, c)
        attn(f"{name}.attn_1", c)
        resblock(f"{name}.block_2", c, c)

    conv("encoder.conv_in", ch, 3, 3)
    cin = ch
    for lvl, m in enumerate(mult):
        for b in range(2):
            resblock(f"encoder.down.{lvl}.block.{b}", cin, ch * m)
            cin = ch * m
            if lvl == 4:
                attn(f"encoder.down.{lvl}.attn.{b}", cin)
        if lvl != 4:
            conv(f"encoder.down.{lvl}.downsample.conv", cin, cin, 3)
    middle("encoder.mid", cin)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", z, cin, 3)

    cin = ch * mult[-1]
    conv("decoder.conv_in", cin, z, 3)
    middle("decoder.mid", cin)
    for lvl in reversed(range(5)):
        for b in range(3):
            resblock(f"decoder.up.{lvl}.block.{b}", cin, ch * mult[lvl])
            cin = ch * mult[lvl]
            if lvl == 4:
                attn(f"decoder.up.{lvl}.attn.{b}", cin)
        if lvl != 0:
            conv(f"decoder.up.{lvl}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", 3, cin, 3)

    conv("quant_conv", z, z, 3)
    conv("post_quant_conv", z, z, 3)
    shapes["quantize.embedding.weight"] = (V, z)
    shapes["quantize.ema_vocab_hit_SV"] = (10, V)
    for i in range(4):
        conv(f"quantize.quant_resi.qresi_ls.{i}", z, z, 3)
    return shapes


@pytest.fixture(scope="module")
def published_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in published_vae_shapes().items()}


def test_published_layout_loads_strictly(published_state_dict):
    vae = load_official_vae(published_state_dict)
    own = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert own == published_vae_shapes()
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    # The published tokenizer has 108.9M parameters (the VAR paper's "109M" VQVAE).
    assert sum(p.numel() for p in vae.parameters()) == 108_948_355
    for k, v in vae.state_dict().items():
        assert torch.equal(v, published_state_dict[k]), k


def test_published_checkpoint_file_and_mismatch_messages(published_state_dict, tmp_path):
    path = tmp_path / "vae.safetensors"
    save_state_dict(published_state_dict, path)
    vae = load_official_vae(path)
    assert torch.equal(vae.quantize.embedding.weight, published_state_dict["quantize.embedding.weight"])

    broken = dict(published_state_dict)
    del broken["decoder.conv_out.bias"]
    broken["encoder.extra.weight"] = torch.zeros(1)
    broken["quant_conv.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_official_vae(broken)
    msg = str(err.value)
    assert "missing keys: decoder.conv_out.bias" in msg
    assert "unexpected keys: encoder.extra.weight" in msg
    assert "quant_conv.weight: checkpoint (32, 32, 1, 1) vs model (32, 32, 3, 3)" in msg

    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        load_official_vae(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pth"):
        load_official_vae(tmp_path / "junk.pth")


def test_published_weights_serve_512px_patch_nums(published_state_dict):
    vae = load_official_vae(published_state_dict, patch_nums=SCHEDULES["512"])
    assert vae.image_size == 512 and vae.patch_nums == SCHEDULES["512"]


def test_hub_download_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        load_official_vae("hub")
    msg = str(err.value)
    assert "vae_ch160v4096z32.pth" in msg and "FoundationVision/var" in msg and "local file path" in msg


def test_hub_download_path_uses_the_published_file_name(monkeypatch, tmp_path, published_state_dict):
    path = tmp_path / "vae_ch160v4096z32.pth"
    torch.save(published_state_dict, path)
    calls = []

    def fake_download(repo_id, filename, revision):
        calls.append((repo_id, filename, revision))
        return str(path)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    monkeypatch.setitem(HUB_SHA256, "vae_ch160v4096z32.pth", sha256_of(path))  # this test's stand-in file
    vae = load_official_vae("hub")
    assert calls == [("FoundationVision/var", "vae_ch160v4096z32.pth", HUB_REVISION)]
    assert torch.equal(vae.quantize.embedding.weight, published_state_dict["quantize.embedding.weight"])


# ------------------------------------------------------------------------------ parity (golden numbers)


# Computed by the published VQVAE (vocab 64, z 8, ch 32, ch_mult (1,1,2,2,4), patch_nums (1,2,3,4))
# with `helpers.seeded_weights(vae, 1234)` and the input below: indices, and checksums of the decoded image and of
# the teacher-forcing input.
GOLDEN_IDX = [
    [[3], [3]],
    [[41, 14, 12, 48], [14, 14, 0, 14]],
    [[29, 3, 3, 14, 14, 57, 14, 14, 14], [5, 57, 3, 5, 5, 3, 4, 29, 59]],
    [
        [48, 10, 28, 52, 5, 29, 14, 41, 52, 14, 7, 14, 32, 32, 32, 5],
        [28, 0, 3, 41, 3, 30, 29, 0, 29, 29, 3, 55, 20, 14, 59, 0],
    ],
]
GOLDEN_IMG_SUM, GOLDEN_IMG_ABS = 3.9634876602794975, 11357.683933008695
GOLDEN_IMG_PIX = [-0.025099903345108032, 0.17738834023475647, 0.4774433374404907]
GOLDEN_VIN_SUM, GOLDEN_VIN_ABS = 11.42716696113348, 163.07822087407112


def test_matches_published_code_on_golden_numbers():
    cfg = VQVAEConfig(vocab_size=64, z_channels=8, ch=32, patch_nums=(1, 2, 3, 4))
    vae = MultiScaleVQVAE(cfg).eval()
    vae.load_state_dict(seeded_weights(vae, 1234))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(99)) * 2 - 1
    with torch.no_grad():
        idx = vae.img_to_idx(x)
        img = vae.idx_to_img(idx)
        vin = vae.idx_to_var_input(idx)
    assert [i.tolist() for i in idx] == GOLDEN_IDX
    assert img.double().sum().item() == pytest.approx(GOLDEN_IMG_SUM, abs=1e-3)
    assert img.double().abs().sum().item() == pytest.approx(GOLDEN_IMG_ABS, rel=1e-6)
    assert img[0, :, 5, 7].tolist() == pytest.approx(GOLDEN_IMG_PIX, abs=1e-5)
    assert vin.double().sum().item() == pytest.approx(GOLDEN_VIN_SUM, abs=1e-4)
    assert vin.double().abs().sum().item() == pytest.approx(GOLDEN_VIN_ABS, rel=1e-6)


# ------------------------------------------------------------------------------ the quantizer


@pytest.mark.parametrize(
    "num_scales, expected",
    [(10, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]), (14, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])],
    ids=["S10", "S14"],
)
def test_phi_tick_mapping(num_scales, expected):
    assert [phi_index(si, num_scales, 4) for si in range(num_scales)] == expected
    q = MultiScaleQuantizer(16, 4, tuple(range(1, num_scales + 1)))
    assert q.quant_resi.scale_to_phi == expected


def test_phi_tick_mapping_other_counts():
    # K != 4: ticks at linspace(1/(2K), 1 - 1/(2K), K); K = S gives one conv per scale.
    assert [phi_index(si, 5, 5) for si in range(5)] == [0, 1, 2, 3, 4]
    assert [phi_index(si, 4, 1) for si in range(4)] == [0, 0, 0, 0]
    assert phi_index(0, 1, 4) == 0  # a single scale takes the first conv


def test_roundtrip_shapes_tiny(tiny_vae):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    idx = tiny_vae.img_to_idx(x)
    assert [tuple(i.shape) for i in idx] == [(3, 1), (3, 4), (3, 9), (3, 16)]
    assert all(i.dtype == torch.int64 and int(i.min()) >= 0 and int(i.max()) < 64 for i in idx)
    img = tiny_vae.idx_to_img(idx)
    assert img.shape == (3, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    assert tiny_vae.idx_to_var_input(idx).shape == (3, 1 + 4 + 9 + 16 - 1, 8)


@pytest.mark.slow
def test_roundtrip_shapes_published_size():
    vae = MultiScaleVQVAE().eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    idx = vae.img_to_idx(x)
    assert [i.shape[1] for i in idx] == [p * p for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
    assert vae.idx_to_img(idx).shape == (1, 3, 256, 256)
    assert vae.idx_to_var_input(idx).shape == (1, 680 - 1, 32)


def test_fhat_scale_by_scale_equals_one_shot(tiny_vae):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    idx = tiny_vae.img_to_idx(x)
    P = tiny_vae.patch_nums[-1]
    f_hat = torch.zeros(2, 8, P, P)
    inputs = []
    for si in range(len(idx)):
        f_hat, nxt = tiny_vae.next_scale_input(si, f_hat, tiny_vae.embed_idx(idx[si], si))
        if si < len(idx) - 1:
            inputs.append(nxt.flatten(2).transpose(1, 2))
        torch.testing.assert_close(f_hat, tiny_vae.idx_to_fhat(idx[: si + 1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(inputs, 1), tiny_vae.idx_to_var_input(idx), rtol=0, atol=0)
    # ... and the training forward's quantized latent is that same f_hat.
    with torch.no_grad():
        q = tiny_vae.quantize(tiny_vae.img_to_f(x))
    torch.testing.assert_close(q.f_hat, f_hat, rtol=0, atol=1e-5)
    assert [torch.equal(a, b) for a, b in zip(q.idx_Bl, idx)] == [True] * 4


def test_next_scale_input_is_pure(tiny_vae):
    f_hat = torch.zeros(1, 8, 4, 4)
    h = tiny_vae.embed_idx(torch.tensor([[5]]), 0)
    new, nxt = tiny_vae.next_scale_input(0, f_hat, h)
    assert f_hat.abs().sum() == 0 and new.abs().sum() > 0 and nxt.shape == (1, 8, 2, 2)
    last, same = tiny_vae.next_scale_input(3, new, tiny_vae.embed_idx(torch.zeros(1, 16, dtype=torch.long), 3))
    assert same is last


def test_512px_patch_nums_quantize():
    q = MultiScaleQuantizer(64, 8, SCHEDULES["512"])
    f = torch.randn(2, 8, 32, 32)
    idx = q.f_to_idx(f)
    assert [i.shape[1] for i in idx] == [p * p for p in SCHEDULES["512"]]
    assert q.idx_to_var_input(idx).shape == (2, sum(p * p for p in SCHEDULES["512"]) - 1, 8)


def test_training_forward_gradients(tiny_vae):
    tiny_vae.train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tiny_vae(x)
    assert out.rec_B3HW.shape == x.shape and out.vq_loss.ndim == 0 and out.vq_loss > 0
    (out.rec_B3HW.square().mean() + out.vq_loss).backward()
    # Straight-through to the encoder, the VQ loss to the codebook and the phi convs.
    assert tiny_vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tiny_vae.quantize.embedding.weight.grad.abs().sum() > 0
    assert tiny_vae.quantize.quant_resi.qresi_ls[0].weight.grad.abs().sum() > 0


def test_vq_loss_definition(tiny_vae):
    """mean over scales of beta*mse(f_hat.detach(), f) + mse(f_hat, f.detach()) (docs/architecture.md section 4)."""
    q = tiny_vae.quantize
    f = torch.randn(2, 8, 4, 4)
    loss = q(f).vq_loss
    idx = q.f_to_idx(f)
    expected = sum(1.25 * torch.mean((q.idx_to_fhat(idx[: si + 1]) - f) ** 2) for si in range(4)) / 4
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_znorm_uses_cosine_nearest():
    q = MultiScaleQuantizer(3, 2, (1,), using_znorm=True)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.1], [-1.0, 0.0]]))
    # L2 would pick code 1 (closest point); cosine picks code 1 as well for (0, 1) but code 0 for (1, 0.2).
    assert q.nearest(torch.tensor([[1.0, 0.2], [0.0, 1.0]])).tolist() == [0, 1]


@pytest.mark.parametrize(
    "shape, match", [((1, 3, 32, 48), "square"), ((1, 3, 64, 64), "32x32"), ((1, 1, 32, 32), r"\[B, 3, H, W\]")]
)
def test_bad_images_rejected(tiny_vae, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_vae.img_to_idx(torch.zeros(shape))


def test_bad_indices_rejected(tiny_vae):
    with pytest.raises(ValueError, match="expected 4 per-scale index tensors"):
        tiny_vae.idx_to_var_input([torch.zeros(1, 1, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"indices of scale 1 have shape \(1, 3\)"):
        tiny_vae.idx_to_img([torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)])


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(patch_nums=(1, 3, 2)), "strictly increasing"),
        (dict(ch=48), "divisible by 32"),
        (dict(quant_conv_ks=2), "odd"),
    ],
)
def test_bad_vae_config(changes, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleVQVAE(VQVAEConfig(**changes))

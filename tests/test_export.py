import pytest
import torch
from helpers import L_TINY, tiny_var

from scaffold import CheckpointError
from var import sample
from var.export import SamplingDefaults, export_model, load_model


def test_export_then_load_gives_the_same_model(tmp_path, tiny_vae):
    model = tiny_var(num_classes=10, attention=["lka", "full"])
    names = [f"digit {i}" for i in range(10)]
    out = export_model(model, tiny_vae, tmp_path / "m", class_names=names, sampling=SamplingDefaults(cfg=2.0, top_k=5))
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "tokenizer"]
    loaded = load_model(out)
    assert loaded.class_names == names and loaded.sampling.cfg == 2.0 and loaded.sampling.top_k == 5
    assert loaded.model.config.block_attention() == ["lka", "full"]
    labels, x = torch.tensor([1, 2]), torch.randn(2, L_TINY - 1, 8)
    torch.testing.assert_close(loaded.model(labels, x), model(labels, x), rtol=0, atol=0)
    a = sample(loaded.model, loaded.vae, labels, cfg=1.0, top_k=5, top_p=0.9, seed=0)
    b = sample(model, tiny_vae, labels, cfg=1.0, top_k=5, top_p=0.9, seed=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "attention: lka, full" in loaded.describe() and "10 classes" in loaded.describe()


def test_state_dict_override_is_what_gets_exported(tmp_path, tiny_vae):
    model = tiny_var()
    ema = {k: torch.zeros_like(v) if k == "head.bias" else v for k, v in model.state_dict().items()}
    loaded = load_model(export_model(model, tiny_vae, tmp_path / "m", state_dict=ema))
    assert loaded.model.head.bias.abs().sum() == 0


def test_load_errors(tmp_path, tiny_vae):
    with pytest.raises(
        CheckpointError, match="model not found: .*nowhere is neither an exported model folder nor one of d16"
    ):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.yaml"):
        load_model(tmp_path / "empty")
    out = export_model(tiny_var(), tiny_vae, tmp_path / "m")
    # a tokenizer of another codebook size
    from conftest import TINY_VAE

    from tokenizer import MultiScaleVQVAE, VQVAEConfig, export_tokenizer

    export_tokenizer(MultiScaleVQVAE(VQVAEConfig(**{**TINY_VAE, "vocab_size": 32})), out / "tokenizer")
    with pytest.raises(CheckpointError, match="vocab_size=64, .* but its tokenizer has .*vocab_size=32"):
        load_model(out)
    with pytest.raises(ValueError, match="3 class names for a model of 10 classes"):
        export_model(tiny_var(), tiny_vae, tmp_path / "x", class_names=["a", "b", "c"])


def test_published_name_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="var_d16.pth.*FoundationVision/var"):
        load_model("d16")

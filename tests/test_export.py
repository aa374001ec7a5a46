import os

import pytest
import torch
from helpers import L_TINY, tiny_var

from scaffold import CheckpointError
from scaffold.checkpoint import sha256_of
from var import sample
from var.export import export_model, load_model
from var.settings import MODEL_DEFAULTS, SamplingSettings


def test_export_then_load_gives_the_same_model(tmp_path, tiny_vae):
    model = tiny_var(num_classes=10, attention=["lka", "full"])
    names = [f"digit {i}" for i in range(10)]
    out = export_model(model, tiny_vae, tmp_path / "m", class_names=names, sampling=SamplingSettings(cfg=2.0, top_k=5))
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "tokenizer"]
    loaded = load_model(out)
    assert loaded.class_names == names and loaded.sampling.cfg == 2.0 and loaded.sampling.top_k == 5
    assert loaded.model.config.block_attention() == ["lka", "full"]
    labels, x = torch.tensor([1, 2]), torch.randn(2, L_TINY - 1, 8)
    with torch.no_grad():  # both on inference's GEMM (var.linear): the loaded weights require no grad
        torch.testing.assert_close(loaded.model(labels, x), model(labels, x), rtol=0, atol=0)
    a = sample(loaded.model, loaded.vae, labels, cfg=1.0, top_k=5, top_p=0.9, seed=0)
    b = sample(model, tiny_vae, labels, cfg=1.0, top_k=5, top_p=0.9, seed=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "attention: lka, full" in loaded.describe() and "10 classes" in loaded.describe()


def test_sampling_defaults_round_trip_and_are_checked_on_load(tmp_path, tiny_vae):
    from omegaconf import OmegaConf

    mine = SamplingSettings(cfg=2.5, top_k=7, top_p=0.5, more_smooth=True, seed=9, precision="bf16", prune_keep=0.5)
    out = export_model(tiny_var(), tiny_vae, tmp_path / "m", sampling=mine)
    assert OmegaConf.to_container(OmegaConf.load(out / "config.yaml").sampling) == mine.as_dict()
    assert load_model(out).sampling == mine
    # no sampling given: the model defaults (precision "auto"), as a published model's
    plain = export_model(tiny_var(), tiny_vae, tmp_path / "plain")
    assert load_model(plain).sampling == MODEL_DEFAULTS and MODEL_DEFAULTS.precision == "auto"
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("  precision: bf16\n", ""))  # a setting the file lacks
    assert load_model(out).sampling == mine.replace(precision="auto")
    # a model exported before the fast modes existed: its file lacks them, and it samples exactly
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("  prune_keep: 0.5\n", ""))
    assert load_model(out).sampling == mine.replace(precision="auto", prune_keep=1.0)
    (out / "config.yaml").write_text(text.replace("prune_keep: 0.5", "prune_keep: 2"))
    with pytest.raises(CheckpointError, match=r"key .sampling.prune_keep.: prune_keep .* must be in \(0, 1\], got 2"):
        load_model(out)
    (out / "config.yaml").write_text(text)
    for old, new, message in [
        ("top_k: 7", "top_k: -3", "key 'sampling.top_k': top-k must be >= 0 (0 keeps every token), got -3"),
        ("top_k: 7", "topk: 7", "key 'sampling.topk': unknown sampling setting 'topk'; the settings are cfg, top_k"),
        ("top_p: 0.5", "top_p: null", "key 'sampling.top_p': sampling setting 'top_p' has no value (null)"),
        ("more_smooth: true", "more_smooth: maybe", "key 'sampling.more_smooth': more_smooth must be true or false"),
    ]:
        (out / "config.yaml").write_text(text.replace(old, new))
        with pytest.raises(CheckpointError) as err:
            load_model(out)
        assert str(err.value).startswith(f"{out / 'config.yaml'}: {message}")


def test_training_exports_the_model_defaults_unless_told_otherwise():
    from scaffold.config import load_config
    from var.train import VARTrainConfig

    assert load_config(VARTrainConfig).sampling == MODEL_DEFAULTS
    assert load_config(VARTrainConfig, overrides=["sampling.top_k=5"]).sampling == MODEL_DEFAULTS.replace(top_k=5)


def test_state_dict_override_is_what_gets_exported(tmp_path, tiny_vae):
    model = tiny_var()
    ema = {k: torch.zeros_like(v) if k == "head.bias" else v for k, v in model.state_dict().items()}
    loaded = load_model(export_model(model, tiny_vae, tmp_path / "m", state_dict=ema))
    assert loaded.model.head.bias.abs().sum() == 0


def test_identity_is_the_weights_and_architecture_not_the_initial_gate_scale(tmp_path, tiny_vae):
    """model.init_adaln_gamma is recorded, but a sampling folder's record of the model stays what it was."""
    model = tiny_var()
    before = load_model(export_model(model, tiny_vae, tmp_path / "a")).identity
    model.config.init_adaln_gamma = 0.5
    loaded = load_model(export_model(model, tiny_vae, tmp_path / "b"))
    assert loaded.model.config.init_adaln_gamma == 0.5 and loaded.identity == before
    model.config.cond_drop_rate = 0.3  # the same weights, another config: that still counts
    assert load_model(export_model(model, tiny_vae, tmp_path / "c")).identity != before


def test_load_errors(tmp_path, tiny_vae):
    with pytest.raises(
        CheckpointError, match="model not found: .*nowhere is neither an exported model folder, a checkpoint file nor"
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
    with pytest.raises(CheckpointError, match="var_d16.pth.*FoundationVision/var") as err:
        load_model("d16")
    # advice that `--model` can follow: it takes the file (test_a_published_checkpoint_file_is_a_model)
    assert str(err.value).endswith("put them in one folder and pass --model FOLDER/var_dNN.pth")


def test_the_folder_records_its_tokenizer_and_loading_checks_it(tmp_path, tiny_vae):
    from omegaconf import OmegaConf

    from tokenizer import export_tokenizer

    out = export_model(tiny_var(), tiny_vae, tmp_path / "m")
    recorded = OmegaConf.load(out / "config.yaml").tokenizer_sha256
    assert recorded == sha256_of(out / "tokenizer" / "model.safetensors")
    load_model(out)
    # the same architecture with other weights: _check_pair cannot see it, the record does
    other = type(tiny_vae)(tiny_vae.config).eval()
    export_tokenizer(other, out / "tokenizer")
    with pytest.raises(CheckpointError, match=r"tokenizer is not the tokenizer this model was exported with .*"
                       r"config.yaml records " + recorded[:12]):  # fmt: skip
        load_model(out)


def test_exported_files_have_ordinary_permissions(tmp_path, tiny_vae):
    umask = os.umask(0o022)
    os.umask(umask)
    out = export_model(tiny_var(), tiny_vae, tmp_path / "m")
    for name in ("config.yaml", "model.safetensors"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_a_tokenizer_file_is_not_taken_for_a_transformer(tmp_path, tiny_vae):
    from scaffold import save_state_dict
    from var.official import load_official_var

    path = tmp_path / "vae_ch160v4096z32.pth"
    save_state_dict(tiny_vae.state_dict(), path)
    message = "vae_ch160v4096z32.pth is not a VAR transformer checkpoint: it holds a tokenizer (VQ-VAE"
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        load_official_var(str(path))
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        load_model(path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt is a file but not a checkpoint"):
        load_model(tmp_path / "notes.txt")


def test_a_published_checkpoint_file_is_a_model(tmp_path, tiny_vae, monkeypatch):
    """`--model /path/var_d16.pth`: the depth is read from the file, the tokenizer taken from beside it.
    (The real d16 is 1.2 GB; its loading is load_official_var's, tested in test_var_parity.)"""
    import var.export
    import var.official
    from scaffold import save_state_dict

    model = tiny_var()
    calls = {}

    def fake_var(state_dict, depth, source):
        calls["var"] = (sorted(state_dict), depth, source)
        return model

    def fake_vae(path):
        calls["vae"] = path
        return tiny_vae

    monkeypatch.setattr(var.official, "load_official_var", fake_var)
    monkeypatch.setattr(var.export, "load_official_vae", fake_vae)
    weights = tmp_path / "var_d16.pth"
    save_state_dict({"blocks.0.w": torch.zeros(1), "blocks.15.w": torch.zeros(1)}, weights)
    with pytest.raises(CheckpointError, match="the published tokenizer vae_ch160v4096z32.pth is not beside it"):
        load_model(weights)  # offline (conftest): the advice says where to put the tokenizer
    save_state_dict(tiny_vae.state_dict(), tmp_path / "vae_ch160v4096z32.pth")
    loaded = load_model(weights)
    assert calls == {"var": (["blocks.0.w", "blocks.15.w"], 16, str(weights)),
                     "vae": str(tmp_path / "vae_ch160v4096z32.pth")}  # fmt: skip
    assert loaded.model is model and loaded.name == str(weights) and len(loaded.class_names) == 1000
    assert loaded.identity["tokenizer_sha256"] == sha256_of(tmp_path / "vae_ch160v4096z32.pth")


def test_a_model_folder_is_read_without_interpolation(tmp_path, tiny_vae, monkeypatch):
    """`${oc.env:...}` in a shared model folder copied the loader's secret into the UI."""
    from scaffold import ConfigError

    monkeypatch.setenv("NEXTSCALE_TEST_SECRET", "s3cr3t")
    secret = "${oc.env:NEXTSCALE_TEST_SECRET}"
    names = [secret] + [str(i) for i in range(1, 10)]
    out = export_model(tiny_var(num_classes=10), tiny_vae, tmp_path / "m", class_names=names)
    text = (out / "config.yaml").read_text()
    assert "s3cr3t" not in text and secret in text  # written as the data it is, not resolved
    with pytest.raises(ConfigError, match=r"config.yaml: key 'class_names\[0\]': .*oc.env.* is an interpolation"):
        load_model(out)
    tok = out / "tokenizer" / "config.yaml"
    tok.write_text(tok.read_text().replace("vocab_size: 64", "vocab_size: ${oc.env:NEXTSCALE_TEST_SECRET}"))
    from tokenizer import load_tokenizer

    with pytest.raises(ConfigError, match=r"tokenizer/config.yaml: key 'vocab_size': .* is an interpolation"):
        load_tokenizer(out / "tokenizer")

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from scaffold import ConfigError, load_config
from scaffold.config import add_config_arguments
from tokenizer import DataConfig, VQVAEConfig


@dataclass
class ExampleConfig:
    model: VQVAEConfig = field(default_factory=VQVAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lr: float = 1e-4
    name: str = "run"


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\nmodel:\n  vocab_size: 64\n  patch_nums: [1, 2, 4]\n")
    cfg = load_config(ExampleConfig, path, ["model.ch=64", "name=x"])
    assert isinstance(cfg, ExampleConfig) and isinstance(cfg.model, VQVAEConfig)
    assert (cfg.lr, cfg.name, cfg.model.vocab_size, cfg.model.ch) == (0.5, "x", 64, 64)
    assert cfg.model.patch_nums == (1, 2, 4)
    assert load_config(ExampleConfig).model.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.vocab_sise=3"], r"unknown key 'model.vocab_sise'; did you mean 'model.vocab_size'\?"),
        (["lr=fast"], "wrong type for key 'lr'"),
        (["model.patch_nums=[1,a]"], "wrong type for key 'model.patch_nums'"),
        (["lr"], "not of the form key=value"),
        (["model.patch_nums=[3,2]"], r"strictly increasing.*\(in 'model'\)"),
        (["data.name=cifar"], "data.name must be 'digits', 'emoji' or 'imagefolder'"),
    ],
    ids=["typo", "type", "list-type", "no-equals", "validate", "validate-data"],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ExampleConfig, None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(ExampleConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse config file .*bad.yaml"):
        load_config(ExampleConfig, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  chanels: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'model.chanels'; did you mean 'model.z_channels'\?"):
        load_config(ExampleConfig, typo)


def _one_clean_line(err: ConfigError) -> str:
    text = str(err)
    assert "\n" not in text and "$" not in text, text  # no OmegaConf template placeholders, no context lines
    return text


@pytest.mark.parametrize(
    "content, match",
    [
        ("- lr: 0.5\n- name: x\n", r"config file .*c.yaml holds a list at its top level; it must be a mapping"),
        ("42\n", r"config file .*c.yaml holds a single value at its top level"),
        ("model:\n  ch_mult: [a, 2]\n", r"c.yaml: key 'model.ch_mult': value .*a.* could not be converted to Integer"),
        ("lr: [1, 2]\n", r"c.yaml: key 'lr': Value '\[1, 2\]' .*could not be converted to Float"),
        ("model: 5\n", r"c.yaml: key 'model': .*not a subclass of VQVAEConfig"),
        ("name: ${nowhere}\n", r"key 'name': Interpolation key 'nowhere' not found"),
    ],
    ids=["list", "scalar", "list-element", "list-for-float", "scalar-for-section", "interpolation"],
)
def test_bad_file_contents_are_one_line_naming_the_key(tmp_path, content, match):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(ExampleConfig, path)
    _one_clean_line(info.value)


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.ch_mult=[a]", r"wrong type for key 'model.ch_mult': value '\[a\]' could not be converted to Integer"),
        ("lr=[1", r"override 'lr=\[1': cannot parse it"),
        ("lr=fast", r"wrong type for key 'lr': Value 'fast' of type 'str' could not be converted to Float"),
    ],
    ids=["list-element", "yaml-syntax", "type"],
)
def test_bad_overrides_are_one_line_without_placeholders(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(ExampleConfig, None, [override])
    _one_clean_line(info.value)


def test_config_pointing_at_a_folder_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .* is a folder: pass a YAML file"):
        load_config(ExampleConfig, tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(ExampleConfig, tmp_path / "empty.yaml").name == "run"  # an empty file changes nothing


# ------------------------------------------------------------------------------------ composition
def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_files_merge_in_order_then_overrides(tmp_path):
    """Mappings merge key by key, lists and scalars are replaced; each source over the ones before it."""
    base = _write(tmp_path, "base.yaml", "lr: 0.5\nname: base\nmodel:\n  ch: 64\n  ch_mult: [1, 2, 4]\n")
    overlay = _write(tmp_path, "overlay.yaml", "name: overlay\nmodel:\n  ch_mult: [1, 1]\n  vocab_size: 64\n")
    cfg = load_config(ExampleConfig, [base, overlay], ["model.vocab_size=32"])
    assert (cfg.lr, cfg.name) == (0.5, "overlay")
    assert (cfg.model.ch, cfg.model.ch_mult, cfg.model.vocab_size) == (64, (1, 1), 32)
    assert load_config(ExampleConfig, [overlay, base]).model.ch_mult == (1, 2, 4)  # the order decides
    assert load_config(ExampleConfig, []) == load_config(ExampleConfig)


def test_an_error_in_a_later_file_names_that_file(tmp_path):
    base = _write(tmp_path, "base.yaml", "lr: 0.5\n")
    bad = _write(tmp_path, "bad.yaml", "model:\n  z_chanels: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.z_chanels'; did you mean 'model.z_channels'"):
        load_config(ExampleConfig, [base, bad])
    wrong = _write(tmp_path, "wrong.yaml", "lr: fast\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: key 'lr': .*'fast'.*could not be converted to Float"):
        load_config(ExampleConfig, [base, wrong])
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(ExampleConfig, [base, tmp_path / "missing.yaml"])


def test_config_flag_repeats():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", "a.yaml", "--config", "b.yaml", "x=1", "y.z=2"])
    assert args.config == ["a.yaml", "b.yaml"] and args.overrides == ["x=1", "y.z=2"]
    assert parser.parse_args([]).config is None


# The three hooks a config dataclass may declare (scaffold.config's module docstring).
@dataclass
class Net:
    width: int = 8
    depth: int = 2
    tags: list[str] = field(default_factory=list)

    @classmethod
    def presets(cls) -> dict[str, "Net"]:
        return {"small": Net(width=16, depth=4, tags=["s"]), "large": Net(width=64, depth=12)}


@dataclass
class Runner:
    workers: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    extra_field: ClassVar[str] = "extra"

    @staticmethod
    def extra_names() -> tuple[str, ...]:
        return ("accumulate", "deterministic")


@dataclass
class Composite:
    net: Net = field(default_factory=Net)
    runner: Runner = field(default_factory=Runner)
    gain: float = 1.0
    renamed: ClassVar[dict[str, str]] = {"net_gain": "gain", "width": "net.width"}


def test_a_preset_lies_beneath_every_file_and_override(tmp_path):
    a = _write(tmp_path, "a.yaml", "net:\n  preset: small\n  depth: 6\n")
    b = _write(tmp_path, "b.yaml", "net:\n  tags: [b]\n")
    assert load_config(Composite, [a]).net == Net(width=16, depth=6, tags=["s"])
    assert load_config(Composite, [a, b]).net == Net(width=16, depth=6, tags=["b"])
    # Named last, after the files: the preset's values, then still every file's own settings over them.
    assert load_config(Composite, [a, b], ["net.preset=large"]).net == Net(width=64, depth=6, tags=["b"])
    assert load_config(Composite, [b], ["net.preset=small", "net.width=3"]).net == Net(width=3, depth=4, tags=["b"])


def test_an_unknown_preset_names_the_key_and_the_presets(tmp_path):
    a = _write(tmp_path, "a.yaml", "net:\n  preset: smal\n")
    with pytest.raises(
        ConfigError,
        match=r"a.yaml: key 'net.preset': unknown preset 'smal'; did you mean 'small'\? "
        r"\(the presets: small, large\)",
    ):
        load_config(Composite, [a])
    with pytest.raises(ConfigError, match=r"override 'runner.preset=x': unknown key 'runner.preset'"):
        load_config(Composite, None, ["runner.preset=x"])  # only a mapping with presets() takes one


def test_extra_names_go_to_the_extra_field(tmp_path):
    a = _write(tmp_path, "a.yaml", "runner:\n  workers: 2\n  accumulate: 4\n")
    cfg = load_config(Composite, [a], ["runner.deterministic=true"])
    assert cfg.runner == Runner(workers=2, extra={"accumulate": 4, "deterministic": True})
    with pytest.raises(ConfigError, match=r"unknown key 'runner.acumulate'; did you mean 'runner.accumulate'\?"):
        load_config(Composite, None, ["runner.acumulate=2"])
    with pytest.raises(ConfigError, match=r"unknown key 'net.accumulate'"):  # only where extra_field is declared
        load_config(Composite, None, ["net.accumulate=2"])


def test_renamed_keys_still_load_with_a_warning(tmp_path, caplog):
    old = _write(tmp_path, "old.yaml", "net_gain: 2.5\nwidth: 32\n")
    with caplog.at_level(logging.WARNING, logger="scaffold.config"):
        cfg = load_config(Composite, [old])
    assert (cfg.gain, cfg.net.width) == (2.5, 32)
    assert "old.yaml: 'net_gain' is now 'gain'" in caplog.text and "'width' is now 'net.width'" in caplog.text
    both = _write(tmp_path, "both.yaml", "width: 32\nnet:\n  width: 8\n")
    with pytest.raises(ConfigError, match=r"both.yaml: 'width' is the old name of 'net.width', which is set too"):
        load_config(Composite, [both])

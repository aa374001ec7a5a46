from dataclasses import dataclass, field

import pytest

from scaffold import ConfigError, load_config
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
        (["model.vocab_sise=3"], "unknown key 'model.vocab_sise'"),
        (["lr=fast"], "wrong type for key 'lr'"),
        (["model.patch_nums=[1,a]"], "wrong type for key 'model.patch_nums'"),
        (["lr"], "not of the form key=value"),
        (["model.patch_nums=[3,2]"], r"strictly increasing.*\(in 'model'\)"),
        (["data.name=cifar"], "data.name must be 'digits' or 'imagefolder'"),
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
    with pytest.raises(ConfigError, match=r"typo.yaml: key 'model.chanels'"):
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

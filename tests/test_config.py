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

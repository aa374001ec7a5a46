"""What a run reports (scaffold.loggers): the metrics logger chosen by `logger=`."""

import sys

import pytest
from helpers import cpu_run_config
from lightning.pytorch.loggers import CSVLogger

from scaffold import ConfigError
from scaffold.loggers import make_logger
from scaffold.run import make_trainer


def test_logger_choice(tmp_path):
    assert isinstance(make_trainer(cpu_run_config(tmp_path)).logger, CSVLogger)  # the default
    assert make_trainer(cpu_run_config(tmp_path, "logger=none")).logger is None
    assert make_logger("none", tmp_path) is False


@pytest.mark.parametrize("kind, packages", [("tensorboard", ["tensorboard", "tensorboardX"]), ("wandb", ["wandb"])])
def test_a_logger_whose_package_is_missing_says_what_to_install(tmp_path, monkeypatch, kind, packages):
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    cfg = cpu_run_config(tmp_path, f"logger={kind}")
    with pytest.raises(ConfigError, match=rf"logger={kind} needs the {packages[0]} package: pip install {packages[0]}"):
        make_trainer(cfg)

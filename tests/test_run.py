"""The driver of a training run (scaffold.run): the Trainer it builds from the config."""

import pytest
from helpers import cpu_run_config

from scaffold import ConfigError
from scaffold.run import make_trainer


def test_any_trainer_argument_passes_through(tmp_path):
    cfg = cpu_run_config(tmp_path, "trainer.accumulate_grad_batches=3", "trainer.num_sanity_val_steps=2")
    assert cfg.trainer.extra == {"accumulate_grad_batches": 3, "num_sanity_val_steps": 2}
    trainer = make_trainer(cfg)
    assert trainer.accumulate_grad_batches == 3 and trainer.num_sanity_val_steps == 2  # over make_trainer's 0
    assert make_trainer(cpu_run_config(tmp_path)).accumulate_grad_batches == 1


def test_trainer_arguments_lightning_or_the_stage_refuses_name_the_key(tmp_path):
    with pytest.raises(
        ConfigError, match=r"lightning.Trainer refused trainer.limit_train_batches=-1: .*invalid value -1"
    ):
        make_trainer(cpu_run_config(tmp_path, "trainer.limit_train_batches=-1"))
    with pytest.raises(ConfigError, match=r"trainer.val_check_interval is not passed .*this training sets it .*=5"):
        make_trainer(cpu_run_config(tmp_path, "trainer.val_check_interval=3"), val_check_interval=5)

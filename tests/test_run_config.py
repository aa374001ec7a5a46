"""The keys every training run has (scaffold.run_config): each wrong one is one message naming the key."""

import pytest
from helpers import cpu_run_config

from scaffold import ConfigError


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "trainer.acumulate_grad_batches=2",
            r"unknown key 'trainer.acumulate_grad_batches'; did you mean 'trainer.accumulate_grad_batches'\?",
        ),
        (
            "trainer.extra.acumulate_grad_batches=2",
            r"trainer.acumulate_grad_batches is not an argument of lightning.Trainer; did you mean",
        ),
        ("trainer.max_steps=5", r"trainer.max_steps is not passed to lightning.Trainer: set max_steps instead"),
        ("trainer.gradient_clip_val=1", r"trainer.gradient_clip_val is not passed .*optim.grad_clip"),
        ("trainer.logger=false", r"trainer.logger is not passed to lightning.Trainer: set logger instead"),
        ("logger=tb", r"logger must be one of csv, tensorboard, wandb, none; got 'tb'"),
        ("trainer.accumulate_grad_batches=0", r"trainer.accumulate_grad_batches must be an integer >= 1, got 0"),
    ],
    ids=["typo", "typo-in-extra", "max_steps", "clip", "logger-in-trainer", "logger-choice", "accumulate-0"],
)
def test_a_wrong_trainer_argument_names_the_key(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        cpu_run_config(tmp_path, override)


@pytest.mark.parametrize("seed", ["-1", "4294967296", "true"])
def test_the_run_seed_is_checked(tmp_path, seed):
    with pytest.raises(ConfigError, match=r"seed must be between 0 and 4294967295|seed.*(bool|int)"):
        cpu_run_config(tmp_path, f"seed={seed}")
    assert cpu_run_config(tmp_path, "seed=4294967295").seed == 2**32 - 1

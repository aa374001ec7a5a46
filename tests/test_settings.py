"""var/settings.py: the one check of sampling settings shared by `var sample`, the web UI and config files."""

import dataclasses
import math

import pytest

from scaffold.config import load_config
from scaffold.errors import UserError
from var.settings import MAX_SEED, SamplingSettings, SettingsError, count


def test_defaults_are_the_published_fid_setting_and_auto_precision():
    s = SamplingSettings()
    assert (s.cfg, s.top_k, s.top_p, s.more_smooth, s.seed, s.precision) == (1.5, 900, 0.96, False, 0, "auto")
    assert s.sample_kwargs() == dict(cfg=1.5, top_k=900, top_p=0.96, more_smooth=False, precision="auto")


def test_values_are_converted_to_their_types_never_rounded():
    s = SamplingSettings(cfg="2", top_k="5", top_p=" 0.5 ", seed=7.0, more_smooth="true", precision="bf16")
    assert (s.cfg, s.top_k, s.top_p, s.seed, s.more_smooth) == (2.0, 5, 0.5, 7, True)
    assert [type(v) for v in (s.cfg, s.top_k, s.top_p, s.seed)] == [float, int, float, int]
    assert SamplingSettings(seed=str(MAX_SEED)).seed == MAX_SEED
    assert SamplingSettings(top_p=0).top_p == 0.0 and SamplingSettings(top_p=1).top_p == 1.0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("cfg", float("nan"), "guidance (cfg) must be finite, got nan"),
        ("cfg", float("inf"), "guidance (cfg) must be finite, got inf"),
        ("cfg", "-inf", "guidance (cfg) must be finite, got '-inf'"),
        ("cfg", -0.5, "guidance (cfg) must be >= 0, got -0.5"),
        ("cfg", "strong", "guidance (cfg) must be a number, got 'strong'"),
        ("top_k", -5, "top-k must be >= 0 (0 keeps every token), got -5"),
        ("top_k", 2.5, "top-k must be an integer, got 2.5"),
        ("top_k", float("nan"), "top-k must be an integer, got nan"),
        ("top_k", True, "top-k must be an integer, got True"),
        ("top_p", 2, "top-p must be in [0, 1] (0 or 1 keep every token), got 2.0"),
        ("top_p", -0.1, "top-p must be in [0, 1] (0 or 1 keep every token), got -0.1"),
        ("top_p", float("nan"), "top-p must be finite, got nan"),
        ("seed", -1, f"seed must be between 0 and {MAX_SEED}, got -1"),
        ("seed", MAX_SEED + 1, f"seed must be between 0 and {MAX_SEED}, got {MAX_SEED + 1}"),
        ("seed", None, "seed must be an integer, got None"),
        ("more_smooth", "maybe", "more_smooth must be true or false, got 'maybe'"),
        ("precision", "fp8", "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ],
)
def test_bad_values_are_refused_with_one_line(field, value, message):
    with pytest.raises(SettingsError) as err:
        SamplingSettings(**{field: value})
    assert str(err.value) == message and isinstance(err.value, UserError)


def test_replace_checks_and_none_keeps_the_value():
    s = SamplingSettings(cfg=3.0)
    assert s.replace(cfg=None, top_k="7") == SamplingSettings(cfg=3.0, top_k=7)
    with pytest.raises(SettingsError, match="top-k must be >= 0"):
        s.replace(top_k=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cfg = 2.0  # type: ignore[misc]


def test_counts_are_integers_in_range():
    assert count("3", "--per-class") == 3 and count(4.0, "number of images", 1, 16) == 4
    for value, message in [(0, "--per-class must be at least 1, got 0"), (2.5, "--per-class must be an integer, got 2.5"),
                            (math.inf, "--per-class must be an integer, got inf")]:  # fmt: skip
        with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
            count(value, "--per-class")
    with pytest.raises(SettingsError, match="number of images must be between 1 and 16, got 17"):
        count(17, "number of images", 1, 16)


@dataclasses.dataclass
class _WithSampling:
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)


def test_a_config_file_is_checked_by_the_same_rule(tmp_path):
    cfg = load_config(_WithSampling, overrides=["sampling.top_k=5", "sampling.precision=bf16"])
    assert cfg.sampling == SamplingSettings(top_k=5, precision="bf16")
    (tmp_path / "c.yaml").write_text("sampling:\n  top_p: 2.0\n")
    with pytest.raises(UserError, match=r"top-p must be in \[0, 1\]"):
        load_config(_WithSampling, tmp_path / "c.yaml")

"""var/settings.py: the one check of sampling settings shared by `var sample`, the web UI and config files,
and the one rule by which the sampling functions take them."""

import dataclasses
import math
import re

import pytest

from scaffold.config import load_config
from scaffold.errors import UserError
from var.settings import (
    MAX_SEED,
    MODEL_DEFAULTS,
    SamplingSettings,
    SettingsError,
    count,
    merge_settings,
    parse_changes,
)


def test_defaults_are_the_published_fid_setting_exact_and_a_model_s_are_auto():
    s = SamplingSettings()
    assert s.as_dict() == dict(
        cfg=1.5, top_k=900, top_p=0.96, more_smooth=False, seed=0, precision="fp32",
        guidance_until=1.0, prune_from=0.75, prune_keep=1.0, stop_after=1.0,
    )  # fmt: skip
    assert s.replace(precision="auto") == MODEL_DEFAULTS  # the one difference, written once
    with pytest.raises(TypeError):
        SamplingSettings(1.5, 900)  # by name only: SamplingSettings(cfg=1.5, top_k=900)


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
    assert err.value.field == field
    if value is None:  # in a request, None is a field not given (the model's value stays)
        return
    # a request's parse (the flags, the web page's widgets) is the object's check: the same words, the same field
    with pytest.raises(SettingsError) as parsed:
        parse_changes({field: value})
    assert str(parsed.value) == message and parsed.value.field == field


def test_a_request_s_changes_are_parsed_to_what_the_settings_store():
    raw = dict(cfg="2", top_k=" 5 ", top_p=1, seed=7.0, more_smooth="true", precision="bf16", prune_keep="0.5")
    changes = parse_changes({**raw, "stop_after": None})  # None: not given
    built = SamplingSettings(**raw)
    assert changes == {k: getattr(built, k) for k in raw}
    assert [type(v) for v in changes.values()] == [type(getattr(built, k)) for k in raw]
    # every field has its check (a field without one would be stored unparsed)
    assert parse_changes(MODEL_DEFAULTS.as_dict()) == MODEL_DEFAULTS.as_dict()
    # the speed's fast modes first, each given change over them: what preset then replace give
    base = SamplingSettings(cfg=4.0, precision="auto")
    assert base.replace(**parse_changes({"prune_keep": "0.9"}, " faster ")) == SamplingSettings.preset(
        "faster", base
    ).replace(prune_keep=0.9)
    assert parse_changes({"cfg": None}, "") == parse_changes({}, None) == {}
    with pytest.raises(SettingsError, match="speed must be one of exact, fast, faster, got 'warp'") as err:
        parse_changes({}, "warp")
    assert err.value.field == "speed"
    with pytest.raises(SettingsError, match="unknown setting 'topk'"):
        parse_changes({"topk": 5})


def test_replace_checks_and_none_keeps_the_value():
    s = SamplingSettings(cfg=3.0)
    assert s.replace(cfg=None, top_k="7") == SamplingSettings(cfg=3.0, top_k=7)
    with pytest.raises(SettingsError, match="top-k must be >= 0"):
        s.replace(top_k=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cfg = 2.0  # type: ignore[misc]
    with pytest.raises(
        SettingsError, match="unknown setting 'topk'; the settings are cfg, top_k, top_p, more_smooth, seed, precision"
    ) as err:
        s.replace(topk=5)
    assert err.value.field == "topk"


def test_merge_is_the_default_settings_with_the_changes():
    assert merge_settings(None, {}) == SamplingSettings()
    assert merge_settings(None, {"cfg": 2.0, "top_k": None}) == SamplingSettings(cfg=2.0)
    assert merge_settings(MODEL_DEFAULTS, {"top_p": "0.5"}) == SamplingSettings(top_p=0.5, precision="auto")
    with pytest.raises(TypeError, match="settings must be a SamplingSettings, got float: give settings by name"):
        merge_settings(1.5, {})  # type: ignore[arg-type]


def test_as_dict_round_trips_and_from_dict_names_the_field():
    s = SamplingSettings(cfg=3.0, top_k=7, top_p=0.5, more_smooth=True, seed=9, precision="bf16")
    assert SamplingSettings.from_dict(s.as_dict()) == s
    assert SamplingSettings.from_dict({"cfg": 2}, defaults=MODEL_DEFAULTS) == MODEL_DEFAULTS.replace(cfg=2.0)
    for values, field, message in [
        ({"top_k": -1}, "top_k", "top-k must be >= 0"),
        ({"top_k": None}, "top_k", "sampling setting 'top_k' has no value (null)"),
        ({"guidance": 2.0}, "guidance", "unknown sampling setting 'guidance'; the settings are cfg, top_k"),
        ({"precision": "fp64"}, "precision", "precision must be one of auto, fp32, bf16, fp16, got 'fp64'"),
    ]:
        with pytest.raises(SettingsError, match=re.escape(message)) as err:
            SamplingSettings.from_dict(values)
        assert err.value.field == field
    with pytest.raises(SettingsError, match="must be a mapping of setting names to values, got 'fast'"):
        SamplingSettings.from_dict("fast")


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


def test_speed_flag_sets_the_fast_modes_and_each_mode_flag_changes_one():
    import argparse

    from var.settings import SPEEDS, add_sampling_arguments, given_settings

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser, "seed")
    base = SamplingSettings(cfg=4.0, precision="auto")
    unset = base.replace(**given_settings(parser.parse_args([])))
    assert unset == base  # no flag: the model's settings, fast modes included
    fast = base.replace(**given_settings(parser.parse_args(["--speed", "fast"])))
    assert fast == SamplingSettings.preset("fast", base) and fast.cfg == 4.0
    tuned = base.replace(**given_settings(parser.parse_args(["--speed", "faster", "--prune-keep", "0.9"])))
    assert tuned.prune_keep == 0.9 and tuned.guidance_until == SPEEDS["faster"]["guidance_until"]
    alone = base.replace(**given_settings(parser.parse_args(["--stop-after", "0.5"])))
    assert alone == base.replace(stop_after=0.5)
    with pytest.raises(SettingsError, match=r"prune_keep \(the fraction of tokens kept\) must be in \(0, 1\]"):
        given_settings(parser.parse_args(["--prune-keep", "0"]))  # the flags alone: before a model is at hand
    with pytest.raises(SystemExit):
        parser.parse_args(["--speed", "fastest"])

"""benchmarks/fast_sampling.py's yardsticks: the transformer's work of a mode, the Pareto front, the mode list."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fast_sampling import MODES, modes, pareto, work

from kernels import SCHEDULES
from var.settings import SPEEDS, SamplingSettings

PATCH_NUMS_256 = SCHEDULES["256"]


def test_work_counts_rows_times_tokens_against_exact():
    assert work(SamplingSettings(), PATCH_NUMS_256) == 1.0
    # guidance to 0.6 at 256 px: the scales from 8x8 on (589 of 680 tokens) run one row instead of two
    assert work(SamplingSettings(guidance_until=0.6), PATCH_NUMS_256) == pytest.approx((2 * 91 + 589) / 1360)
    # pruning from 0.8 keeps round(0.5 * 169) = 84 and 128 tokens of the 13x13 and 16x16 scales, both rows
    pruned = SamplingSettings(prune_from=0.8, prune_keep=0.5)
    assert work(pruned, PATCH_NUMS_256) == pytest.approx(2 * (255 + 84 + 128) / 1360)
    assert work(SamplingSettings(stop_after=0.9), PATCH_NUMS_256) == pytest.approx(2 * 424 / 1360)
    assert work(SamplingSettings(cfg=0.0, guidance_until=0.0), PATCH_NUMS_256) == 1.0  # nothing to drop


def test_pareto_front_keeps_the_rows_nothing_beats_on_both():
    rows = [
        dict(mode="a", seconds=10.0, frechet=20.0),
        dict(mode="b", seconds=8.0, frechet=21.0),
        dict(mode="c", seconds=9.0, frechet=22.0),  # b is faster and better
        dict(mode="d", seconds=5.0, frechet=30.0),
    ]
    assert [r["mode"] for r in pareto(rows)] == ["d", "b", "a"]
    work = [dict(r, work=w) for r, w in zip(rows, (0.5, 0.9, 0.4, 0.6))]
    assert [r["mode"] for r in pareto(work, "work")] == ["c", "a"]


def test_modes_list_the_named_speeds_first_and_refuse_unknown_names():
    names = list(modes())
    assert names[: len(SPEEDS)] == [f"speed {n}" for n in SPEEDS] and set(MODES) <= set(names)
    assert list(modes("guide 0.6,speed exact")) == ["guide 0.6", "speed exact"]
    with pytest.raises(SystemExit, match="unknown modes"):
        modes("guide 0.7")
    for fields in MODES.values():
        SamplingSettings(**fields)  # every mode is a valid setting

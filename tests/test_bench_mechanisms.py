"""The mechanism comparison (benchmarks/mechanisms.py) and the cost-against-resolution benchmark
(benchmarks/scaling.py): their arithmetic, and each script end to end at a tiny size."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mechanisms  # noqa: E402
import report  # noqa: E402
import scaling  # noqa: E402

from var import hybrid_attention  # noqa: E402


# ------------------------------------------------------------------------------------- the hybrid
def test_hybrid_attention_is_the_d16_preset_and_stays_mixed_when_shallow():
    from scaffold import load_config
    from var.train import VARTrainConfig

    d16 = load_config(VARTrainConfig, ROOT / "configs" / "var" / "d16_hybrid.yaml")
    assert hybrid_attention(16) == d16.model.block_attention()
    assert hybrid_attention(2) == ["lka", "full"]  # the digits model: local early, global late
    assert hybrid_attention(4) == ["lka", "neighborhood", "full", "full"]
    for depth in range(2, 40):
        blocks = hybrid_attention(depth)
        assert len(blocks) == depth and blocks[0] == "lka" and blocks[-1] == "full"
        assert blocks.count("full") >= depth / 2
    with pytest.raises(ValueError, match="depth >= 2"):
        hybrid_attention(1)


def test_digits_neighborhood_window_is_smaller_than_the_largest_scale():
    """On the digits a window of max(patch_nums) or more would make neighborhood attention full attention."""
    from pathlib import Path as P

    from var.pipeline import attention_options_used, transformer_config

    cfg = transformer_config(P("tok"), P("cache"), P("run"), "neighborhood", steps=1)
    assert attention_options_used(cfg.model)["neighborhood"]["kernel_size"] < max(cfg.model.patch_nums)
    assert attention_options_used(transformer_config(P("t"), P("c"), P("r"), "full", steps=1).model) == {}
    assert transformer_config(P("t"), P("c"), P("r"), "hybrid", steps=1).model.attention == ["lka", "full"]


# ------------------------------------------------------------------------------------ arithmetic
def test_fit_power_law_recovers_exponent_and_prefactor():
    xs = [680, 2240, 10521]
    for k, c in ((2.0, 1e-7), (1.0, 3e-4), (1.37, 0.5)):
        fit_k, fit_c = scaling.fit_power_law(xs, [c * x**k for x in xs])
        assert fit_k == pytest.approx(k, rel=1e-9) and fit_c == pytest.approx(c, rel=1e-9)
    # through noisy points: the least-squares line of log y on log x (numpy's polyfit as the reference)
    xs = [10, 20, 40, 80, 160]
    noisy = [2 * x**1.5 * f for x, f in zip(xs, [1.08, 0.95, 1.02, 0.9, 1.04])]
    k, c = scaling.fit_power_law(xs, noisy)
    ref_k, ref_logc = np.polyfit(np.log(xs), np.log(noisy), 1)
    assert k == pytest.approx(ref_k, rel=1e-12) and math.log(c) == pytest.approx(ref_logc, rel=1e-9)
    assert k == pytest.approx(1.5, abs=0.05) and k != pytest.approx(1.5, abs=1e-3)
    with pytest.raises(ValueError, match="two distinct"):
        scaling.fit_power_law([5, 5], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        scaling.fit_power_law([1, 2], [0, 1])


def test_fits_leave_out_skipped_configurations():
    rows = [
        dict(mechanism="full", resolution=256, L=100, step_s=1.0, peak_mib=10.0, sample_s=0.1),
        dict(mechanism="full", resolution=512, L=400, step_s=16.0, peak_mib=160.0, sample_s=0.4),
        dict(mechanism="full", resolution=1024, L=1600, skipped="longer than 300 s"),
        dict(mechanism="lka", resolution=256, L=100, step_s=1.0, peak_mib=10.0, sample_s=0.1),
        dict(mechanism="lka", resolution=512, L=400, step_s=4.0, peak_mib=40.0, sample_s=0.2),
        dict(mechanism="lka", resolution=1024, L=1600, step_s=16.0, peak_mib=160.0, sample_s=0.8),
        dict(mechanism="gspn", resolution=256, L=100, step_s=1.0, peak_mib=10.0, sample_s=0.1),
    ]
    full, lka, gspn = scaling.fits(rows)
    assert full["resolutions"] == "256,512" and full["step_s_exponent"] == pytest.approx(2.0)
    assert full["sample_s_exponent"] == pytest.approx(1.0)
    assert lka["step_s_exponent"] == pytest.approx(1.0) and lka["step_s_slope_last"] == pytest.approx(1.0)
    assert lka["sample_s_slope_last"] == pytest.approx(math.log(4) / math.log(4))
    assert "step_s_exponent" not in gspn  # one point: no fit


def test_equal_time_steps_and_loop_rate(tmp_path):
    assert mechanisms.equal_time_steps(1000, 2500.0, 10000.0) == 250  # 4x slower: a quarter of the steps
    assert mechanisms.equal_time_steps(1000, 11000.0, 10000.0) == 1100
    assert mechanisms.equal_time_steps(10, 1.0, 1e6) == 1
    log = tmp_path / "logs" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,train/device/items_per_sec,train/loss_mean\n49,,2.0\n99,100.0,1.9\n149,300.0,1.8\n")
    # equal step counts per interval: total tokens / total time = the harmonic mean
    assert mechanisms.loop_tokens_per_s(tmp_path) == pytest.approx(2 / (1 / 100 + 1 / 300))
    assert mechanisms.loop_tokens_per_s(tmp_path / "nothing") is None


def test_memorisation_figures():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 3, 4, 4, generator=g)
    heldout = (train[:10] + 0.1 * torch.randn(10, 3, 4, 4, generator=g)).clamp(0, 1)
    train_tokens = [torch.arange(50)[:, None], torch.arange(50)[:, None].repeat(1, 4)]
    ref = mechanisms.Reference(
        train.flatten(1),
        set(mechanisms.token_rows(train_tokens)),
        mechanisms.nearest_distance(heldout.flatten(1), train.flatten(1)),
        0.0,
    )
    copies = mechanisms.memorisation(train[:8], [t[:8] for t in train_tokens], ref)
    assert copies["nn_distance"] == 0 and copies["nn_ratio"] == 0 and copies["exact_copies"] == 1
    fresh_tokens = [t[:8] + 100 for t in train_tokens]
    like_heldout = mechanisms.memorisation(heldout, fresh_tokens, ref)
    assert like_heldout["nn_ratio"] == pytest.approx(1.0) and like_heldout["exact_copies"] == 0
    far = mechanisms.memorisation(1 - train[:8], fresh_tokens, ref)
    assert far["nn_ratio"] > 1


# ------------------------------------------------------------------------------------ end to end
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_mechanisms_script_end_to_end(tmp_path, capsys, one_thread):
    """Tokenizer, cache, two mechanisms at equal steps and at equal wall time, samples, grids, profile, tables."""
    out = tmp_path / "results"
    args = ["--steps", "3", "--mechanisms", "full,lka", "--samples-per-class", "2", "--grid-columns", "2"]
    args += ["--tokenizer-steps", "3", "--workdir", str(tmp_path / "work"), "--out", str(out), "--profile"]
    args += ["--equal-time-tolerance", "0"]
    base = mechanisms.main(args)
    data = json.loads(base.with_suffix(".json").read_text())
    rows = data["rows"]
    assert [(r["mechanism"], r["budget"]) for r in rows[:3]] == [("full", "steps"), ("lka", "steps"), ("full", "time")]
    assert rows[2]["same_as_equal_steps"] and rows[2]["steps"] == 3
    # lka at equal time: the steps its loop rate fits in full's time; a run of its own unless that is 3 again
    expected = mechanisms.equal_time_steps(3, rows[1]["tokens_per_s"], rows[0]["tokens_per_s"])
    assert len(rows) == 4 and (rows[3]["mechanism"], rows[3]["budget"], rows[3]["steps"]) == ("lka", "time", expected)
    assert rows[3].get("same_as_equal_steps", False) == (expected == 3)
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["min_class_accuracy"] <= r["accuracy"] + 1e-12
        assert r["frechet"] >= 0 and r["heldout_loss"] > 0 and r["nn_ratio"] >= 0 and 0 <= r["exact_copies"] <= 1
        assert r["train_s"] > 0 and r["tokens_per_s"] > 0 and r["sample_images_per_s"] > 0 and r["images"] == 20
    assert rows[1]["attention"] == ["lka", "lka"]
    for mech in ("full", "lka"):
        assert _png_size(out / "mechanisms" / f"{mech}.png") == (2 * 18, 10 * 18)  # 2 columns, 10 digits
    prof = data["meta"]["profile"]
    assert set(prof) == {"full", "lka"} and prof["lka"]["ops"][0]["self_ms_per_step"] > 0
    assert sum(o["share"] for o in prof["full"]["ops"]) <= 1 + 1e-9
    md = base.with_suffix(".md").read_text()
    assert "## Equal steps (3 steps)" in md and "## Equal wall time" in md and "### lka:" in md
    assert "![lka](mechanisms/lka.png)" in md
    block = report.kind_block("mechanisms", out)
    assert "| full | full |" in block and "(3 steps)" in block
    assert "![lka](mechanisms/lka.png)" in block  # relative to the page, which lives in the results folder
    # a second run reuses every finished run
    capsys.readouterr()
    mechanisms.main([a for a in args if a != "--profile"])
    again = capsys.readouterr().out
    ran = [r for r in rows if not r.get("same_as_equal_steps")]
    assert "training (blocks" not in again and again.count("): reusing") == len(ran)


def test_mechanisms_script_on_emoji_end_to_end(tmp_path, one_thread):
    """`--data emoji` on a package-shaped fixture: the demo's judge, the three judged figures with their
    references in every row, colour grids under mechanisms-emoji/, its own results kind and block of benchmarks/results/README.md."""
    from helpers import emoji_package_files

    package = tmp_path / "package"
    for name, data in emoji_package_files(per_category=3).items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes(data)
    out = tmp_path / "results"
    args = ["--data", "emoji", "--data-root", str(package), "--steps", "2", "--mechanisms", "full,neighborhood"]
    args += ["--samples-per-class", "2", "--grid-columns", "2", "--tokenizer-steps", "2", "--judge-steps", "2"]
    args += ["--no-equal-time", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    base = mechanisms.main(args)
    assert base.name.startswith("mechanisms_emoji-")
    data = json.loads(base.with_suffix(".json").read_text())
    assert data["meta"]["data"] == "emoji" and "scales up to 8x8" in data["meta"]["model"]
    assert [r["mechanism"] for r in data["rows"]] == ["full", "neighborhood"]
    for r in data["rows"]:
        assert 0 <= r["accuracy"] <= 1 and 0 < r["real_accuracy"] <= 1 and r["accuracy_ratio"] >= 0
        assert r["frechet_floor"] >= 0 and r["frechet_ceiling"] >= 0 and math.isfinite(r["frechet_position"])
        assert r["nn_ratio"] >= 0 and 0 <= r["exact_copies"] <= 1
        assert r["images"] >= 9 * 2  # at least --samples-per-class of each of the nine categories
    w, h = _png_size(out / "mechanisms-emoji" / "neighborhood.png")
    assert w > 2 * 64 and h > 9 * 64  # 2 columns, 9 categories of 64 px tiles with gutters
    assert "real emoji" in base.with_suffix(".md").read_text()
    block = report.kind_block("mechanisms_emoji", out)
    assert "| neighborhood |" in block and report.newest("mechanisms", out) is None  # the digits' kind apart
    assert "![neighborhood](mechanisms-emoji/neighborhood.png)" in block


def test_scaling_script_end_to_end(tmp_path, monkeypatch):
    """Two tiny scale lists, two mechanisms, each in its own process; a timeout becomes a skipped row."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers: see the one_thread fixture
    out = tmp_path / "results"
    base = scaling.main(["--resolutions", "32,64", "--mechanisms", "full,gspn", "--repeats", "1", "--out", str(out)])
    data = json.loads(base.with_suffix(".json").read_text())
    assert [(r["mechanism"], r["resolution"]) for r in data["rows"]] == [
        ("full", 32),
        ("gspn", 32),
        ("full", 64),
        ("gspn", 64),
    ]
    for r in data["rows"]:
        assert not r.get("skipped"), r
        assert r["step_s"] > 0 and r["sample_s"] > 0 and r["peak_mib"] > 0 and r["resting_mib"] > 0
    assert {f["mechanism"] for f in data["meta"]["fits"]} == {"full", "gspn"}
    assert all(math.isfinite(f["step_s_exponent"]) for f in data["meta"]["fits"])
    md = base.with_suffix(".md").read_text()
    assert "## Exponents against L" in md and "| full | 32,64 |" in md
    assert "| gspn |" in report.kind_block("scaling", out)
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot is optional (the `bench` extra); say so instead of passing silently
        assert not scaling.plot_path(base).exists()
    else:
        assert _png_size(scaling.plot_path(base))[0] > 300
        assert f"]({scaling.plot_path(base).name})" in report.kind_block("scaling", out)  # linked from the page
    slow = scaling.run_config(scaling.parse_args(["--resolutions", "64", "--timeout", "1"]), "full", 64)
    assert slow["skipped"] == "longer than 1 s" and slow["L"] == 30


def test_scaling_model_config_is_the_published_lists():
    from kernels import SCHEDULES

    assert all(scaling.PATCH_NUMS[int(px)] == pns for px, pns in SCHEDULES.items())
    assert scaling.tokens(1024) == 10521 and scaling.PATCH_NUMS[1024][-1] == 64  # 1024 px / f16


def test_summary_over_seeds_where_one_equal_time_run_is_the_equal_step_run():
    """Seed 0's equal-time run of a mechanism may stand in for its equal-step run (a flagged copy) while seed 1
    trains its own: the summary averages what both rows measured."""

    def row(seed, budget, acc, **extra):
        numbers = dict(steps=1000, accuracy=acc, min_class_accuracy=0.9, frechet=40.0, heldout_loss=4.0)
        numbers.update(nn_ratio=1.0, exact_copies=0.0, train_s=60.0, tokens_per_s=3e4, sample_images_per_s=900.0)
        return dict(mechanism="lka", attention=["lka", "lka"], seed=seed, budget=budget, **numbers, **extra)

    rows = [row(0, "steps", 0.98), row(1, "steps", 1.0)]
    rows += [row(0, "time", 0.98, same_as_equal_steps=True), row(1, "time", 0.96)]
    (timed,) = mechanisms.summary_rows(rows, "time")
    assert timed["judged"] == "97.0% ± 1.4%" and timed["steps"].startswith("1000")

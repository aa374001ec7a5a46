import json

import pytest

from app.cli import main


def test_demo_wiring_and_reuse(tmp_path, capsys):
    """Every stage runs (with tiny step counts), writes its part of the work folder, and a second run
    reuses the finished stages instead of retraining."""
    work = tmp_path / "demo"
    args = [
        "demo",
        "--no-app",
        "--workdir",
        str(work),
        "--tokenizer-steps",
        "10",
        "--var-steps",
        "10",
        "--samples-per-class",
        "2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for stage in ("1/4 training the tokenizer", "2/4 tokenizing", "3/4 training the transformer", "4/4 sampling"):
        assert stage in out
    assert (work / "tokenizer" / "config.yaml").is_file() and (work / "model" / "config.yaml").is_file()
    assert (work / "samples.png").is_file()
    summary = json.loads((work / "summary.json").read_text())
    # at least 10 per class: the grid shows 10
    assert summary["samples"]["images"] == 10 * 10 and 0 <= summary["samples"]["accuracy"] <= 1
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "tokenizer: reusing" in again and "transformer: reusing" in again and "training the" not in again


def test_demo_bad_mechanism(tmp_path, capsys):
    assert main(["demo", "--no-app", "--workdir", str(tmp_path), "--mechanism", "flash"]) == 2
    assert "unknown mechanism 'flash'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_reaches_the_accuracy_target(tmp_path):
    """The real presets: samples must be the requested digit at least 90% of the time in every class."""
    assert main(["demo", "--no-app", "--workdir", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["tokenizer"]["psnr_db"] >= 22 and summary["tokenizer"]["codebook_used"] >= 0.8
    assert all(10 * right >= 9 * n for right, n in summary["samples"]["per_class_counts"].values()), summary["samples"]

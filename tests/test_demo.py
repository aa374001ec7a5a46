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


def test_emoji_demo_wiring_on_a_tiny_package(tmp_path, capsys, monkeypatch):
    """`--data emoji` runs every stage on a package-shaped fixture (fetched from a file:// URL pinned in its
    place into $VAR_CACHE, as the real one is at first use), prints the three judged figures with their
    references, keeps its own work folder apart from the digits'."""
    from helpers import emoji_package_files, write_tarball

    from tokenizer import emoji as E

    files = emoji_package_files(per_category=3)
    served = tmp_path / "served.tgz"
    monkeypatch.setattr(E, "INTEGRITY", write_tarball(served, files))
    monkeypatch.setattr(E, "TARBALL_URL", served.as_uri())
    monkeypatch.setenv("VAR_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "emoji"
    args = ["demo", "--data", "emoji", "--no-app", "--workdir", str(work)]
    quick = ["--tokenizer-steps", "2", "--var-steps", "2", "--judge-steps", "2", "--samples-per-class", "2"]
    assert main(args + quick) == 0
    out = capsys.readouterr().out
    for stage in (
        "1/5 training the tokenizer",
        "2/5 tokenizing",
        "3/5 training the transformer",
        "4/5 training the judge",
    ):
        assert stage in out
    assert "category accuracy" in out and "copy check" in out
    summary = json.loads((work / "summary.json").read_text())
    s = summary["samples"]
    assert summary["data"] == "emoji" and s["images"] == 9 * 10  # the grid's 10 a category
    # a category whose one held-out emoji has no skin tones has one image: no covariance, so it is left out
    # of the distance and named, not a crash
    package = tmp_path / "cache" / f"emoji-{E.VERSION}"
    assert (package / "MANIFEST.json").is_file()  # the demo fetched and unpacked the "published" tarball
    val = E.EmojiDataset("val", image_size=64, root=package)
    single = {val.class_names[c] for c in range(9) if (val.labels == c).sum() < 2}
    assert 0 < len(single) < 9 and set(s["frechet_left_out"]) == single and s["frechet"] >= 0
    assert "left out, under 2 held-out emoji" in out and set(s["goals"]) == {"accuracy", "frechet", "copying"}
    assert (work / "samples.png").is_file() and (work / "model" / "config.yaml").is_file()
    assert main(["demo", "--no-app", "--workdir", str(work)]) == 2  # the digits demo refuses the emoji folder
    assert "holds the emoji demo" in capsys.readouterr().err


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


@pytest.mark.slow
@pytest.mark.network
def test_emoji_demo_meets_its_three_goals(tmp_path):
    """The real emoji package (downloaded into $VAR_CACHE, or the cache a user already has) and the real
    presets: about 25 minutes on a 2-core CPU. Judged accuracy at least 0.8x the judge's on held-out real emoji,
    Frechet distance nearer its floor than its ceiling, no copying."""
    assert main(["demo", "--data", "emoji", "--no-app", "--workdir", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    s = summary["samples"]
    assert summary["tokenizer"]["psnr_db"] >= 18 and summary["tokenizer"]["codebook_used"] >= 0.8
    assert s["accuracy_ratio"] >= 0.8 and s["real_accuracy"] >= 0.5, s
    assert s["frechet"] - s["frechet_floor"] < 0.5 * (s["frechet_ceiling"] - s["frechet_floor"]), s
    assert s["nn_ratio"] >= 0.9 and s["goals"] == {"accuracy": True, "frechet": True, "copying": True}, s

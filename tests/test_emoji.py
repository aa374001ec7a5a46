"""The emoji dataset (tokenizer/emoji.py) on a tiny package-shaped fixture the test writes: listing, the split
by emoji, compositing, and the download / integrity / cache / offline paths. Nothing here uses the network:
the "download" reads a file:// URL."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from helpers import emoji_package_files as package_files
from helpers import write_files as write_package
from helpers import write_tarball

from tokenizer import DataConfig, DatasetError, build_datasets
from tokenizer import emoji as E


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Only file:// URLs open here: a test that reached for the registry fails instead of downloading."""
    import urllib.request

    real = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        if not str(getattr(url, "full_url", url)).startswith("file:"):
            raise AssertionError(f"a test tried to download {url}")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


@pytest.fixture
def package(tmp_path) -> Path:
    return write_package(tmp_path / "package", package_files())


@pytest.fixture
def published(tmp_path, monkeypatch) -> Path:
    """A tarball at a file:// URL, pinned as the package's integrity; VAR_CACHE in the test's folder."""
    src = tmp_path / "served" / "emoji-datasource-google-16.0.0.tgz"
    src.parent.mkdir()
    monkeypatch.setattr(E, "INTEGRITY", write_tarball(src, package_files()))
    monkeypatch.setattr(E, "TARBALL_URL", src.as_uri())
    monkeypatch.setenv("VAR_CACHE", str(tmp_path / "cache"))
    return src


# ---------------------------------------------------------------------------------- listing, split
def test_listing_takes_variants_and_skips_components(package):
    images = E.list_emoji(package)
    assert len(images) == 9 * 4 + 9 * 2  # every emoji, two variants of one per category, no Component
    assert all(im.label < 9 for im in images)
    assert {im.file for im in images if im.emoji == "1F001"} == {"1f001.png", "1f001-1f3fb.png", "1f001-1f3ff.png"}


def test_split_is_by_emoji_per_category_and_deterministic(package):
    images = E.list_emoji(package)
    train, val = E.split_emoji(images, 0.25, seed=0)
    assert len(train) + len(val) == len(images)
    assert not {im.emoji for im in train} & {im.emoji for im in val}  # variants never straddle the split
    assert {im.label for im in val} == set(range(9))  # every category holds one emoji out
    assert E.split_emoji(list(reversed(images)), 0.25, seed=0)[1] == [im for im in reversed(images) if im in val]
    assert {im.emoji for im in E.split_emoji(images, 0.25, seed=1)[1]} != {im.emoji for im in val}


def test_dataset_composites_on_white_and_keeps_splits_apart(package):
    kw = dict(image_size=8, val_fraction=0.25, root=package)
    train, val = E.EmojiDataset("train", **kw), E.EmojiDataset("val", **kw)
    assert train.images.shape[1:] == (3, 8, 8) and train.class_names == list(E.CATEGORIES)
    assert train.images[:, :, 0, 0].eq(1.0).all()  # transparent corners composite to white
    assert not set(train.emoji) & set(val.emoji)
    assert len(train) + len(val) == 54


def test_build_datasets_reads_emoji_and_refuses_flips(package):
    train, val = build_datasets(DataConfig(name="emoji", root=str(package), image_size=8, val_fraction=0.25))
    assert len(train) > len(val) > 0
    with pytest.raises(DatasetError, match="hflip"):
        build_datasets(DataConfig(name="emoji", root=str(package), image_size=8, hflip=True))


def test_root_may_be_the_package_or_its_parent_and_a_wrong_one_is_named(package, tmp_path):
    assert E.emoji_root(package) == package
    assert E.emoji_root(package.parent) == package
    with pytest.raises(E.EmojiError, match=r"data.root=.*not an unpacked"):
        E.emoji_root(tmp_path / "nowhere")


def test_bad_emoji_json_is_one_line_naming_the_file(package):
    (package / "emoji.json").write_text('[{"category": "Flags"}]')
    with pytest.raises(E.EmojiError, match=r"emoji.json: emoji 0 lacks"):
        E.list_emoji(package)


# ------------------------------------------------------------------------------- download, cache
def test_download_checks_unpacks_and_is_reused(published, tmp_path, monkeypatch):
    root = E.ensure_emoji()
    assert root == tmp_path / "cache" / "emoji-16.0.0"
    assert (root / "LICENSE").read_bytes() == b"MIT" and (root / "MANIFEST.json").is_file()
    assert not (tmp_path / "cache" / "emoji-datasource-google-16.0.0.tgz").exists()  # the tarball is not kept
    assert len(E.EmojiDataset("all", image_size=8)) == 54
    monkeypatch.setattr(E, "TARBALL_URL", (tmp_path / "gone.tgz").as_uri())
    assert E.ensure_emoji() == root  # reused: nothing is fetched again


def test_offline_is_one_line_saying_how_to_place_the_tarball(published, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "TARBALL_URL", (tmp_path / "gone.tgz").as_uri())
    with pytest.raises(E.EmojiError, match=r"cannot download the emoji package .*place it as .*data.root="):
        E.ensure_emoji()


def test_failed_integrity_check_is_refused_and_set_aside(published, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "INTEGRITY", "sha512-" + base64.b64encode(b"x" * 64).decode())
    with pytest.raises(E.EmojiError, match="failed its integrity check"):
        E.ensure_emoji()
    assert not (tmp_path / "cache" / "emoji-16.0.0").exists()
    assert (tmp_path / "cache" / "emoji-datasource-google-16.0.0.tgz.bad").is_file()


def test_a_hand_placed_tarball_is_used_without_download(published, tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / published.name).write_bytes(published.read_bytes())
    monkeypatch.setattr(E, "TARBALL_URL", (tmp_path / "gone.tgz").as_uri())
    assert (E.ensure_emoji() / "emoji.json").is_file()


@pytest.mark.parametrize("damage", ["missing image", "truncated image", "no manifest"])
def test_a_partial_or_corrupt_cache_is_redone(published, damage):
    root = E.ensure_emoji()
    image = next((root / E.IMAGE_DIR).iterdir())
    if damage == "missing image":
        image.unlink()
    elif damage == "truncated image":
        image.write_bytes(image.read_bytes()[:10])
    else:
        (root / "MANIFEST.json").unlink()
    assert not E._complete(root)
    assert E.ensure_emoji() == root and E._complete(root)
    assert len(E.EmojiDataset("all", image_size=8)) == 54


def test_unpacking_writes_only_the_kept_files_under_names_it_builds(tmp_path, monkeypatch):
    src = tmp_path / "evil.tgz"
    extra = {"../outside.txt": b"x", "package/img/google/64/../../../escape.png": b"x", "package/sheet.png": b"x"}
    monkeypatch.setattr(E, "INTEGRITY", write_tarball(src, package_files(1), extra))
    monkeypatch.setattr(E, "TARBALL_URL", src.as_uri())
    root = E.ensure_emoji(tmp_path / "cache")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "cache" / "escape.png").exists()
    assert sorted(p.name for p in root.iterdir()) == ["LICENSE", "MANIFEST.json", "emoji.json", "img", "package.json"]

"""scaffold/checkpoint.py: hub downloads are pinned to a revision and checked against a SHA-256 in the code."""

import hashlib
import re

import pytest

from scaffold import CheckpointError, sha256_of
from scaffold.checkpoint import HUB_REPO, HUB_REVISION, HUB_SHA256, hub_download
from var.export import PUBLISHED


def test_every_published_file_is_pinned():
    assert re.fullmatch(r"[0-9a-f]{40}", HUB_REVISION)  # a commit, not a branch that can move
    assert set(HUB_SHA256) == {"vae_ch160v4096z32.pth", *(f"var_{name}.pth" for name in PUBLISHED)}
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in HUB_SHA256.values())


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """huggingface_hub's download, answering with a file of this test; records the calls."""
    calls = []

    def download(repo_id, filename, revision):
        calls.append((repo_id, filename, revision))
        return str(tmp_path / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    return calls


def test_a_download_with_the_pinned_hash_is_used(fake_hub, tmp_path, monkeypatch):
    (tmp_path / "var_d16.pth").write_bytes(b"published bytes")
    monkeypatch.setitem(HUB_SHA256, "var_d16.pth", hashlib.sha256(b"published bytes").hexdigest())
    assert hub_download("var_d16.pth") == str(tmp_path / "var_d16.pth")
    assert fake_hub == [(HUB_REPO, "var_d16.pth", HUB_REVISION)]


def test_a_download_with_another_hash_is_refused_before_it_is_read(fake_hub, tmp_path):
    (tmp_path / "var_d16.pth").write_bytes(b"a pickle that runs code")  # not the published file
    with pytest.raises(CheckpointError) as err:
        hub_download("var_d16.pth")
    msg = str(err.value)
    assert str(tmp_path / "var_d16.pth") in msg and HUB_SHA256["var_d16.pth"] in msg
    assert hashlib.sha256(b"a pickle that runs code").hexdigest() in msg and "download it again" in msg


def test_a_file_without_a_pinned_hash_is_never_downloaded(fake_hub):
    with pytest.raises(CheckpointError, match=r"'var_d36.pth' of 'FoundationVision/var' has no SHA-256 pinned"):
        hub_download("var_d36.pth")
    with pytest.raises(CheckpointError, match="no SHA-256 pinned"):
        hub_download("var_d16.pth", repo_id="someone/else")
    assert fake_hub == []


def test_sha256_of_follows_a_changed_file(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"one")
    assert sha256_of(f) == hashlib.sha256(b"one").hexdigest()
    f.write_bytes(b"three")  # another size: not the cached answer
    assert sha256_of(f) == hashlib.sha256(b"three").hexdigest()

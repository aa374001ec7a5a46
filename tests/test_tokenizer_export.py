"""The exported tokenizer folder: what an ordinary write would leave, readable by other users."""

import os
import stat

import pytest
from helpers import full_disk

from scaffold import DiskFullError
from tokenizer import export_tokenizer, load_tokenizer


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_exported_files_have_the_umask_permissions(tmp_path, tiny_vae, umask):
    old = os.umask(umask)
    try:
        out = export_tokenizer(tiny_vae, tmp_path / "tok")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"model.safetensors": expected, "config.yaml": expected}  # and no temporary left
    assert load_tokenizer(out).config == tiny_vae.config


def test_disk_full_during_the_export_is_one_line_and_keeps_the_old_files(tmp_path, tiny_vae, monkeypatch):
    out = export_tokenizer(tiny_vae, tmp_path / "tok")
    before = (out / "model.safetensors").read_bytes()
    full_disk(monkeypatch)  # safetensors writing straight into the file raised its own SafetensorError
    with pytest.raises(DiskFullError, match=r"disk full while writing .*tok/model.safetensors \(.* free\)"):
        export_tokenizer(tiny_vae, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]

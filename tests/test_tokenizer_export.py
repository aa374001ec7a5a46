"""The exported tokenizer folder: what an ordinary write would leave, readable by other users (issue 16 item 11)."""

import os
import stat

import pytest

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

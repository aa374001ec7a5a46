"""The token cache: round trip, resumable writing, views, and its error messages."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_locked_out, lock_held_elsewhere
from PIL import Image

from app.cli import main
from scaffold import DiskFullError, load_config
from scaffold.io import temporary_path
from tokenizer import DigitsDataset, export_tokenizer
from var.token_cache import TokenCache, TokenCacheError, TokenizeConfig, token_dtype, tokenize, tokenizer_identity

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tok_dir(tmp_path, tiny_vae):
    return export_tokenizer(tiny_vae, tmp_path / "tok")


def config(tok_dir, out, *overrides) -> TokenizeConfig:
    base = [f"tokenizer={tok_dir}", "data.image_size=32", f"out_dir={out}", "device=cpu", "batch_size=8", "chunk=8"]
    return load_config(TokenizeConfig, None, [*base, *overrides])


def test_cache_round_trips(tmp_path, tok_dir, tiny_vae):
    out = tokenize(config(tok_dir, tmp_path / "cache", "max_images=20"))
    cache = TokenCache(out)
    h = cache.header
    assert (h.vocab_size, h.patch_nums, h.num_images, h.views, h.dtype) == (64, (1, 2, 3, 4), 20, 1, "int16")
    assert h.class_names == [str(d) for d in range(10)] and h.tokenizer_id == tokenizer_identity(tiny_vae)
    assert cache.tokens.dtype == np.int16 and cache.tokens.shape == (20, 30) and len(cache) == 20
    digits = DigitsDataset("train", image_size=32)
    idx_BL = torch.cat(tiny_vae.img_to_idx(digits.images[:20]), dim=1)
    tokens = torch.stack([cache[i][0] for i in range(20)])
    assert tokens.dtype == torch.long and torch.equal(tokens, idx_BL)
    assert [cache[i][1] for i in range(20)] == digits.labels[:20].tolist()
    assert [t.shape[1] for t in cache.split_scales(tokens)] == [1, 4, 9, 16]
    assert token_dtype(4096) == np.int16 and token_dtype(40000) == np.int32


def _image_folder(root, classes=("cat", "dog"), per_class=3):
    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_interrupted_tokenize_continues_to_the_identical_cache(tmp_path, tok_dir):
    root = _image_folder(tmp_path / "imgs")
    common = ["data.name=imagefolder", f"data.root={root}", "data.hflip=true", "views=3", "chunk=2", "batch_size=4"]
    whole = tokenize(config(tok_dir, tmp_path / "whole", *common))

    part = tmp_path / "part"
    tokenize(config(tok_dir, part, *common), stop_after_chunks=1)
    with pytest.raises(TokenCacheError, match="interrupted `var tokenize`: rerun it"):
        TokenCache(part)
    dead = subprocess.Popen(["true"])
    dead.wait()
    temporary_path(part / ".partial" / "progress.json", pid=dead.pid).write_text('{"images_')  # a kill mid-write
    tokenize(config(tok_dir, part, *common))  # continues at the recorded image
    assert sorted(p.name for p in part.iterdir()) == [".lock", "header.yaml", "labels.npy", "tokens.npy"]
    for name in ("tokens.npy", "labels.npy", "header.yaml"):
        assert (whole / name).read_bytes() == (part / name).read_bytes(), name
    cache = TokenCache(part)
    assert cache.header.views == 3 and len(cache) == cache.header.num_images * 3
    assert not (part / ".partial").exists()
    views = cache.tokens[: cache.header.num_images * 3].reshape(-1, 3, 30)
    assert any(not np.array_equal(v[0], v[1]) for v in views)  # random crops differ from the centre crop
    assert tokenize(config(tok_dir, part, *common)) == part  # a complete cache is left alone


def test_bad_inputs(tmp_path, tok_dir, capsys):
    with pytest.raises(TokenCacheError, match="token cache not found: .*var tokenize"):
        TokenCache(tmp_path / "nope")
    done = tokenize(config(tok_dir, tmp_path / "c", "max_images=4"))
    with pytest.raises(TokenCacheError, match="holds another token cache"):
        tokenize(config(tok_dir, done, "max_images=5"))
    assert main(["tokenize", f"tokenizer={tok_dir}", "data.image_size=16", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "data.image_size=16 but the tokenizer takes 32 px" in capsys.readouterr().err
    assert main(["tokenize", "views=2", f"out_dir={tmp_path / 'y'}"]) == 2
    assert "views > 1 needs data.name=imagefolder" in capsys.readouterr().err


def test_changed_image_files_make_the_cache_stale(tmp_path, tok_dir):
    """The header records a digest of the files read: an added, removed or rewritten image is not served from
    the old cache, and the message says why."""
    root = _image_folder(tmp_path / "imgs")
    common = ["data.name=imagefolder", f"data.root={root}", "data.val_fraction=0.2"]
    out = tokenize(config(tok_dir, tmp_path / "c", *common))
    digest = TokenCache(out).header.data_files
    assert digest.startswith("5:")  # 6 images, 1 held out
    assert tokenize(config(tok_dir, out, *common)) == out  # unchanged files: reused
    for change in (
        lambda: [Image.new("RGB", (40, 48)).save(root / "cat" / f"{9 + i}.png") for i in range(3)],  # added
        lambda: [(root / "dog" / f"{i}.png").unlink() for i in range(2)],  # removed
        lambda: [p.write_bytes(p.read_bytes() + b"\0") for p in root.rglob("*.png")],  # rewritten
    ):  # each changes the training split's files (a change in held-out images only would not)
        change()
        with pytest.raises(
            TokenCacheError, match=r"holds another token cache \(.*the image files changed since it was made"
        ):
            tokenize(config(tok_dir, out, *common))
        assert TokenCache(out).header.data_files == digest  # refused, not overwritten


def test_a_full_disk_is_one_line_before_any_image_is_encoded(tmp_path, tok_dir, monkeypatch):
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*tokens\.npy \(.* free\)"):
        tokenize(config(tok_dir, tmp_path / "c", "max_images=4"))
    monkeypatch.undo()
    out = tokenize(config(tok_dir, tmp_path / "c", "max_images=4"))  # space freed: the rerun makes it whole
    assert TokenCache(out).header.num_images == 4


def test_a_kill_while_moving_the_finished_files_is_finished_by_the_next_run(tmp_path, tok_dir):
    whole = tokenize(config(tok_dir, tmp_path / "whole", "max_images=8"))
    out = tokenize(config(tok_dir, tmp_path / "c", "max_images=8"))
    partial = out / ".partial"
    partial.mkdir()
    for name in ("labels.npy", "header.yaml"):  # tokens.npy had moved out, the rest not yet
        (out / name).rename(partial / name)
    with pytest.raises(TokenCacheError, match="interrupted `var tokenize`"):
        TokenCache(out)
    assert tokenize(config(tok_dir, out, "max_images=8")) == out
    assert sorted(p.name for p in out.iterdir()) == [".lock", "header.yaml", "labels.npy", "tokens.npy"]
    for name in ("tokens.npy", "labels.npy", "header.yaml"):
        assert (whole / name).read_bytes() == (out / name).read_bytes(), name


def test_a_second_tokenize_into_a_locked_folder_exits_2_naming_the_holder(tmp_path, tok_dir, capsys):
    """`var tokenize` holds out_dir; the lock goes with its process on kill -9."""
    out = tmp_path / "c"
    args = ["tokenize", f"tokenizer={tok_dir}", "data.image_size=32", f"out_dir={out}", "device=cpu", "max_images=4"]
    with lock_held_elsewhere(out) as holder:
        assert main(args) == 2
        assert_locked_out(capsys.readouterr().err, out, holder)
        assert not (out / ".partial").exists()
        holder.kill9()
        assert main(args) == 0
    assert TokenCache(out).header.num_images == 4


def test_shipped_configs_load():
    folder = Path(__file__).resolve().parents[1] / "configs" / "tokens"
    shipped = sorted(folder.glob("*.yaml"))
    assert {p.stem for p in shipped} == {"digits", "emoji", "imagenet256"}
    for path in shipped:
        cfg = load_config(TokenizeConfig, path)
        assert cfg.tokenizer and cfg.out_dir and cfg.data.image_size in (16, 64, 256)

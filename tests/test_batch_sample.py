import shutil

import numpy as np
import pytest
from conftest import TINY_VAE
from helpers import tiny_var
from PIL import Image

import var.batch as batch
from app.cli import main
from tokenizer import MultiScaleVQVAE, VQVAEConfig, export_tokenizer
from var.batch import SampleError, SampleSettings, generate_folder, image_seed, npz_path, parse_classes, write_npz
from var.export import SamplingDefaults, export_model, load_model

CLASSES, PER_CLASS = [0, 3, 7], 3
SETTINGS = SampleSettings(model="tiny", seed=0, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False)


@pytest.fixture
def model_dir(tmp_path, tiny_vae):
    # top_k 0 / top_p 0: the tiny model's 64-token vocabulary is sampled in full, so images differ per seed
    return export_model(tiny_var(num_classes=10), tiny_vae, tmp_path / "m", sampling=SamplingDefaults(1.5, 0, 0.0))


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


@pytest.mark.parametrize(
    "spec, expected",
    [("all", list(range(10))), ("0-9", list(range(10))), ("1,5,7", [1, 5, 7]), ("0-3,8", [0, 1, 2, 3, 8]),
     (" 7 , 2-3 ,3", [2, 3, 7])],
)  # fmt: skip
def test_parse_classes(spec, expected):
    assert parse_classes(spec, 10) == expected


@pytest.mark.parametrize(
    "spec, message",
    [("10", r"must be in 0\.\.9"), ("0-10", r"must be in 0\.\.9"), ("-1", "not a class id"), ("5-2", "empty"),
     ("a", "not a class id"), ("1,,2", "not a class id")],
)  # fmt: skip
def test_parse_classes_rejects(spec, message):
    with pytest.raises(SampleError, match=message):
        parse_classes(spec, 10)


def test_image_seed_is_stable_and_distinct():
    assert image_seed(0, 1, 2) == image_seed(0, 1, 2) < 2**63
    seeds = {image_seed(s, c, i) for s in range(3) for c in range(10) for i in range(10)}
    assert len(seeds) == 300


def test_same_files_whatever_the_batch_size_and_npz_format(tmp_path, model_dir):
    loaded = load_model(model_dir)
    a, b = tmp_path / "a", tmp_path / "b"
    assert generate_folder(loaded, a, CLASSES, PER_CLASS, SETTINGS, batch_size=1, progress=False) == 9
    assert generate_folder(loaded, b, CLASSES, PER_CLASS, SETTINGS, batch_size=4, progress=False) == 9
    files = _files(a)
    assert sorted(files) == [f"{c}/{i}.png" for c in CLASSES for i in range(PER_CLASS)]
    assert files == _files(b)
    assert len(set(files.values())) == 9  # different seeds make different images

    path = write_npz(a, CLASSES, PER_CLASS)
    assert path == npz_path(a) == tmp_path / "a.npz"
    with np.load(path) as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
        imgs, labels = z["arr_0"], z["arr_1"]
    assert imgs.dtype == np.uint8 and imgs.shape == (9, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [c for c in CLASSES for _ in range(PER_CLASS)]
    for k, (c, i) in enumerate((c, i) for c in CLASSES for i in range(PER_CLASS)):
        assert np.array_equal(imgs[k], np.asarray(Image.open(a / str(c) / f"{i}.png")))
    assert not list(tmp_path.glob(".*tmp*"))


def test_interrupted_run_resumes_to_the_same_files(tmp_path, model_dir, monkeypatch):
    loaded = load_model(model_dir)
    full, cut = tmp_path / "full", tmp_path / "cut"
    generate_folder(loaded, full, CLASSES, PER_CLASS, SETTINGS, batch_size=2, progress=False)

    real_write, written = batch._write_png, []

    def killed_after_four(path, img):
        if len(written) == 4:
            raise KeyboardInterrupt
        real_write(path, img)
        written.append(path)

    monkeypatch.setattr(batch, "_write_png", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        generate_folder(loaded, cut, CLASSES, PER_CLASS, SETTINGS, batch_size=3, progress=False)
    monkeypatch.undo()
    assert len(_files(cut)) == 4 and not npz_path(cut).exists()
    with pytest.raises(SampleError, match="5 images are missing"):
        write_npz(cut, CLASSES, PER_CLASS)
    assert not npz_path(cut).exists()

    (cut / "0" / "1.png").unlink()  # and a lost file in the middle
    assert generate_folder(loaded, cut, CLASSES, PER_CLASS, SETTINGS, batch_size=1, progress=False) == 6
    assert _files(cut) == _files(full)


def test_ranks_share_the_work(tmp_path, model_dir):
    loaded = load_model(model_dir)
    single, shared = tmp_path / "single", tmp_path / "shared"
    generate_folder(loaded, single, CLASSES, PER_CLASS, SETTINGS, batch_size=4, progress=False)
    counts = [
        generate_folder(loaded, shared, CLASSES, PER_CLASS, SETTINGS, 2, rank=r, world_size=2, progress=False)
        for r in range(2)
    ]
    assert counts == [5, 4] and _files(shared) == _files(single)


def test_more_smooth_is_batch_independent_too(tmp_path, model_dir):
    loaded = load_model(model_dir)
    smooth = SampleSettings(**{**SETTINGS.__dict__, "more_smooth": True})
    generate_folder(loaded, tmp_path / "a", [1, 2], 2, smooth, batch_size=1, progress=False)
    generate_folder(loaded, tmp_path / "b", [1, 2], 2, smooth, batch_size=4, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    generate_folder(loaded, tmp_path / "c", [1, 2], 2, SETTINGS, progress=False)
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_other_settings_are_refused(tmp_path, model_dir):
    loaded = load_model(model_dir)
    generate_folder(loaded, tmp_path / "a", [0], 1, SETTINGS, progress=False)
    other = SampleSettings(**{**SETTINGS.__dict__, "seed": 1})
    with pytest.raises(SampleError, match=r"other settings: seed=0 \(now 1\)"):
        generate_folder(loaded, tmp_path / "a", [0], 1, other, progress=False)


def test_cli_writes_folder_and_npz(tmp_path, model_dir, capsys):
    out = tmp_path / "s"
    argv = ["sample", "--model", str(model_dir), "--classes", "1,2", "--per-class", "2", "--out", str(out)]
    assert main([*argv, "--batch-size", "3", "--no-progress"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    with np.load(npz_path(out)) as z:
        assert z["arr_1"].tolist() == [1, 1, 2, 2]
    assert (out / "sampling.json").is_file()
    assert '"cfg": 1.5' in (out / "sampling.json").read_text()  # the model's default


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "0-10"], "class ids must be in 0..9"),
        (["--per-class", "0"], "--per-class must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--out", "{tmp}/file.txt/s"], "cannot write to the output folder"),
        (["--model", "{tmp}/empty"], "has no config.yaml"),
        (["--model", "{tmp}/nowhere"], "model not found"),
        (["--model", "{tmp}/mismatch"], "but its tokenizer has patch_nums=(1, 2, 3, 4), vocab_size=32"),
    ],
    ids=["class-range", "per-class-0", "batch-0", "unwritable", "no-config", "no-model", "tokenizer-mismatch"],
)
def test_cli_bad_input(tmp_path, model_dir, capsys, args, message):
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "empty").mkdir()
    if "{tmp}/mismatch" in args:  # the transformer expects 64 tokens, its tokenizer has 32
        shutil.copytree(model_dir, tmp_path / "mismatch")
        export_tokenizer(
            MultiScaleVQVAE(VQVAEConfig(**{**TINY_VAE, "vocab_size": 32})), tmp_path / "mismatch" / "tokenizer"
        )
    base = {"--model": str(model_dir), "--classes": "0-2", "--per-class": "1", "--out": str(tmp_path / "s")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value.format(tmp=tmp_path)
    assert main(["sample", *[x for kv in base.items() for x in kv], "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("var sample: error:")
    assert not list(tmp_path.glob("*.npz"))

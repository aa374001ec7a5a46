import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_VAE
from helpers import assert_locked_out, lock_held_elsewhere, tiny_var
from PIL import Image

import var.batch_sample as batch
from app.cli import main
from scaffold.errors import UserError
from scaffold.io import temporary_path
from scaffold.precision import resolve_precision
from tokenizer import MultiScaleVQVAE, VQVAEConfig, export_tokenizer
from var.batch_sample import (
    SampleError,
    generate_folder,
    image_seed,
    npz_path,
    parse_classes,
    to_uint8,
    write_npz,
)
from var.export import export_model, load_model
from var.sample import sample
from var.settings import MODEL_DEFAULTS, SPEEDS, SamplingSettings

CLASSES, PER_CLASS = [0, 3, 7], 3
SETTINGS = SamplingSettings(cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, seed=0)
# top_k 0 / top_p 0: the tiny model's 64-token vocabulary is sampled in full, so images differ per seed
MODEL_SETTINGS = MODEL_DEFAULTS.replace(top_k=0, top_p=0.0)


@pytest.fixture
def model_dir(tmp_path, tiny_vae):
    return export_model(tiny_var(num_classes=10), tiny_vae, tmp_path / "m", sampling=MODEL_SETTINGS)


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
        generate_folder(
            loaded, shared, CLASSES, PER_CLASS, SETTINGS, batch_size=2, rank=r, world_size=2, progress=False
        )
        for r in range(2)
    ]
    assert counts == [5, 4] and _files(shared) == _files(single)


def test_more_smooth_is_batch_independent_too(tmp_path, model_dir):
    loaded = load_model(model_dir)
    smooth = SETTINGS.replace(more_smooth=True)
    generate_folder(loaded, tmp_path / "a", [1, 2], 2, smooth, batch_size=1, progress=False)
    generate_folder(loaded, tmp_path / "b", [1, 2], 2, smooth, batch_size=4, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    generate_folder(loaded, tmp_path / "c", [1, 2], 2, SETTINGS, progress=False)
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


@pytest.mark.parametrize(
    "settings",
    [SETTINGS, SETTINGS.replace(precision="bf16"), SETTINGS.replace(more_smooth=True)],
    ids=["fp32", "bf16", "more_smooth"],
)
def test_each_image_is_the_sampler_s_image_of_it_alone(tmp_path, model_dir, settings):
    """Batch sampling decodes with the sampler's decode: each PNG is, byte for byte, what var.sample.sample
    gives for that image alone with its seed, in every precision (a copy of decode had drifted from it: the
    tokenizer's residual convolutions ran under the bf16 autocast, which the sampler keeps in fp32)."""
    loaded = load_model(model_dir)
    out = tmp_path / "s"
    generate_folder(loaded, out, CLASSES, 2, settings, batch_size=4, progress=False)
    for c in CLASSES:
        for i in range(2):
            alone = sample(loaded.model, loaded.vae, [c], settings, seed=[image_seed(settings.seed, c, i)])
            assert np.array_equal(np.asarray(Image.open(batch.image_path(out, c, i))), to_uint8(alone)[0]), (c, i)


def test_other_settings_are_refused(tmp_path, model_dir):
    loaded = load_model(model_dir)
    generate_folder(loaded, tmp_path / "a", [0], 1, SETTINGS, progress=False)
    with pytest.raises(SampleError, match=r"other settings: seed=0 \(now 1\); rerun with the same ones, or to"):
        generate_folder(loaded, tmp_path / "a", [0], 1, SETTINGS.replace(seed=1), progress=False)
    with pytest.raises(SampleError, match=r"precision='fp32' \(now 'bf16'\)"):
        generate_folder(loaded, tmp_path / "a", [0], 1, SETTINGS.replace(precision="bf16"), progress=False)


def test_a_folder_from_before_the_fast_modes_resumes_and_a_fast_mode_is_a_change(tmp_path, model_dir):
    """A record written before the fast-mode settings existed lacks them: it was exact sampling, and resumes as such."""
    loaded = load_model(model_dir)
    out = tmp_path / "a"
    generate_folder(loaded, out, [0], 1, SETTINGS, progress=False)
    record = json.loads((out / "sampling.json").read_text())
    for name in SamplingSettings.EXACT_MODES:
        del record["settings"][name]
    (out / "sampling.json").write_text(json.dumps(record))
    assert generate_folder(loaded, out, [0], 2, SETTINGS, progress=False) == 1
    with pytest.raises(SampleError, match=r"guidance_until=1.0 \(now 0.5\)"):
        generate_folder(loaded, out, [0], 3, SETTINGS.replace(guidance_until=0.5), progress=False)


def test_cli_speed_is_recorded_and_samples_fast(tmp_path, model_dir, capsys):
    out = tmp_path / "s"
    argv = ["sample", "--model", str(model_dir), "--classes", "1", "--per-class", "2", "--out", str(out)]
    assert main([*argv, "--speed", "faster", "--no-progress"]) == 0
    recorded = json.loads((out / "sampling.json").read_text())["settings"]
    assert {k: recorded[k] for k in SPEEDS["faster"]} == SPEEDS["faster"]


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


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _sample(tmp_path, model, out, *extra):
    argv = ["sample", "--model", str(model), "--classes", "1", "--per-class", "2", "--out", str(out), "--no-progress"]
    return main([*argv, *extra])


def test_a_changed_model_between_two_runs_is_refused(tmp_path, model_dir, tiny_vae, capsys):
    out = tmp_path / "s"
    assert _sample(tmp_path, model_dir, out) == 0
    record = json.loads((out / "sampling.json").read_text())
    assert set(record) == {"format", "model_sha256", "tokenizer_sha256", "settings", "model"}
    # the model's default precision "auto", recorded as what it resolved to on this machine
    resolved = resolve_precision("auto", "cpu")
    assert record["settings"] == MODEL_SETTINGS.replace(precision=resolved).as_dict()
    before = _files(out)
    # another model re-exported into the same folder: same path, other weights
    export_model(tiny_var(seed=5, num_classes=10), tiny_vae, model_dir, sampling=MODEL_SETTINGS)
    capsys.readouterr()
    assert _sample(tmp_path, model_dir, out, "--per-class", "3") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("var sample: error:") and "\n" not in err
    assert "other settings: the model's weights (SHA-256" in err and "tokenizer" not in err.split("; rerun")[0]
    assert f"to start afresh, use another --out or delete {out} and s.npz" in err
    assert _files(out) == before and not (out / "1" / "2.png").exists()


def test_auto_precision_resolving_otherwise_on_resume_is_refused(tmp_path, model_dir, capsys, monkeypatch):
    """A folder sampled where "auto" meant fp32, resumed where it means bf16 (a CPU with AVX512-BF16)."""
    out = tmp_path / "s"
    from scaffold import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert _sample(tmp_path, model_dir, out) == 0
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    capsys.readouterr()
    assert _sample(tmp_path, model_dir, out, "--per-class", "3") == 2
    assert "precision='fp32' (now 'bf16')" in capsys.readouterr().err
    assert _sample(tmp_path, model_dir, out, "--per-class", "3", "--precision", "fp32") == 0


def test_a_folder_from_before_the_record_is_refused(tmp_path, model_dir, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sampling.json").write_text(json.dumps({"model": str(model_dir), "seed": 0, "cfg": 1.5}))
    assert _sample(tmp_path, model_dir, out) == 2
    assert "was made by an older version of `var sample`" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cfg", "nan"], "guidance (cfg) must be finite, got 'nan'"),
        (["--cfg", "inf"], "guidance (cfg) must be finite, got 'inf'"),
        (["--top-k", "-5"], "top-k must be >= 0 (0 keeps every token), got -5"),
        (["--top-k", "2.5"], "top-k must be an integer, got '2.5'"),
        (["--top-p", "2"], "top-p must be in [0, 1] (0 or 1 keep every token), got 2.0"),
        (["--seed", "-1"], "seed must be between 0 and 4294967295, got -1"),
        (["--precision", "fp8"], "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
        (["--per-class", "2.5"], "--per-class must be an integer, got '2.5'"),
        (["--classes", "0-10"], "class ids must be in 0..9"),
        (["--out", ""], "--out is empty"),
        (["--cfg", "1e39"], "guidance (cfg) must be at most 100, got 1e+39"),  # finite, but inf in the logits
        (["--out", "."], "--out . is the working folder or one above it"),
        (["--out", ".."], "--out .. is the working folder or one above it"),
        (["--model", "nowhere", "--top-k", "-1"], "top-k must be >= 0"),  # parsed before a model is loaded
    ],
    ids=["cfg-nan", "cfg-inf", "top-k-negative", "top-k-fraction", "top-p-2", "seed", "precision", "per-class",
         "classes", "out-empty", "cfg-absurd", "out-here", "out-above", "before-the-model"],
)  # fmt: skip
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, model_dir, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `--out ''` must not write into the current folder
    before = sorted(tmp_path.iterdir())
    assert _sample(tmp_path, model_dir, tmp_path / "s", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"var sample: error: {message}" or (message in err and "\n" not in err)
    assert sorted(tmp_path.iterdir()) == before  # no folder, no record: a rerun starts clean
    assert _sample(tmp_path, model_dir, tmp_path / "s") == 0  # the same folder, good settings


def test_the_web_ui_and_the_command_refuse_with_the_same_words(tmp_path, model_dir, capsys):
    from app.logic import parse_request

    loaded = load_model(model_dir)
    for flag, key, value in [("--top-k", "top_k", "-5"), ("--top-p", "top_p", "2"), ("--cfg", "cfg", "nan")]:
        with pytest.raises(UserError) as web:
            parse_request(loaded, 1, 1, **{key: value})
        assert _sample(tmp_path, model_dir, tmp_path / "s", flag, value) == 2
        assert capsys.readouterr().err.strip() == f"var sample: error: {web.value}"


def test_disk_full_while_sampling_is_one_line_and_leaves_no_temporary(tmp_path, model_dir, capsys, monkeypatch):
    import scaffold.io

    real_commit, commits = scaffold.io._commit, []

    def full_after_two(tmp, path):  # the third file finds the disk full, as a write would
        if len(commits) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        commits.append(path)
        real_commit(tmp, path)

    monkeypatch.setattr(scaffold.io, "_commit", full_after_two)
    out = tmp_path / "s"
    assert _sample(tmp_path, model_dir, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"var sample: error: disk full while writing {out / '1' / '1.png'} (")
    assert "free" in err and "\n" not in err
    assert [p.name for p in commits] == ["sampling.json", "0.png"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    monkeypatch.undo()
    assert _sample(tmp_path, model_dir, out) == 0  # the rerun finishes the folder


def test_temporaries_of_a_killed_run_are_removed_on_the_next(tmp_path, model_dir):
    out = tmp_path / "s"
    assert _sample(tmp_path, model_dir, out) == 0
    pid = _dead_pid()
    left = [temporary_path(out / "1" / "1.png", pid=pid), temporary_path(tmp_path / "s.npz", pid=pid)]
    for p in left:
        p.write_bytes(b"partial")
    live = temporary_path(out / "1" / "0.png")  # a live process's temporary is not touched
    live.write_bytes(b"writing")
    assert _sample(tmp_path, model_dir, out) == 0
    assert not any(p.exists() for p in left) and live.exists()


def test_a_second_sample_into_a_locked_folder_exits_2_naming_the_holder(tmp_path, model_dir, capsys):
    """Two `var sample` into one --out mixed their images into one npz."""
    out = tmp_path / "s"
    with lock_held_elsewhere(out) as holder:
        assert _sample(tmp_path, model_dir, out, "--seed", "1") == 2
        assert_locked_out(capsys.readouterr().err, out, holder)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no record, no image
        assert not npz_path(out).exists()
        holder.kill9()
        assert _sample(tmp_path, model_dir, out, "--seed", "1") == 0
    assert json.loads((out / "sampling.json").read_text())["settings"]["seed"] == 1


def test_write_npz_holds_the_images_once(tmp_path):
    """A list of images and their stack held every image twice."""
    import tracemalloc

    out = tmp_path / "s"
    classes, per_class = [0, 1], 60
    img = np.full((256, 256, 3), 7, np.uint8)
    for c in classes:
        for i in range(per_class):
            batch.image_path(out, c, i).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(batch.image_path(out, c, i))
    size = img.nbytes * len(classes) * per_class  # 23.6 MB; np.savez writes a zip member in 16 MiB chunks
    tracemalloc.start()
    try:
        write_npz(out, classes, per_class)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.85 * size, peak / size  # the images once, plus one chunk being written (was ~2.7x)
    with np.load(npz_path(out)) as z:
        assert z["arr_0"].shape == (120, 256, 256, 3) and (z["arr_0"] == 7).all()
        assert z["arr_1"].tolist() == [0] * 60 + [1] * 60


def test_a_folder_of_an_older_record_format_is_not_resumed(tmp_path, model_dir, capsys):
    out = tmp_path / "s"
    assert _sample(tmp_path, model_dir, out) == 0
    record = json.loads((out / "sampling.json").read_text())
    assert record["format"] == batch.RECORD_FORMAT
    del record["format"]  # as `var sample` wrote it before images were decoded by var.sample.decode
    (out / "sampling.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert _sample(tmp_path, model_dir, out, "--per-class", "3") == 2
    err = capsys.readouterr().err
    assert "made by an older version of `var sample` (record format 1, now 2" in err and "delete" in err

"""`var edit`: the Edit tab from the command line (app/edit_command.py)."""

import numpy as np
import pytest
import torch
from conftest import TINY_VAE
from helpers import assert_locked_out, lock_held_elsewhere, tiny_var
from PIL import Image

from app.cli import main
from app.edit_command import lock_file, mask_array, parse_class
from app.logic import InputError, center_square, square_mask
from tokenizer import MultiScaleVQVAE, VQVAEConfig
from var.edit import edit
from var.export import export_model, load_model

NAMES = [f"digit {i}" for i in range(10)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(VQVAEConfig(**TINY_VAE)).eval()
    return export_model(tiny_var(num_classes=10), vae, tmp_path_factory.mktemp("m") / "model", class_names=NAMES)


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)  # not square: cropped
    return path


def _edit(model_dir, image, out, *extra):
    return main(["edit", "--model", str(model_dir), "--image", str(image), "--out", str(out), *extra])


def test_box_edit_is_the_edit_function_on_the_cropped_image_and_mask(model_dir, image_file, tmp_path):
    out = tmp_path / "out.png"
    assert _edit(model_dir, image_file, out, "--box", "8,0,40,24", "--class", "digit 3", "--seed", "7") == 0
    got = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float32) / 255).permute(2, 0, 1)

    loaded = load_model(model_dir)
    image = Image.open(image_file).convert("RGB")
    mask = np.zeros((48, 64), dtype=np.float32)
    mask[0:24, 8:40] = 1
    x, m = center_square(image, 32), square_mask(mask, 32)
    want = edit(loaded.model, loaded.vae, x, m, 3, loaded.sampling, seed=[7])[0]
    assert torch.allclose(got, want, atol=1 / 255 + 1e-6)  # a PNG holds 8 bits


def test_mask_image_and_box_are_the_same_edit(model_dir, image_file, tmp_path):
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert _edit(model_dir, image_file, a, "--mask", str(tmp_path / "mask.png")) == 0
    assert _edit(model_dir, image_file, b, "--box", "20,10,50,30") == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "0,0,65,10"], "--box 0,0,65,10 is not a non-empty box inside the 64x48 image"),
        (["--box", "5,5,5,9"], "is not a non-empty box"),
        (["--box", "a,b"], "--box must be X0,Y0,X1,Y1"),
        (["--mask", "MISSING"], "mask not found: MISSING"),
        (["--mask", "SMALL"], "is 16x16 but the image is 64x48"),
        (["--mask", "BLACK"], "is black everywhere"),
        (["--box", "0,0,8,8", "--class", "cat"], "--class 'cat' is neither none, a class id nor a class name"),
        (["--box", "0,0,8,8", "--class", "10"], "class 10 is out of range"),
        (["--box", "0,0,8,8", "--cfg", "nan"], "guidance (cfg) must be finite"),
    ],
    ids=[
        "box-outside",
        "box-empty",
        "box-syntax",
        "mask-missing",
        "mask-size",
        "mask-black",
        "class-name",
        "class-range",
        "cfg-nan",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(model_dir, image_file, tmp_path, capsys, extra, message):
    Image.new("L", (16, 16), 255).save(tmp_path / "small.png")
    Image.new("L", (64, 48), 0).save(tmp_path / "black.png")
    names = {
        "MISSING": str(tmp_path / "missing.png"),
        "SMALL": str(tmp_path / "small.png"),
        "BLACK": str(tmp_path / "black.png"),
    }
    extra = [names.get(a, a) for a in extra]
    message = message.replace("MISSING", names["MISSING"])
    assert _edit(model_dir, image_file, tmp_path / "out.png", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("var edit: error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "out.png").exists()


def test_missing_image_and_non_png_output(model_dir, tmp_path, capsys):
    assert _edit(model_dir, tmp_path / "none.png", tmp_path / "o.png", "--box", "0,0,4,4") == 2
    assert f"image not found: {tmp_path / 'none.png'}" in capsys.readouterr().err
    (tmp_path / "x.png").write_bytes(b"not an image")
    assert _edit(model_dir, tmp_path / "x.png", tmp_path / "o.png", "--box", "0,0,4,4") == 2
    assert "cannot read image" in capsys.readouterr().err
    assert _edit(model_dir, tmp_path / "x.png", tmp_path / "o.jpg", "--box", "0,0,4,4") == 2
    assert "--out must name a .png file" in capsys.readouterr().err


def test_the_sampling_flags_are_parsed_before_the_model_is_loaded(image_file, tmp_path, capsys):
    """A bad flag is refused at once, not after loading a model (a minute for a published one)."""
    assert _edit(tmp_path / "nowhere", image_file, tmp_path / "o.png", "--box", "0,0,4,4", "--top-k", "-1") == 2
    err = capsys.readouterr().err.strip()
    assert err == "var edit: error: top-k must be >= 0 (0 keeps every token), got -1"


def test_parse_class_accepts_none_ids_and_names():
    assert parse_class("none", NAMES) == 10
    assert parse_class("3", NAMES) == 3
    assert parse_class("Digit 7", NAMES) == 7
    with pytest.raises(InputError):
        parse_class("-1", NAMES)


def test_mask_array_box_covers_exactly_the_box():
    m = mask_array(None, "1,2,4,3", 5, 4)
    assert m.shape == (4, 5) and m.sum() == 3 and m[2, 1:4].min() == 1


def test_a_second_edit_to_a_locked_output_exits_2_naming_the_holder(model_dir, image_file, tmp_path, capsys):
    """`var edit` holds its --out while it computes and writes it."""
    out = tmp_path / "out.png"
    with lock_held_elsewhere(out, lock_file(out)) as holder:
        assert _edit(model_dir, image_file, out, "--box", "8,0,40,24") == 2
        assert_locked_out(capsys.readouterr().err, out, holder)
        assert not out.exists()
        holder.kill9()
        assert _edit(model_dir, image_file, out, "--box", "8,0,40,24") == 0
    assert Image.open(out).size == (32, 32)

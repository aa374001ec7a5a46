"""The web UI (app/logic.py, app/web.py, `var app`): the functions, then the page served headless."""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_var
from PIL import Image

from app.cli import main
from app.logic import (
    MAX_IMAGES,
    InputError,
    center_square,
    class_choices,
    edit_image,
    generate_images,
    generate_progressive,
    mask_from_editor,
    parse_label,
    parse_request,
    request_settings,
    to_pil,
)
from scaffold.errors import UserError
from var.edit import keep_masks
from var.export import export_model, load_model
from var.sample import sample
from var.settings import MODEL_DEFAULTS, SamplingSettings

# gradio's queue calls a pandas API that pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

NAMES = [f"digit {i}" for i in range(10)]
GOOD = dict(label=3, num_images=2, seed=0, cfg=1.0, top_k=10, top_p=0.9)


def _images(m, **request):
    """The images of a request given as the page gives it (widget values), parsed as the page parses it."""
    return generate_images(m, *parse_request(m, **request))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny exported models (one per mechanism mix), loaded as `var app` loads them."""
    from conftest import TINY_VAE

    from tokenizer import MultiScaleVQVAE, VQVAEConfig

    torch.manual_seed(0)
    vae = MultiScaleVQVAE(VQVAEConfig(**TINY_VAE)).eval()
    root = tmp_path_factory.mktemp("models")
    full = export_model(tiny_var(num_classes=10), vae, root / "full", class_names=NAMES)
    mixed = export_model(tiny_var(seed=1, num_classes=10, attention=["lka", "full"]), vae, root / "mixed")
    return [load_model(full), load_model(mixed)]


# ----------------------------------------------------------------------------- plain functions


def test_generate_images_count_and_size(models):
    images = _images(models[0], **GOOD)
    assert len(images) == 2 and all(im.size == (32, 32) and im.mode == "RGB" for im in images)


def test_streaming_one_update_per_scale_last_is_final(models):
    m = models[0]
    steps = list(generate_progressive(m, *parse_request(m, **GOOD)))
    assert [si for si, _ in steps] == [0, 1, 2, 3]  # patch_nums (1, 2, 3, 4)
    assert all(len(images) == 2 for _, images in steps)
    final = _images(m, **GOOD)
    for a, b in zip(steps[-1][1], final):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # image i depends on its seed only (seed + i), not on how many were asked for
    one = _images(m, **{**GOOD, "num_images": 1, "seed": 1})
    np.testing.assert_array_equal(np.asarray(one[0]), np.asarray(final[1]))


def test_the_ui_samples_with_the_model_s_settings_auto_precision(models, monkeypatch):
    """The UI's defaults are the model's: precision "auto", here resolved to bf16 (a CPU with AVX512-BF16)."""
    m = models[0]
    assert m.sampling == MODEL_DEFAULTS
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    got = np.asarray(_images(m, label=3, seed=4)[0])
    bf16 = sample(m.model, m.vae, [3], MODEL_DEFAULTS.replace(precision="bf16"), seed=[4])
    fp32 = sample(m.model, m.vae, [3], seed=[4])
    for want, same in ((bf16, True), (fp32, False)):
        assert np.array_equal(got, np.asarray(to_pil(want)[0])) == same
    # a settings object is the same request as its fields given one by one, as the page gives them
    s = SamplingSettings(cfg=1.0, top_k=10, top_p=0.9, seed=4)
    by_object = generate_images(m, [3], s)[0]
    by_field = _images(m, label="3: digit 3", cfg="1", top_k="10", top_p=0.9, seed=4.0, precision="fp32")[0]
    np.testing.assert_array_equal(np.asarray(by_object), np.asarray(by_field))


def test_labels_and_choices():
    assert class_choices(["cat", "dog"]) == ["0: cat", "1: dog"]
    assert parse_label("1: dog", 2) == 1 and parse_label(1, 2) == 1 and parse_label(1.0, 2) == 1
    assert parse_label("2: (no class)", 2, allow_null=True) == 2
    for bad, message in [(2, "class 2 is out of range: this model has classes 0 to 1"), (-1, "out of range"),
                         (1.5, "must be an integer"), ("dog", "must be an integer"), ("", "pick a class")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse_label(bad, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_images=0), f"number of images must be between 1 and {MAX_IMAGES}, got 0"),
        (dict(num_images=MAX_IMAGES + 1), "number of images must be between 1 and 16"),
        (dict(top_p=-0.1), r"top-p must be in \[0, 1\]"),
        (dict(top_p=1.5), r"top-p must be in \[0, 1\]"),
        (dict(top_k=-1), "top-k must be >= 0"),
        (dict(cfg=-0.5), r"guidance \(cfg\) must be >= 0"),
        (dict(cfg=float("nan")), "must be finite"),
        (dict(seed=-1), "seed must be between 0 and"),
        (dict(cfg=1e39), r"guidance \(cfg\) must be at most 100, got 1e\+39"),
        (
            dict(num_images=4, seed=2**32 - 2),
            "seed must be at most 4294967292 for 4 images .image i uses seed . i., got",
        ),
        (dict(num_images=2.5), "number of images must be an integer, got 2.5"),
        (dict(top_k=2.5), "top-k must be an integer, got 2.5"),
        (dict(more_smooth="maybe"), "more_smooth must be true or false, got 'maybe'"),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(v),
)
def test_validation_messages(kwargs, message):
    args = {**dict(num_images=1, seed=0, cfg=1.5, top_k=900, top_p=0.96), **kwargs}
    with pytest.raises(UserError, match=message):
        request_settings(SamplingSettings(), **args)


def test_the_last_image_s_seed_is_a_seed_too():
    n, s = request_settings(SamplingSettings(), 4, seed=2**32 - 4)  # seeds up to MAX_SEED itself
    assert (n, s.seed + n - 1) == (4, 2**32 - 1)


def test_unset_settings_are_the_model_s_and_values_are_converted(models):
    n, s = request_settings(models[0].sampling, "2", seed="7", top_k=5.0)
    assert (n, s.seed, s.top_k, s.cfg, s.top_p) == (2, 7, 5, models[0].sampling.cfg, models[0].sampling.top_p)
    assert type(s.top_k) is int and type(s.cfg) is float


def test_center_square_any_size():
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 100, 100))  # the left third is cropped away
    x = center_square(wide, 32)
    assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(x[:, 16, 16], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(InputError, match="at most 8192 pixels per side"):
        center_square(Image.new("RGB", (9000, 10)), 32)


def test_mask_from_editor_crops_like_the_image():
    background = Image.new("RGBA", (200, 100), (0, 128, 0, 255))
    layer = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (50, 0, 100, 50))  # top-left quarter of the centred 100x100 square
    image, mask = mask_from_editor({"background": background, "layers": [layer], "composite": None}, 32)
    assert image is background and mask.shape == (32, 32)
    assert mask[:16, :16].min() == 1 and mask[16:].max() == 0 and mask[:, 16:].max() == 0
    with pytest.raises(InputError, match="upload an image first"):
        mask_from_editor({"background": None, "layers": []}, 32)
    with pytest.raises(InputError, match="paint the region to regenerate"):
        mask_from_editor({"background": background, "layers": []}, 32)


def test_edit_keeps_tokens_outside_the_mask(models):
    m = models[0]
    image = _images(m, label=1, num_images=1, seed=5, cfg=1.0, top_k=10, top_p=0.9)[0]
    x = center_square(image, 32)
    mask = torch.zeros(32, 32)
    mask[:16, :16] = 1  # regenerate the top-left quarter
    labels, s = parse_request(m, 7, allow_null=True, seed=0, cfg=1.0, top_k=10, top_p=0.9)
    out, idx = edit_image(m, x, mask, labels[0], s, return_tokens=True)
    assert out.size == (32, 32)
    truth = m.vae.img_to_idx(x[None] * 2 - 1)
    keeps = keep_masks(mask[None], m.model.patch_nums)
    for si, (got, want, keep) in enumerate(zip(idx, truth, keeps)):
        assert torch.equal(got[keep], want[keep]), f"scale {si}"
    assert not torch.equal(idx[-1], truth[-1])  # the masked quarter was resampled
    # a PIL image of another size goes through the same crop/resize, the null class is plain in-painting
    labels, s = parse_request(m, "10: (no class: plain in-painting)", allow_null=True)
    assert edit_image(m, Image.new("RGB", (64, 48)), mask, labels[0], s).size == (32, 32)
    with pytest.raises(InputError, match="class 11 is out of range"):
        parse_request(m, 11, allow_null=True)
    with pytest.raises(InputError, match="class 10 is out of range"):  # the null class is an edit's only
        parse_request(m, 10)


# ----------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models):
    from app.web import build_demo, launch

    demo = build_demo(models)
    url = launch(demo, host="127.0.0.1", port=_free_port(), block=False)
    assert url.startswith("http://127.0.0.1:")
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_api_generate_through_gradio_client(client, models):
    result = client.predict(**GOOD, api_name="/generate")
    assert len(result) == 2 and all(Image.open(r["image"]).size == (32, 32) for r in result)
    assert result[0]["caption"] == "3: digit 3 · seed 0"
    # the same images as the function gives (PNG is lossless)
    want = _images(models[0], **GOOD)
    np.testing.assert_array_equal(np.asarray(Image.open(result[1]["image"]).convert("RGB")), np.asarray(want[1]))
    cache = Path(os.environ["GRADIO_TEMP_DIR"])  # set by build_demo: the server's uploads and outputs
    assert any(cache.rglob("*.png"))
    if cache.name.startswith("var-app-"):
        assert cache.stat().st_mode & 0o777 == 0o700
    other = client.predict(**{**GOOD, "num_images": 1}, model=models[1].name, api_name="/generate")
    assert len(other) == 1 and other[0]["caption"] == "3: 3 · seed 0"
    fast = client.predict(**GOOD, speed="fast", api_name="/generate")
    labels, s = parse_request(models[0], **GOOD)
    want = generate_images(models[0], labels, SamplingSettings.preset("fast", s))
    np.testing.assert_array_equal(np.asarray(Image.open(fast[0]["image"]).convert("RGB")), np.asarray(want[0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(label=10), "class 10 is out of range: this model has classes 0 to 9"),
        (dict(num_images=0), "number of images must be between 1 and 16, got 0"),
        (dict(num_images=17), "number of images must be between 1 and 16, got 17"),
        (dict(top_p=1.5), "top-p must be in [0, 1]"),
        (dict(num_images=2.5), "number of images must be an integer, got 2.5"),
        (dict(top_k=-5), "top-k must be >= 0 (0 keeps every token), got -5"),
        (dict(model="/elsewhere"), "unknown model '/elsewhere'"),
        (dict(speed="warp"), "speed must be one of exact, fast, faster, got 'warp'"),
    ],
    ids=["label", "zero-images", "too-many-images", "top_p", "fraction-of-images", "top_k", "model", "speed"],
)
def test_api_errors_are_clean_messages(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(**{**GOOD, **kwargs}, api_name="/generate")
    assert message in str(err.value) and "Traceback" not in str(err.value)


def test_page_streams_every_scale(models):
    """The page's Generate button (not in the API): one (gallery, status) update per scale, then the final images."""
    from app.web import build_demo

    demo = build_demo(models)
    import gradio as gr  # after build_demo: it points Gradio's cache at a private folder first

    handler = next(f.fn for f in demo.fns.values() if f.name == "on_generate")
    updates = list(handler(models[0].name, "3: digit 3", 2, 0, 1.0, 10, 0.9, False, "exact"))
    assert [status for _, status in updates] == [
        "scale 1/4 (1x1 tokens)", "scale 2/4 (2x2 tokens)", "scale 3/4 (3x3 tokens)", "scale 4/4 (4x4 tokens) - done"
    ]  # fmt: skip
    final = _images(models[0], **GOOD)
    assert [caption for _, caption in updates[-1][0]] == ["3: digit 3 · seed 0", "3: digit 3 · seed 1"]
    for (got, _), want in zip(updates[-1][0], final):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(gr.Error, match="top-p must be in"):
        list(handler(models[0].name, "3: digit 3", 2, 0, 1.0, 10, 1.5, False, "exact"))
    # the speed choice: the named fast modes over the model's settings, as generate_images takes them
    fast = list(handler(models[0].name, "3: digit 3", 2, 0, 1.0, 10, 0.9, False, "faster"))[-1][0]
    labels, s = parse_request(models[0], **GOOD)
    want = generate_images(models[0], labels, SamplingSettings.preset("faster", s))
    for (got, _), w in zip(fast, want):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(w))
    with pytest.raises(gr.Error, match="speed must be one of exact, fast, faster, got 'fastest'"):
        list(handler(models[0].name, "3: digit 3", 2, 0, 1.0, 10, 0.9, False, "fastest"))


def test_each_request_is_parsed_once_and_its_settings_reach_the_sampler_as_built(models, monkeypatch):
    """The page's handlers parse the label once and build the settings once (the model's, the speed's fast
    modes and the fields over them); the sampler and the editor sample with that very object. A second parse
    downstream saw values already parsed, over another base, and could refuse or change what the first gave."""
    import app.logic
    import app.web
    from app.web import build_demo

    demo = build_demo(models)
    handler = {f.name: f.fn for f in demo.fns.values()}
    m, built, labels_parsed = models[0], [], []
    real_validate, real_parse_label = SamplingSettings.validate, app.logic.parse_label

    def validate(self):  # every SamplingSettings is validated once, as it is built
        built.append(self)
        real_validate(self)

    def parse_label(value, *args, **kwargs):
        labels_parsed.append(value)
        return real_parse_label(value, *args, **kwargs)

    monkeypatch.setattr(SamplingSettings, "validate", validate)
    for module in (app.logic, app.web):  # wherever the app holds the parser, a second call would go through it
        if hasattr(module, "parse_label"):
            monkeypatch.setattr(module, "parse_label", parse_label)
    background = Image.new("RGB", (40, 32), (0, 128, 0))
    layer = Image.new("RGBA", (40, 32), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (4, 0, 20, 16))
    editor = {"background": background, "layers": [layer], "composite": None}
    requests = [
        ("on_generate", (m.name, "3: digit 3", "2", "7", "1", "10", 0.9, False, "faster"), "3: digit 3"),
        ("api_generate", (3.0, 2, 7, 1.0, 10, 0.9, m.name, "faster"), 3.0),
        ("on_edit", (m.name, editor, "10: (no class: plain in-painting)", 7, 1, 10, 0.9, False, "faster"), None),
    ]
    want = SamplingSettings.preset("faster", m.sampling).replace(seed=7, cfg=1.0, top_k=10, top_p=0.9)
    for name, args, label in requests:
        built.clear(), labels_parsed.clear()
        result = handler[name](*args)
        if name == "on_generate":
            result = list(result)  # a generator: it runs as the page reads it
        assert built == [want], name  # one object built, nothing downstream built another
        assert labels_parsed == [label or args[2]], name


def test_page_lists_both_tabs_and_models(server, models):
    with urllib.request.urlopen(server.rstrip("/") + "/config", timeout=30) as r:
        config = json.load(r)
    labels = {c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"}
    assert {"Generate", "Edit"} <= labels
    text = json.dumps(config)
    assert "attention: lka, full" in text or "attention: full" in text  # the selected model's describe()
    assert "0: digit 0" in text


# ----------------------------------------------------------------------------- abuse: uploads, limits, logins


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG of a few hundred bytes whose header declares `width` x `height` pixels (its data is one row)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any image's pixels are decoded."""
    from PIL import ImageFile

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"decoded {self.size} pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_a_declared_huge_image_is_refused_from_its_header(tmp_path, no_decoding):
    from app.logic import check_declared_image

    bomb = _png_declaring(tmp_path / "bomb.png", 60000, 60000)
    assert bomb.stat().st_size < 200
    with pytest.raises(InputError, match="declares more pixels than this server decodes"):  # PIL's bomb limit
        check_declared_image(str(bomb))
    wide = _png_declaring(tmp_path / "wide.png", 9000, 10)  # under PIL's limit, over ours
    with pytest.raises(InputError, match="9000x10: at most 8192 pixels per side"):
        check_declared_image(wide.read_bytes())
    with pytest.raises(InputError, match="not an image this server reads"):
        check_declared_image(b"GIF89a but not really")


def test_the_editor_checks_before_decoding_and_decodes_one_layer(tmp_path, monkeypatch):
    from app.web import _gradio, checked_image_editor

    gr = _gradio()  # Gradio imported once its cache is a private folder
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    editor = checked_image_editor(type="pil", image_mode="RGBA")
    bomb = FileData(path=str(_png_declaring(tmp_path / "bomb.png", 20000, 100)))
    decoded = []
    monkeypatch.setattr(type(editor), "convert_and_format_image", lambda self, f, **kw: decoded.append(f) or f)
    with pytest.raises(gr.Error, match="20000x100: at most 8192 pixels per side"):
        editor.preprocess(EditorData(background=bomb, layers=[]))
    good = tmp_path / "good.png"
    Image.new("RGBA", (40, 30)).save(good)
    f = FileData(path=str(good))
    with pytest.raises(gr.Error, match="declares 5 layers: at most 4"):
        editor.preprocess(EditorData(background=f, layers=[f] * 5))
    with pytest.raises(gr.Error, match="20000x100"):  # a huge first layer is refused too
        editor.preprocess(EditorData(background=f, layers=[bomb]))
    assert decoded == []  # nothing was decoded by any refused request
    out = editor.preprocess(EditorData(background=f, layers=[f, bomb, bomb], composite=bomb))
    assert decoded == [f, f] and out == {"background": f, "layers": [f], "composite": None}  # the rest unread


def test_the_editor_bounds_the_layers_sent_ahead_and_the_edits_waiting(tmp_path):
    """Gradio's own blob endpoint grows a list to any layer index it is sent: one request with index 10**9
    would take gigabytes before any handler runs."""
    from app.web import MAX_PENDING_EDITS, _gradio, checked_image_editor

    gr = _gradio()
    from gradio.components.image_editor import AcceptBlobs, EditorData

    editor = checked_image_editor(type="pil", image_mode="RGBA")

    def send(id, kind, index=None):
        data = {"type": kind, "index": index, "file": b"png", "id": id}  # as the route passes it, unvalidated
        editor.accept_blobs(AcceptBlobs.model_construct(data=data, files=[("f", b"png")]))

    for bad in ("1000000000", "-1", "4", "x"):
        with pytest.raises(gr.Error, match="layer index|bad layer index"):
            send("a", "layer", bad)
    send("a", "background")
    send("a", "layer", "0")
    assert len(editor.blob_storage["a"].layers) == 1
    for i in range(MAX_PENDING_EDITS + 5):  # edits sent but never requested do not pile up
        send(f"e{i}", "background")
    assert len(editor.blob_storage) == MAX_PENDING_EDITS and "a" not in editor.blob_storage
    good = tmp_path / "good.png"
    Image.new("RGBA", (40, 30)).save(good)
    send("z", "background")
    editor.blob_storage["z"].background = good.read_bytes()
    out = editor.preprocess(EditorData(id="z"))  # the blob path is checked and decoded like a file
    assert out["background"].size == (40, 30) and "z" not in editor.blob_storage


def test_client_limiter_counts_per_client_and_minute():
    from app.web import ClientLimiter

    now = [0.0]
    limiter = ClientLimiter(per_minute=2, in_flight=1, clock=lambda: now[0])
    with limiter.slot("a"):
        with pytest.raises(InputError, match="1 requests running already"), limiter.slot("a"):
            pass
        with limiter.slot("b"):  # another client is not counted against "a"
            pass
    with limiter.slot("a"):
        pass
    now[0] = 45.0
    with pytest.raises(InputError, match="at most 2 requests a minute per client: retry in 15 s"), limiter.slot("a"):
        pass
    now[0] = 60.0  # the first request left the window
    with limiter.slot("a"):
        pass
    with pytest.raises(ValueError, match="per_minute and in_flight must be >= 1"):
        ClientLimiter(per_minute=0)

    class Req:
        username, client = None, type("C", (), {"host": "10.0.0.7"})()

    assert ClientLimiter.client_of(Req()) == "address:10.0.0.7"
    Req.username = "ann"
    assert ClientLimiter.client_of(Req()) == "user:ann" and ClientLimiter.client_of(None) == "local"


def test_a_served_page_limits_each_client_and_asks_for_the_login(models):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from app.web import ClientLimiter, build_demo, launch

    demo = build_demo(models[:1], ClientLimiter(per_minute=1))
    url = launch(demo, host="127.0.0.1", port=_free_port(), block=False, auth=[("ann", "s3cret")])
    try:
        with pytest.raises(urllib.error.HTTPError) as err:  # no login: no page configuration, no API
            urllib.request.urlopen(url.rstrip("/") + "/config", timeout=30)
        assert err.value.code in (401, 403)
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's error for a refused login varies
            Client(url, auth=("ann", "wrong"), verbose=False)
        client = Client(url, auth=("ann", "s3cret"), verbose=False)
        assert len(client.predict(**GOOD, api_name="/generate")) == 2
        with pytest.raises(AppError, match="at most 1 requests a minute per client"):
            client.predict(**GOOD, api_name="/generate")
    finally:
        demo.close()


def test_serving_beyond_this_machine_needs_a_login_or_public(tmp_path, capsys):
    missing = str(tmp_path / "no-model")  # the access check comes before any model is loaded
    assert main(["app", "--model", missing, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 serves the UI beyond this machine without a login" in err and "--public" in err
    assert main(["app", "--model", missing, "--host", "0.0.0.0", "--public"]) == 2
    assert "model not found" in capsys.readouterr().err  # past the access check
    assert main(["app", "--model", missing, "--host", "0.0.0.0", "--auth", "ann:pw"]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["demo", "--host", "0.0.0.0", "--workdir", str(tmp_path / "d")]) == 2  # refused before training
    assert "without a login" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_logins_from_flags_and_a_file_and_their_errors(tmp_path):
    from app.serve import parse_logins

    f = tmp_path / "logins"
    f.write_text("# who may log in\nann:pw:with:colons\n\n bob : x\n")
    assert parse_logins(["cy:z"], str(f)) == [("cy", "z"), ("ann", "pw:with:colons"), ("bob", " x")]
    f.write_text("ann:pw\nbob\n")
    with pytest.raises(UserError, match=r"logins line 2: expected user:password") as err:
        parse_logins([], str(f))
    assert "pw" not in str(err.value).replace("password", "")
    with pytest.raises(UserError, match="--auth value 1: expected user:password"):
        parse_logins([":pw"])
    with pytest.raises(UserError, match="holds no user:password line"):
        f.write_text("# nobody\n")
        parse_logins([], str(f))
    with pytest.raises(UserError, match="--auth-file .*missing: No such file"):
        parse_logins([], str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- the page in a browser


class Browser:
    """Headless Chromium driven through chromedriver's W3C WebDriver API: plain HTTP and JSON, so the
    standard library is the whole client (https://www.w3.org/TR/webdriver2/)."""

    def __init__(self, chromium: str, chromedriver: str, profile: Path):
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen(
            [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            self._wait_for_driver()
            args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,1600",
                    "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}"]  # fmt: skip
            caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": chromium, "args": args}}}}
            self.session = "/session/" + self.call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.driver.kill()
            raise
        # Finding an element waits up to 20 s for it: Gradio builds the page in JavaScript after loading.
        self.call("POST", self.session + "/timeouts", {"implicit": 20_000})

    def _wait_for_driver(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.call("GET", "/status")
                return
            except OSError:
                if time.monotonic() > deadline or self.driver.poll() is not None:
                    raise
                time.sleep(0.1)

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data, {"Content-Type": "application/json"}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as err:  # WebDriver errors come as JSON with a message
            raise AssertionError(f"WebDriver {method} {path}: {err.read().decode()[:500]}") from None

    def open(self, url: str) -> None:
        self.call("POST", self.session + "/url", {"url": url})

    def find(self, xpath: str) -> str:
        found = self.call("POST", self.session + "/element", {"using": "xpath", "value": xpath})
        return self.session + "/element/" + next(iter(found.values()))

    def type(self, xpath: str, text: str) -> None:
        """Replace the field's text and leave it with Tab, as a user does (Gradio reads the value on change)."""
        element = self.find(xpath)
        self.call("POST", element + "/clear", {})
        self.call("POST", element + "/value", {"text": text + "\ue004"})  # U+E004: the Tab key

    def click(self, xpath: str) -> None:
        self.call("POST", self.find(xpath) + "/click", {})

    def script(self, js: str):
        return self.call("POST", self.session + "/execute/sync", {"script": js, "args": []})

    def close(self) -> None:
        try:
            self.call("DELETE", self.session)
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("chromium and its chromedriver are not installed (Debian: apt install chromium chromium-driver)")
    b = Browser(chromium, chromedriver, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


# What a user sees: the status line, the gallery's images (caption, loaded, width) and any error message.
PAGE_STATE = """return {
  title: document.title,
  status: [...document.querySelectorAll('[data-testid=markdown]')].map(e => e.innerText.trim()),
  images: [...document.querySelectorAll('button.thumbnail-item img')].map(i => [i.alt, i.complete, i.naturalWidth]),
  errors: [...document.querySelectorAll('[data-testid=toast-body]')].map(e => e.innerText.replace(/\\s+/g, ' ')),
  text: document.body.innerText.slice(0, 500),
}"""
GENERATE = "//button[contains(concat(' ', @class, ' '), ' primary ') and normalize-space()='Generate']"
DONE = re.compile(r"scale 4/4 .*done")  # the tiny models have 4 scales


def wait_for(browser: Browser, ready, what: str, seconds: float = 30) -> dict:
    """Poll the page until ``ready(state)``; fail naming ``what`` and showing the page otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        state = browser.script(PAGE_STATE)
        if ready(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {seconds} s; the page shows {state}")
        time.sleep(0.2)


def generate_on_page(browser: Browser, url: str, num_images: int, top_k: str | None = None) -> dict:
    """Open the page, ask for ``num_images`` (and ``top_k``), click Generate, wait for the final images
    or an error message; return what the page shows."""
    browser.open(url)
    # Gradio renders the page in JavaScript: an error page never gets the app's title.
    wait_for(browser, lambda state: state["title"] == "Next-scale image generation", "app page")
    browser.type("//input[@aria-label='number input for Number of images']", str(num_images))
    if top_k is not None:
        browser.type("//input[@aria-label='Top-k (0 = off)']", top_k)
    browser.click(GENERATE)

    def finished(state: dict) -> bool:
        done = any(DONE.search(s) for s in state["status"]) and all(loaded for _, loaded, _ in state["images"])
        return done or bool(state["errors"])

    return wait_for(browser, finished, "final images and no error message")


def test_page_generate_shows_the_requested_images(server, browser):
    state = generate_on_page(browser, server, num_images=3)
    assert state["errors"] == [], f"the page shows an error: {state}"
    assert [s for s in state["status"] if DONE.search(s)] == ["scale 4/4 (4x4 tokens) - done"]
    assert state["images"] == [[f"0: digit 0 · seed {i}", True, 32] for i in range(3)]  # 32 px, loaded


def test_page_generate_error_is_a_message_not_images(server, browser):
    state = generate_on_page(browser, server, num_images=2, top_k="-5")
    assert state["errors"] == ["Error × top-k must be >= 0 (0 keeps every token), got -5"]
    assert state["images"] == [] and not any(DONE.search(s) for s in state["status"])


# ----------------------------------------------------------------------------- the command


def test_cli_missing_model_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["app", "--model", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err and err.startswith("var app: error: model not found")


@pytest.mark.slow
def test_sigterm_removes_the_private_cache(tmp_path, tiny_vae):
    """A service manager stops `var app` with SIGTERM: the server closes as on Ctrl-C and its cache goes."""
    import signal
    import sys

    model = export_model(tiny_var(num_classes=10), tiny_vae, tmp_path / "m")
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    cmd = [sys.executable, "-m", "app", "app", "--model", str(model), "--port", str(_free_port()), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        cache, lines = None, []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("cache of generated images and uploads: "):
                cache = Path(line.split(": ", 1)[1].split(" (")[0].strip())
            if "Running on" in line or "127.0.0.1:" in line:
                break
        assert cache is not None and cache.is_dir(), "".join(lines)
        (cache / "upload.png").write_bytes(b"an uploaded image")
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(lines) + rest
    assert not cache.exists()

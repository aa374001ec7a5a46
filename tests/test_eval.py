import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from tokenizer import DigitsDataset
from var.evaluate import (
    INCEPTION_ENV,
    INCEPTION_FILE,
    EvalError,
    Features,
    InceptionFeatures,
    InceptionWeightsMissing,
    evaluate,
    load_images,
    precision_recall,
)


def stub_features(img_B3HW: torch.Tensor) -> Features:
    """Channel means and standard deviations, and the means of the four quadrants: 10 cheap features."""
    x = img_B3HW.float() / 255
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    quads = [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]
    pool = torch.cat([x.mean((2, 3)), x.std((2, 3)), torch.stack([q.mean((1, 2, 3)) for q in quads], 1)], 1)
    logits = pool[:, :4] * 10  # a 4-way "classifier"
    return Features(pool, logits)


def _images(seed: int, n: int = 60, size: int = 16, brightness: float = 0.5) -> np.ndarray:
    g = np.random.default_rng(seed)
    level = g.uniform(0, brightness, (n, 1, 1, 3))
    return ((level + g.uniform(0, 0.5, (n, size, size, 3))) * 255).clip(0, 255).astype(np.uint8)


def _save_folder(root, imgs, labels):
    for k, (img, c) in enumerate(zip(imgs, labels)):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(c) / f"{k}.png")
    return root


def test_load_images_from_folder_and_npz(tmp_path):
    imgs, labels = _images(0, 6), np.array([0, 0, 1, 1, 2, 2])
    folder = _save_folder(tmp_path / "s", imgs, labels)
    got, got_labels = load_images(folder)
    assert np.array_equal(got, imgs) and got_labels.tolist() == labels.tolist()
    np.savez(tmp_path / "s.npz", arr_0=imgs, arr_1=labels)
    got, got_labels = load_images(tmp_path / "s.npz")
    assert np.array_equal(got, imgs) and got_labels.tolist() == labels.tolist()
    np.savez(tmp_path / "bad.npz", arr_0=imgs.astype(np.float32))
    with pytest.raises(EvalError, match="arr_0 must be uint8"):
        load_images(tmp_path / "bad.npz")
    with pytest.raises(EvalError, match="neither an .npz file nor a folder"):
        load_images(tmp_path / "nowhere")


def test_fid_of_a_set_against_itself_is_near_zero(tmp_path):
    imgs = _images(0)
    folder = _save_folder(tmp_path / "s", imgs, [0] * len(imgs))
    np.savez(tmp_path / "ref.npz", arr_0=imgs)
    same = evaluate(folder, tmp_path / "ref.npz", stub_features, batch_size=7)
    assert abs(same.fid) < 1e-3 and same.precision == 1.0 and same.recall == 1.0
    assert same.num_samples == same.num_ref == 60 and same.inception_score >= 1.0

    np.savez(tmp_path / "other.npz", arr_0=_images(1, brightness=1.0))  # another draw, brighter on average
    other = evaluate(folder, tmp_path / "other.npz", stub_features)
    assert other.fid > 100 * max(abs(same.fid), 1e-4) and other.fid > 0.01
    assert "FID" in other.summary() and "precision" in other.summary()


def test_precision_recall_of_disjoint_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g)
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 100) == (0.0, 0.0)
    # the fakes cover half of the real set's modes: full precision, recall about one half
    real = torch.cat([torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g) + 50])
    precision, recall = precision_recall(real, torch.randn(100, 4, generator=g))
    assert precision > 0.9 and 0.4 < recall < 0.6


def test_missing_inception_weights_say_what_to_get(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(InceptionWeightsMissing, match=f"{INCEPTION_FILE}.*--inception PATH or set {INCEPTION_ENV}"):
        InceptionFeatures()
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(InceptionWeightsMissing, match=f"nope.pth not found \\(from {INCEPTION_ENV}\\)"):
        InceptionFeatures()


def test_cli_eval_without_weights_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    np.savez(tmp_path / "s.npz", arr_0=_images(0, 4))
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("var eval: error:") and INCEPTION_FILE in err and INCEPTION_ENV in err and "\n" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samples", "{tmp}/flat"], "--ref REF is required"),
        (["--digits", "--samples", "{tmp}/nowhere"], "--samples {tmp}/nowhere: not found"),
        (["--samples", "{tmp}/flat", "--ref", "{tmp}/nowhere.npz"], "--ref {tmp}/nowhere.npz: not found (expected"),
        (["--digits", "--samples", "{tmp}/flat"], "--digits needs labels"),
        (["--digits", "--samples", "{tmp}/text.npz"], "text.npz is not an .npz file (an .npz is a zip archive"),
        (["--digits", "--samples", "{tmp}/labels.npz"], "labels.npz: arr_1 must hold one integer label per image: "
         "3 images in arr_0, arr_1 is int64 [2]"),
        (["--digits", "--samples", "{tmp}/empty.npz"], "empty.npz holds no images (arr_0 has shape [0, 8, 8, 3])"),
    ],
    ids=["no-ref", "no-samples", "missing-ref", "no-labels", "text-npz", "label-count", "zero-images"],
)  # fmt: skip
def test_cli_eval_bad_input(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)  # a missing --ref is reported before the weights
    (tmp_path / "flat").mkdir()
    Image.fromarray(_images(0, 1)[0]).save(tmp_path / "flat" / "a.png")
    (tmp_path / "text.npz").write_text("not an archive\n")
    np.savez(tmp_path / "labels.npz", arr_0=_images(0, 3), arr_1=np.array([1, 2]))
    np.savez(tmp_path / "empty.npz", arr_0=np.zeros((0, 8, 8, 3), np.uint8), arr_1=np.zeros(0, np.int64))
    assert main(["eval", *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(tmp=tmp_path) in err and "\n" not in err and err.startswith("var eval: error:")


def test_cli_eval_digits_on_real_digits(tmp_path, capsys):
    val = DigitsDataset("val", image_size=16)
    keep = torch.cat([torch.nonzero(val.labels == c)[:4, 0] for c in range(10)])
    imgs = ((val.images[keep] + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    folder = _save_folder(tmp_path / "digits", imgs, val.labels[keep].tolist())
    assert main(["eval", "--digits", "--samples", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "class  samples  accuracy" in out and "Frechet distance" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(10)) and all(r[1] == "4" for r in rows)
    accuracy = float(out.split("accuracy ")[1].split("%")[0])
    assert accuracy >= 90.0


def test_inception_features_use_the_local_file(tmp_path, monkeypatch):
    """The real extractor is torch-fidelity's, built from the given file (no network here to try it for real)."""
    import sys
    import types

    made = {}

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, weights_path):
            super().__init__()
            made.update(name=name, features=features_list, weights=weights_path)

        def forward(self, x):
            assert x.dtype == torch.uint8
            return torch.ones(len(x), 2048), torch.zeros(len(x), 1008)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / INCEPTION_FILE
    weights.write_bytes(b"")
    monkeypatch.setenv(INCEPTION_ENV, str(weights))
    f = InceptionFeatures()(torch.zeros(3, 3, 16, 16, dtype=torch.uint8))
    assert made == {"name": "inception-v3-compat", "features": ["2048", "logits_unbiased"], "weights": str(weights)}
    assert f.pool_ND.shape == (3, 2048) and f.logits_NK.shape == (3, 1008)

"""`var eval`: score generated images.

- ``var eval --samples DIR_OR_NPZ --ref REF``: FID and Inception Score (torchmetrics) and improved
  precision/recall (Kynkaenniemi et al. 2019, k=3, as in the ADM evaluator) on Inception-v3 features.
  The Inception weights are read from a local file, never downloaded (see :func:`inception_weights_path`).
- ``var eval --digits --samples DIR_OR_NPZ``: for the bundled digits, per-class accuracy of the samples
  judged by :mod:`var.digits_eval` and the Frechet distance in the judge's feature space.

Samples and references are an `.npz` (``arr_0`` uint8 NHWC, optional ``arr_1`` labels: what `var sample`
and the ADM evaluator write; ADM's reference batches work as they are) or a folder of images, where a
``<class>/`` sub-folder named by an integer gives the label (the layout `var sample` writes).

Feature extraction is a parameter: any callable from uint8 images ``[B, 3, H, W]`` to :class:`Features`
(the tests pass a small stub; :class:`InceptionFeatures` is the real one).
"""

from __future__ import annotations

import argparse
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scaffold.errors import UserError
from tokenizer.data import DatasetError, read_rgb

__all__ = [
    "INCEPTION_ENV",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "EvalError",
    "FeatureExtractor",
    "Features",
    "ImageMetrics",
    "InceptionFeatures",
    "InceptionWeightsMissing",
    "add_arguments",
    "compute_metrics",
    "digits_table",
    "evaluate",
    "evaluate_digits",
    "extract_features",
    "inception_weights_path",
    "load_images",
    "precision_recall",
    "run",
]

# The Inception-v3 that FID is defined with (TensorFlow's 2015-12-05 graph), ported by torch-fidelity, whose
# feature extractor torchmetrics' FrechetInceptionDistance uses.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "NEXTSCALE_INCEPTION"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class EvalError(UserError, ValueError):
    """A bad `var eval` request: unreadable samples, too few images, a missing dependency."""


class InceptionWeightsMissing(EvalError):
    """No local Inception weights: the message says which file and how to get it."""


@dataclass
class Features:
    pool_ND: torch.Tensor  # features for FID and precision/recall (Inception: the 2048-d pool layer)
    logits_NK: torch.Tensor | None = None  # class logits for the Inception Score; None skips it


FeatureExtractor = Callable[[torch.Tensor], Features]  # uint8 images [B, 3, H, W] -> Features of B images


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: `path` (``--inception``), else ``$NEXTSCALE_INCEPTION``; it must exist."""
    given = path or os.environ.get(INCEPTION_ENV)
    if not given:
        raise InceptionWeightsMissing(
            f"FID/IS need the Inception-v3 weights file {INCEPTION_FILE} (torch-fidelity's port of the FID "
            f"network), which is never downloaded here: fetch it on a machine with network access from "
            f"{INCEPTION_URL} and pass --inception PATH or set {INCEPTION_ENV}=PATH"
        )
    found = Path(given)
    if not found.is_file():
        raise InceptionWeightsMissing(
            f"Inception weights {found} not found (from {'--inception' if path else INCEPTION_ENV}); "
            f"it should be {INCEPTION_FILE}, from {INCEPTION_URL}"
        )
    return found


class InceptionFeatures:
    """torch-fidelity's Inception-v3 (the FID network) from a local weights file: pool features and logits.

    It resizes any input to 299 px itself, as the TensorFlow original does (bilinear, TF1 style).
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        path = inception_weights_path(weights)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise EvalError(
                "FID/IS need torch-fidelity (the Inception network torchmetrics uses): pip install -e .[fid]"
            ) from None
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], str(path))
        self.net = self.net.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def __call__(self, img_B3HW: torch.Tensor) -> Features:
        pool, logits = self.net(img_B3HW.to(self.device))
        return Features(pool.float().cpu(), logits.float().cpu())


def _read_image(path: Path) -> np.ndarray:
    try:  # 16-bit and palette images scaled, not clipped; every decoder error (a decompression bomb too)
        return np.asarray(read_rgb(path))
    except DatasetError as err:
        raise EvalError(str(err)) from None


def load_images(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, H, W, 3] and their labels (or None) from an `.npz` or an image folder."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        if not zipfile.is_zipfile(path):  # np.load would call a text file "pickled data"
            raise EvalError(
                f"{path} is not an .npz file (an .npz is a zip archive of arrays: arr_0 images, arr_1 labels)"
            )
        try:
            with np.load(path) as z:
                if "arr_0" not in z.files:
                    raise EvalError(f"{path} has no arr_0 (expected the ADM format: arr_0 uint8 NHWC, arr_1 labels)")
                imgs, labels = z["arr_0"], (z["arr_1"] if "arr_1" in z.files else None)
        except (OSError, ValueError) as err:
            if isinstance(err, EvalError):
                raise
            raise EvalError(f"cannot read {path}: {err}") from None
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise EvalError(f"{path}: arr_0 must be uint8 [N, H, W, 3], got {imgs.dtype} {list(imgs.shape)}")
        if len(imgs) == 0:
            raise EvalError(f"{path} holds no images (arr_0 has shape {list(imgs.shape)})")
        if labels is None:
            return imgs, None
        if labels.ndim != 1 or len(labels) != len(imgs) or not np.issubdtype(labels.dtype, np.integer):
            raise EvalError(
                f"{path}: arr_1 must hold one integer label per image: {len(imgs)} images in arr_0, "
                f"arr_1 is {labels.dtype} {list(labels.shape)}"
            )
        return imgs, labels.astype(np.int64)
    if not path.is_dir():
        raise EvalError(f"samples not found: {path} is neither an .npz file nor a folder of images")
    files = sorted(
        (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: (p.parent.as_posix(), int(p.stem) if p.stem.isdigit() else -1, p.name),
    )
    if not files:
        raise EvalError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    imgs = [_read_image(p) for p in files]
    if len({im.shape for im in imgs}) > 1:
        raise EvalError(f"{path}: the images have different sizes {sorted({im.shape[:2] for im in imgs})}")
    parents = [p.parent for p in files]
    labelled = all(q != path and q.parent == path and q.name.isdigit() for q in parents)
    labels = np.array([int(q.name) for q in parents], dtype=np.int64) if labelled else None
    return np.stack(imgs), labels


def extract_features(
    images_NHW3: np.ndarray, extractor: FeatureExtractor, batch_size: int = 100, progress: bool = False
) -> Features:
    from tqdm import tqdm

    pools, logits = [], []
    for start in tqdm(range(0, len(images_NHW3), batch_size), unit="batch", disable=not progress):
        img_B3HW = torch.from_numpy(images_NHW3[start : start + batch_size]).permute(0, 3, 1, 2).contiguous()
        f = extractor(img_B3HW)
        pools.append(f.pool_ND)
        if f.logits_NK is not None:
            logits.append(f.logits_NK)
    return Features(torch.cat(pools), torch.cat(logits) if logits else None)


class _Precomputed(nn.Module):
    """Features already extracted, handed to torchmetrics as its "custom feature extractor"."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def precision_recall(real_ND: torch.Tensor, fake_ND: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019): the share of fake features inside the
    real manifold (the union of balls reaching each real feature's k-th neighbour), and the converse."""

    def kth_radius(x_ND: torch.Tensor) -> torch.Tensor:
        # k + 1: the nearest "neighbour" of a point in its own set is itself
        return torch.cat([torch.cdist(x, x_ND).kthvalue(k + 1, dim=1).values for x in x_ND.split(1024)])

    def coverage(manifold_ND: torch.Tensor, radii_N: torch.Tensor, probe_MD: torch.Tensor) -> float:
        inside = [(torch.cdist(p, manifold_ND) <= radii_N).any(dim=1) for p in probe_MD.split(1024)]
        return torch.cat(inside).float().mean().item()

    real_ND, fake_ND = real_ND.double(), fake_ND.double()
    if min(len(real_ND), len(fake_ND)) <= k:
        raise EvalError(f"precision/recall need more than k={k} images in each set")
    return (
        coverage(real_ND, kth_radius(real_ND), fake_ND),
        coverage(fake_ND, kth_radius(fake_ND), real_ND),
    )


@dataclass
class ImageMetrics:
    fid: float
    inception_score: float | None
    inception_score_std: float | None
    precision: float
    recall: float
    num_samples: int
    num_ref: int

    def summary(self) -> str:
        is_text = (
            "n/a" if self.inception_score is None else f"{self.inception_score:.2f} +- {self.inception_score_std:.2f}"
        )
        return (
            f"FID {max(self.fid, 0.0):.3f}  IS {is_text}  precision {self.precision:.3f}  recall {self.recall:.3f}  "
            f"({self.num_samples} samples, {self.num_ref} reference images)"
        )


def compute_metrics(samples: Features, ref: Features) -> ImageMetrics:
    """FID (torchmetrics) of `samples` against `ref`, IS of `samples` when it has logits, precision/recall."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    n, m = len(samples.pool_ND), len(ref.pool_ND)
    if min(n, m) < 2:
        raise EvalError(f"FID needs at least 2 images in each set, got {n} samples and {m} reference images")
    # The features are extracted once and fed to all three metrics, hence the pass-through "extractor".
    fid = FrechetInceptionDistance(feature=_Precomputed(samples.pool_ND.shape[1]), reset_real_features=False)
    fid.update(ref.pool_ND, real=True)
    fid.update(samples.pool_ND, real=False)
    is_mean = is_std = None
    if samples.logits_NK is not None:
        with warnings.catch_warnings():  # "will save all extracted features": logits only, 1000 floats an image
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            score = InceptionScore(feature=_Precomputed(samples.logits_NK.shape[1]), splits=min(10, n))
        score.update(samples.logits_NK)
        with torch.random.fork_rng():  # it shuffles before splitting: a fixed shuffle, a reproducible score
            torch.manual_seed(0)
            mean, std = score.compute()
        is_mean, is_std = mean.item(), std.item()
    precision, recall = precision_recall(ref.pool_ND, samples.pool_ND)
    return ImageMetrics(fid.compute().item(), is_mean, is_std, precision, recall, n, m)


def evaluate(
    samples: str | os.PathLike,
    ref: str | os.PathLike,
    extractor: FeatureExtractor,
    batch_size: int = 100,
    progress: bool = False,
) -> ImageMetrics:
    """Load both sets (npz or folder), extract their features with `extractor`, compute the metrics."""
    sample_imgs, _ = load_images(samples)
    ref_imgs, _ = load_images(ref)
    return compute_metrics(
        extract_features(sample_imgs, extractor, batch_size, progress),
        extract_features(ref_imgs, extractor, batch_size, progress),
    )


def evaluate_digits(samples: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """The :class:`var.digits_eval.DigitsReport` of labelled digit samples (npz with arr_1, or `<class>/`
    folders) and the number of samples per class."""
    from var.digits_eval import judge_samples, load_judge

    imgs, labels = load_images(samples)
    if labels is None:
        raise EvalError(f"{samples}: --digits needs labels (an npz with arr_1, or <class>/ folders named 0..9)")
    if labels.min() < 0 or labels.max() > 9:
        raise EvalError(f"{samples}: digit labels must be in 0..9, found {sorted(set(labels.tolist()))}")
    if imgs.shape[1] != imgs.shape[2] or imgs.shape[1] % 4:
        raise EvalError(f"{samples}: --digits needs square images with a side divisible by 4, got {imgs.shape[1:3]}")
    images_B3HW = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255)
    judge = load_judge(imgs.shape[1], cache_dir)
    counts = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    return judge_samples(images_B3HW, torch.from_numpy(labels), judge), counts


def digits_table(report, counts: dict[int, int]) -> str:
    """One row per class: samples and the judge's accuracy on them."""
    lines = ["class  samples  accuracy"]
    lines += [f"{c:>5}  {counts[c]:>7}  {a:>8.1%}" for c, a in sorted(report.per_class.items())]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="generated images: an .npz (arr_0 uint8 NHWC) or a folder")
    parser.add_argument("--ref", help="reference images (.npz or folder) for FID/IS/precision/recall")
    parser.add_argument(
        "--inception", help=f"Inception weights file {INCEPTION_FILE} (default: ${INCEPTION_ENV}); never downloaded"
    )
    parser.add_argument("--digits", action="store_true", help="judge digit samples with the bundled digits judge")
    parser.add_argument("--batch-size", type=int, default=100, help="images per feature batch (default: 100)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def _check_exists(path: str, flag: str) -> None:
    p = Path(path)
    if not p.exists():
        raise EvalError(f"{flag} {path}: not found (expected an .npz file or a folder of images)")
    if p.is_file() and p.suffix != ".npz":
        raise EvalError(f"{flag} {path}: expected an .npz file or a folder of images, got a {p.suffix or 'plain'} file")


def run(args: argparse.Namespace) -> int:
    # The inputs first: a missing --ref must be reported as such, not as missing Inception weights.
    _check_exists(args.samples, "--samples")
    if args.ref:
        _check_exists(args.ref, "--ref")
    if args.digits:
        report, counts = evaluate_digits(args.samples)
        print(digits_table(report, counts))
        print(report.summary())
        return 0
    if not args.ref:
        raise EvalError("--ref REF is required (reference images, .npz or folder), unless --digits")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = InceptionFeatures(args.inception, device)
    print(evaluate(args.samples, args.ref, extractor, args.batch_size, progress=True).summary())
    return 0

"""Judging generated digits: a small CNN trained on the real (scikit-learn) digits, once, then cached.

`judge_samples(images, labels)` gives the per-class accuracy of samples of requested classes (is a
sample recognisably the digit it was asked for?) and a Frechet distance between the judge's
features of the samples and of the held-out real digits (the FID recipe, in this small feature
space). These are the quality numbers `var demo` and `var eval --digits` report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scaffold import read_state_dict, save_state_dict
from tokenizer import DigitsDataset

__all__ = ["DigitsJudge", "DigitsReport", "frechet_distance", "judge_samples", "load_judge"]

FEATURES = 128


class DigitsJudge(nn.Module):
    """Two conv blocks and an MLP over [B, 3, S, S] images in [-1, 1]; `features` is the penultimate layer."""

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, FEATURES)
        self.out = nn.Linear(FEATURES, 10)

    def features(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        if img_B3HW.shape[-1] != self.image_size:
            img_B3HW = F.interpolate(img_B3HW, size=(self.image_size, self.image_size), mode="area")
        h = F.max_pool2d(F.relu(self.conv1(img_B3HW)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(img_B3HW))


def _augment(img_B3HW: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shifts of up to S/8 pixels and a little noise: generated digits are never pixel-aligned copies."""
    B, _, S, _ = img_B3HW.shape
    pad = max(1, S // 8)
    padded = F.pad(img_B3HW, (pad, pad, pad, pad), value=-1.0)
    dx, dy = torch.randint(0, 2 * pad + 1, (2, B), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + S, dx[i] : dx[i] + S] for i in range(B)])
    return (out + 0.1 * torch.randn(out.shape, generator=g)).clamp(-1, 1)


@torch.enable_grad()  # judge_samples (no_grad) trains the judge on first use
def train_judge(image_size: int, steps: int = 400, seed: int = 0) -> tuple[DigitsJudge, float]:
    """Train on the train split of the digits; returns the judge and its held-out accuracy."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train, val = DigitsDataset("train", image_size=image_size), DigitsDataset("val", image_size=image_size)
    judge = DigitsJudge(image_size)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(steps):
        i = torch.randint(0, len(train), (64,), generator=g)
        loss = F.cross_entropy(judge(_augment(train.images[i], g)), train.labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    judge.eval()
    with torch.no_grad():
        acc = (judge(val.images).argmax(1) == val.labels).float().mean().item()
    return judge, acc


def _cache_dir() -> Path:
    root = os.environ.get("NEXTSCALE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nextscale"
    )
    return Path(root)


def load_judge(image_size: int, cache_dir: str | os.PathLike | None = None) -> DigitsJudge:
    """The judge for `image_size`, trained on first use (a few seconds) and cached as safetensors."""
    path = Path(cache_dir or _cache_dir()) / f"digits_judge_{image_size}px.safetensors"
    judge = DigitsJudge(image_size)
    if path.is_file():
        judge.load_state_dict(read_state_dict(path))
    else:
        judge, _ = train_judge(image_size)
        save_state_dict(judge.state_dict(), path)
    return judge.eval().requires_grad_(False)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets [N, F] (the FID formula)."""
    from scipy import linalg

    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    # ReLU features can have dead units, so the covariances may be singular: a tiny ridge on both keeps
    # the square root defined (it cancels when the two sets are equal).
    eps = np.eye(feats_a.shape[1]) * 1e-6
    s_a, s_b = np.cov(feats_a, rowvar=False) + eps, np.cov(feats_b, rowvar=False) + eps
    covmean = linalg.sqrtm(s_a @ s_b)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


@dataclass
class DigitsReport:
    """The judge's verdict, kept as counts: a threshold on a share compares counts, never rounded floats
    (18 of 20 is 90%, whereas float32's mean of 18 ones and 2 zeros is 0.8999999761581421)."""

    per_class_counts: dict[int, tuple[int, int]]  # class -> (samples judged that class, samples of it)
    frechet: float  # judge-feature Frechet distance to the held-out real digits

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.per_class_counts.values())

    @property
    def accuracy(self) -> float:  # over all samples
        return sum(k for k, _ in self.per_class_counts.values()) / self.num_samples

    @property
    def per_class(self) -> dict[int, float]:  # class -> share of its samples judged right
        return {c: k / n for c, (k, n) in self.per_class_counts.items()}

    @property
    def min_class_accuracy(self) -> float:
        return min(self.per_class.values())

    def every_class_at_least(self, share: float | str) -> bool:
        """Whether every class has at least `share` of its samples right, compared exactly on counts."""
        need = Fraction(str(share))
        return all(k * need.denominator >= need.numerator * n for k, n in self.per_class_counts.values())

    def summary(self) -> str:
        per = " ".join(f"{c}:{k}/{n}" for c, (k, n) in sorted(self.per_class_counts.items()))
        return (
            f"accuracy {self.accuracy:.1%} (lowest class {self.min_class_accuracy:.1%}) over {self.num_samples} "
            f"samples; Frechet distance {self.frechet:.2f}; right per class {per}"
        )


@torch.no_grad()
def judge_samples(images_B3HW: torch.Tensor, labels_B: torch.Tensor, judge: DigitsJudge | None = None) -> DigitsReport:
    """Judge samples in [0, 1] of the requested `labels_B` (digits 0-9)."""
    if images_B3HW.ndim != 4 or images_B3HW.shape[1] != 3 or len(images_B3HW) != len(labels_B):
        raise ValueError(
            f"expected images [B, 3, H, W] and B labels, got {tuple(images_B3HW.shape)} and {len(labels_B)}"
        )
    if int(labels_B.min()) < 0 or int(labels_B.max()) > 9:
        raise ValueError("digit labels must be in 0..9")
    judge = judge or load_judge(images_B3HW.shape[-1])
    x = images_B3HW.float().cpu() * 2 - 1
    labels = labels_B.cpu()
    pred = judge(x).argmax(1)
    counts = {int(c): (int((pred[labels == c] == c).sum()), int((labels == c).sum())) for c in labels.unique()}
    real = DigitsDataset("val", image_size=judge.image_size).images
    fd = frechet_distance(judge.features(x).double().numpy(), judge.features(real).double().numpy())
    return DigitsReport(counts, fd)

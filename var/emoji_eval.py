"""Judging generated emoji: a small CNN trained only on the training emoji, and three figures.

1. **Category accuracy.** The judge's balanced accuracy (the mean over the nine categories of the share
   judged right) on samples of each requested category, against the same figure on the held-out real
   emoji: the judge never saw a held-out emoji, so that is what "recognisable" means for a new one.
   Balanced, because 60% of the images are "People & Body" (skin-tone variants).
2. **Class-conditional Frechet distance** in the judge's feature space, projected on its 8 (= classes - 1)
   leading principal directions of the training features: per category, the samples against the held-out
   real emoji of that category (equal counts), averaged over the categories. The floor is the same
   figure for the training images (as many of each category) against the held-out ones: two real sets.
   The ceiling is a model that ignores the label: for each category, an equal number of samples drawn
   from all categories' samples. Per category, because a pooled distance cannot see the label (a model
   that ignored it would score like one that obeyed it); 8 dimensions, because the smallest held-out
   category has 8 images and every figure is computed at the same counts, so their bias is shared.
3. **Copying.** The RMS pixel distance of each sample to its nearest training image (the tokenizer's
   reconstruction of it, since a sample that copied a training emoji's tokens decodes to exactly that),
   against the same for the held-out emoji's reconstructions: a ratio of medians well below 1 means the
   samples sit closer to the training set than new emoji do.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .digits_eval import frechet_distance

__all__ = [
    "EmojiJudge",
    "EmojiReport",
    "balanced_accuracy",
    "conditional_frechet",
    "judge_emoji",
    "nearest_distance",
    "train_emoji_judge",
]

FEATURES = 128


class EmojiJudge(nn.Module):
    """Four stride-2 conv blocks and a pooled MLP over [B, 3, 64, 64] images in [-1, 1]."""

    def __init__(self, num_classes: int = 9, image_size: int = 64):
        super().__init__()
        self.num_classes, self.image_size = num_classes, image_size
        widths = (3, 32, 64, 128, 128)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(widths))
        self.norms = nn.ModuleList(nn.GroupNorm(8, b) for b in widths[1:])
        self.fc = nn.Linear(128 * 4, FEATURES)
        self.out = nn.Linear(FEATURES, num_classes)

    def features(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        if img_B3HW.shape[-1] != self.image_size:
            img_B3HW = F.interpolate(img_B3HW, size=(self.image_size, self.image_size), mode="area")
        h = img_B3HW
        for conv, norm in zip(self.convs, self.norms):
            h = F.silu(norm(conv(h)))
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3)), h.std((2, 3)), F.adaptive_avg_pool2d(h, 1).flatten(1)], 1)
        return F.relu(self.fc(h))

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(img_B3HW))


def _augment(img_B3HW: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shifts of up to S/16 px on white, a little noise and a brightness change: samples are never aligned copies."""
    B, _, S, _ = img_B3HW.shape
    pad = max(1, S // 16)
    padded = F.pad(img_B3HW, (pad, pad, pad, pad), value=1.0)
    dx, dy = torch.randint(0, 2 * pad + 1, (2, B), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + S, dx[i] : dx[i] + S] for i in range(B)])
    scale = 1 + 0.1 * (torch.rand(B, 1, 1, 1, generator=g) - 0.5)
    return (out * scale + 0.05 * torch.randn(out.shape, generator=g)).clamp(-1, 1)


@torch.enable_grad()
def train_emoji_judge(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 600, batch: int = 64, seed: int = 0
) -> EmojiJudge:
    """Train on `images` [N, 3, S, S] in [-1, 1] with class-balanced batches (every category equally often)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = EmojiJudge(num_classes, images.shape[-1])
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    present = [c for c in range(num_classes) if len(by_class[c])]
    for _ in range(steps):
        cls = torch.tensor(present)[torch.randint(0, len(present), (batch,), generator=g)]
        i = torch.stack([by_class[c][torch.randint(0, len(by_class[c]), (1,), generator=g)][0] for c in cls.tolist()])
        loss = F.cross_entropy(judge(_augment(images[i], g)), labels[i], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval().requires_grad_(False)


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[int, tuple[int, int]]]:
    """The mean over present classes of the share predicted right, and the (right, count) of each class."""
    counts = {int(c): (int((pred[labels == c] == c).sum()), int((labels == c).sum())) for c in labels.unique()}
    return float(np.mean([k / n for k, n in counts.values()])), counts


@torch.no_grad()
def _features(judge: EmojiJudge, img_B3HW: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([judge.features(img_B3HW[i : i + batch]) for i in range(0, len(img_B3HW), batch)]).double()


def _project(feats: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor) -> np.ndarray:
    return ((feats - mean) @ basis).numpy()


def frechet_classes(real_y: np.ndarray) -> np.ndarray:
    """The classes with at least 2 real images: a covariance needs 2, so the others are left out of every
    Frechet figure (the same classes for the distance, its floor and its ceiling)."""
    c, n = np.unique(real_y, return_counts=True)
    return c[n >= 2]


def conditional_frechet(
    sample_f: np.ndarray, sample_y: np.ndarray, real_f: np.ndarray, real_y: np.ndarray, classes: np.ndarray
) -> float:
    """The mean over `classes` of the Frechet distance between the first n samples of the class and its n
    real images (n = min of the two counts); NaN when `classes` is empty."""
    if len(classes) == 0:
        return math.nan
    out = []
    for c in classes:
        a, b = sample_f[sample_y == c], real_f[real_y == c]
        n = min(len(a), len(b))
        if n < 2:
            raise ValueError(f"class {c} has {n} images on one side; the Frechet distance needs at least 2")
        out.append(frechet_distance(a[:n], b[:n]))
    return float(np.mean(out))


def nearest_distance(a_NX: torch.Tensor, b_MX: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """RMS difference (images in [0, 1], flattened) of every row of `a` to its nearest row of `b`, [N]."""
    best = [
        torch.cdist(a_NX[i : i + chunk].double(), b_MX.double()).min(dim=1).values for i in range(0, len(a_NX), chunk)
    ]
    return torch.cat(best) / math.sqrt(a_NX.shape[1])


@dataclass
class EmojiReport:
    accuracy: float  # balanced accuracy of the samples
    real_accuracy: float  # the judge's balanced accuracy on the held-out real emoji
    per_class_counts: dict[int, tuple[int, int]]  # class -> (samples judged that class, samples of it)
    frechet: float  # class-conditional, samples vs held-out real
    frechet_floor: float  # training real vs held-out real
    frechet_ceiling: float  # label-ignoring samples vs held-out real
    nn_distance: float  # median nearest-training distance of the samples
    heldout_nn_distance: float  # the same for the held-out emoji's reconstructions
    class_names: list[str] = field(default_factory=list)
    frechet_left_out: list[int] = field(default_factory=list)  # classes with under 2 held-out images

    @property
    def accuracy_ratio(self) -> float:
        return self.accuracy / self.real_accuracy

    @property
    def frechet_position(self) -> float:
        """0 at the floor, 1 at the ceiling; under 0.5 is closer to the floor."""
        return (self.frechet - self.frechet_floor) / (self.frechet_ceiling - self.frechet_floor)

    @property
    def nn_ratio(self) -> float:
        return self.nn_distance / self.heldout_nn_distance

    @property
    def per_class(self) -> dict[int, float]:
        return {c: k / n for c, (k, n) in self.per_class_counts.items()}

    def goals(self) -> dict[str, bool]:
        """The demo's goals: accuracy at least 80% of the real emoji's, the distance nearer its floor than its
        ceiling, and samples no closer to the training set than 0.9 of the held-out emoji's distance."""
        return {
            "accuracy": self.accuracy_ratio >= 0.8,
            "frechet": bool(self.frechet_position < 0.5),  # NaN (not measured) is a miss
            "copying": self.nn_ratio >= 0.9,
        }

    def _frechet_line(self, verdict: str) -> str:
        names = [self.class_names[c] if c < len(self.class_names) else str(c) for c in self.frechet_left_out]
        left = f"; left out, under 2 held-out emoji: {', '.join(names)}" if names else ""
        if math.isnan(self.frechet):
            return f"Frechet distance not measured: no category has 2 held-out emoji{left}"
        return (
            f"Frechet distance {self.frechet:.2f} (floor, real vs real: {self.frechet_floor:.2f}; ceiling, a model "
            f"that ignores the label: {self.frechet_ceiling:.2f}; position {self.frechet_position:.2f}, goal < 0.5: "
            f"{verdict}{left})"
        )

    def lines(self) -> list[str]:
        g = self.goals()
        mark = {True: "goal met", False: "GOAL MISSED"}
        return [
            f"category accuracy {self.accuracy:.1%} (balanced) = {self.accuracy_ratio:.2f}x the judge's "
            f"{self.real_accuracy:.1%} on held-out real emoji (goal >= 0.80x: {mark[g['accuracy']]})",
            self._frechet_line(mark[g["frechet"]]),
            f"copy check: median nearest-training distance {self.nn_distance:.4f} against {self.heldout_nn_distance:.4f} "
            f"for held-out emoji, ratio {self.nn_ratio:.2f} (goal >= 0.90: {mark[g['copying']]})",
        ]


@torch.no_grad()
def judge_emoji(
    judge: EmojiJudge,
    samples: torch.Tensor,
    sample_labels: torch.Tensor,
    train_real: torch.Tensor,
    train_labels: torch.Tensor,
    val_real: torch.Tensor,
    val_labels: torch.Tensor,
    train_rec: torch.Tensor,
    val_rec: torch.Tensor,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> EmojiReport:
    """`samples` [B, 3, H, W] in [0, 1] of `sample_labels`; the real sets in [-1, 1]; `train_rec`/`val_rec` the
    tokenizer's reconstructions of the real sets, in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = samples.float().cpu() * 2 - 1
    sample_labels = sample_labels.cpu()
    acc, counts = balanced_accuracy(judge(x).argmax(1), sample_labels)
    real_acc, _ = balanced_accuracy(judge(val_real).argmax(1), val_labels)

    train_f = _features(judge, train_real)
    mean = train_f.mean(0)
    # the 8 leading principal directions of the training features (classes - 1: the discriminative subspace)
    _, _, v = torch.linalg.svd(train_f - mean, full_matrices=False)
    basis = v[: judge.num_classes - 1].T
    sf = _project(_features(judge, x), basis, mean)
    vf = _project(_features(judge, val_real), basis, mean)
    tf = _project(train_f, basis, mean)
    sy, vy, ty = sample_labels.numpy(), val_labels.numpy(), train_labels.numpy()

    classes = frechet_classes(vy)
    fd = conditional_frechet(sf, sy, vf, vy, classes)
    # floor: training images of each class (a random subset of the held-out count) against the held-out ones
    pick = np.concatenate([rng.permutation(np.flatnonzero(ty == c)) for c in classes] + [np.zeros(0, np.int64)])
    floor = conditional_frechet(tf[pick], ty[pick], vf, vy, classes)
    # ceiling: a model that ignores the label draws each class's images from all the samples
    ceiling = _label_ignored(sf, vf, vy, classes, rng)

    nn_s = nearest_distance(samples.flatten(1).float(), train_rec.flatten(1))
    nn_v = nearest_distance(val_rec.flatten(1), train_rec.flatten(1))
    left_out = sorted(set(np.unique(vy).tolist()) - set(classes.tolist()))
    return EmojiReport(
        acc,
        real_acc,
        counts,
        fd,
        floor,
        ceiling,
        nn_s.median().item(),
        nn_v.median().item(),
        list(class_names or []),
        left_out,
    )


def _label_ignored(
    sf: np.ndarray, vf: np.ndarray, vy: np.ndarray, classes: np.ndarray, rng: np.random.Generator
) -> float:
    """Per class, as many samples as the class has held-out images, drawn from the samples of every class."""
    if len(classes) == 0:
        return math.nan
    out = []
    for c in classes:
        b = vf[vy == c]
        a = sf[rng.choice(len(sf), size=len(b), replace=len(b) > len(sf))]
        out.append(frechet_distance(a, b))
    return float(np.mean(out))

"""The emoji judge's figures on data whose answer is known: coloured squares, one colour a class."""

import math

import numpy as np
import torch

from var.emoji_eval import (
    EmojiReport,
    balanced_accuracy,
    conditional_frechet,
    frechet_classes,
    judge_emoji,
    nearest_distance,
    train_emoji_judge,
)

COLOURS = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]])  # red, green, blue in [-1, 1]


def squares(labels: torch.Tensor, seed: int, size: int = 32) -> torch.Tensor:
    """A square of the class's colour at a random place on white, [N, 3, size, size] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    out = torch.ones(len(labels), 3, size, size)
    for i, c in enumerate(labels.tolist()):
        x, y = torch.randint(0, size // 2, (2,), generator=g).tolist()
        out[i, :, y : y + size // 2, x : x + size // 2] = COLOURS[c, :, None, None]
    return out


def test_balanced_accuracy_weights_every_class_equally():
    labels = torch.tensor([0] * 8 + [1] * 2)
    pred = torch.tensor([0] * 8 + [0, 0])  # the big class right, the small one wrong
    acc, counts = balanced_accuracy(pred, labels)
    assert acc == 0.5 and counts == {0: (8, 8), 1: (0, 2)}


def test_frechet_classes_leave_out_classes_with_one_image():
    assert frechet_classes(np.array([0, 0, 1, 2, 2, 2])).tolist() == [0, 2]
    assert math.isnan(conditional_frechet(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 3)), np.zeros(2), np.array([])))


def test_nearest_distance_is_zero_for_copies_and_rms_otherwise():
    b = torch.rand(5, 12)
    assert torch.allclose(nearest_distance(b[:3], b), torch.zeros(3, dtype=torch.float64), atol=1e-7)
    d = nearest_distance(torch.zeros(1, 12), torch.full((1, 12), 0.5))
    assert abs(d.item() - 0.5) < 1e-9


def test_judge_tells_the_colours_apart_and_the_figures_order_right():
    """Samples that obey the label sit at the floor, samples that ignore it at the ceiling, copies fail the
    copy check, and a report with a class of one held-out image names it and still measures the rest."""
    train_y = torch.arange(3).repeat(30)
    val_y = torch.tensor([0] * 10 + [1] * 10 + [2] * 1)
    train, val = squares(train_y, 0), squares(val_y, 1)
    judge = train_emoji_judge(train, train_y, 3, steps=60, batch=24)
    acc, _ = balanced_accuracy(judge(val).argmax(1), val_y)
    assert acc == 1.0

    def report(samples01, labels):
        rec = lambda x: (x + 1) / 2  # noqa: E731 - a perfect tokenizer
        return judge_emoji(
            judge, samples01, labels, train, train_y, val, val_y, rec(train), rec(val), class_names=["r", "g", "b"]
        )

    sample_y = torch.arange(3).repeat(12)
    obeying = report((squares(sample_y, 2) + 1) / 2, sample_y)
    assert obeying.accuracy_ratio == 1.0 and obeying.frechet_left_out == [2]
    assert obeying.frechet_position < 0.5 and obeying.goals()["frechet"]
    assert "left out, under 2 held-out emoji: b" in obeying.lines()[1]

    ignoring = report((squares(sample_y, 2) + 1) / 2, sample_y.roll(1))  # every label wrong
    assert ignoring.accuracy == 0.0 and ignoring.frechet > obeying.frechet
    assert not ignoring.goals()["accuracy"]

    copies = report((train[:36] + 1) / 2, train_y[:36])
    assert copies.nn_distance == 0.0 and not copies.goals()["copying"]


def test_report_without_any_measurable_class_says_so():
    r = EmojiReport(0.5, 0.5, {0: (1, 2)}, math.nan, math.nan, math.nan, 0.1, 0.1, ["a"], [0])
    assert not r.goals()["frechet"]
    assert "not measured" in r.lines()[1] and "left out, under 2 held-out emoji: a" in r.lines()[1]

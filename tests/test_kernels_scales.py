"""kernels/_scales.py: the named schedules and ScaleLayout, the one source of offsets and token-to-scale maps."""

import pytest
import torch

from kernels import SCHEDULES, ScaleLayout


def test_named_schedules_are_the_published_ones():
    # The published VAR models' lists (the 256 and 512 px checkpoints) and Infinity's square 1024 px list.
    assert SCHEDULES["256"] == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert SCHEDULES["512"] == (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
    assert SCHEDULES["1024"] == (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
    assert [ScaleLayout.of(p).num_tokens for p in SCHEDULES.values()] == [680, 2240, 10521]
    assert all(pns[-1] == int(px) // 16 for px, pns in SCHEDULES.items())  # the finest map is the f16 latent


def test_layout_offsets_bounds_and_ids():
    lay = ScaleLayout.of([1, 2, 3])
    assert lay.patch_nums == (1, 2, 3) and lay.sizes == (1, 4, 9) and lay.num_tokens == 14 and lay.num_scales == 3
    assert lay.bounds == ((0, 1), (1, 5), (5, 14)) and lay.offsets == (0, 1, 5, 14)
    assert [lay.begin(s) for s in range(3)] == [0, 1, 5]
    assert lay.scale_ids().tolist() == [0] + [1] * 4 + [2] * 9
    assert ScaleLayout.of(SCHEDULES["512"]).bounds[-1] == (1216, 2240)


def test_layout_split_is_the_inverse_of_cat():
    lay = ScaleLayout.of((1, 2, 3))
    x = torch.arange(2 * 14 * 3).view(2, 14, 3)
    parts = lay.split(x)
    assert [p.shape[1] for p in parts] == [1, 4, 9] and torch.equal(torch.cat(parts, 1), x)
    assert [p.shape[-1] for p in lay.split(torch.zeros(3, 14), dim=-1)] == [1, 4, 9]


def test_layouts_are_cached_and_immutable():
    assert ScaleLayout.of([1, 2, 3]) is ScaleLayout.of((1, 2, 3))
    lay = ScaleLayout.of((1, 2))
    assert ScaleLayout.of(lay) is lay
    with pytest.raises(AttributeError):
        lay.num_tokens = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad, match",
    [
        ((), "at least one scale"),
        ((1, 0), "positive ints"),
        ((1, 2.0), "positive ints"),
        ((True, 2), "positive ints"),
        ("12", "list or tuple"),
        (torch.tensor([1, 2]), "list or tuple"),
        (3, "list or tuple"),
    ],
)
def test_bad_schedules_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        ScaleLayout.of(bad)

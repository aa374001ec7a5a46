import pytest
import torch
from helpers import tiny_var

from var import VAR, SamplingSettings, edit
from var.edit import keep_masks


@pytest.fixture
def model() -> VAR:
    return tiny_var(seed=1)


def test_keep_masks_area_resize_threshold():
    mask = torch.zeros(1, 32, 32)
    mask[:, :16, :16] = 1  # top-left quarter regenerated
    keep = keep_masks(mask, (1, 2, 3, 4))
    assert keep[0].tolist() == [[True]]  # 1/4 of the single token is masked
    assert keep[1].tolist() == [[False, True, True, True]]
    assert keep[3].view(4, 4)[:2, :2].logical_not().all() and keep[3].sum() == 12
    # 3x3: the centre token is 1/4 masked, the top-left one fully
    assert keep[2].view(3, 3).tolist() == [[False, True, True], [True, True, True], [True, True, True]]


@pytest.mark.parametrize("cfg", [0.0, 3.0])
@pytest.mark.parametrize("more_smooth", [False, True], ids=["tokens", "more_smooth"])
def test_tokens_outside_the_mask_are_the_images(model, tiny_vae, cfg, more_smooth):
    torch.manual_seed(5)
    image = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(32, 32)
    mask[8:24, 4:30] = 1  # in-painting of a central box
    gt = tiny_vae.img_to_idx(image * 2 - 1)
    imgs, idx = edit(
        model, tiny_vae, image, mask, label=[3, 10], cfg=cfg, seed=0, more_smooth=more_smooth, return_tokens=True
    )
    assert imgs.shape == (2, 3, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1
    regenerated = 0
    for keep, t, t_gt in zip(keep_masks(mask[None].expand(2, -1, -1), model.patch_nums), idx, gt):
        assert torch.equal(t[keep], t_gt[keep])
        regenerated += (t[~keep] != t_gt[~keep]).sum().item()
    assert regenerated > 0  # the model did sample inside


def test_empty_mask_reconstructs_and_full_mask_samples(model, tiny_vae):
    image = torch.rand(3, 32, 32)
    gt = tiny_vae.img_to_idx(image[None] * 2 - 1)
    out, idx = edit(model, tiny_vae, image, torch.zeros(32, 32), label=1, return_tokens=True)
    assert all(torch.equal(a, b) for a, b in zip(idx, gt))
    torch.testing.assert_close(out, tiny_vae.idx_to_img(gt).add(1).mul(0.5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        edit(model, tiny_vae, image * 2 - 1, torch.zeros(32, 32), label=1)


def test_settings_object_and_keyword_changes_are_one_rule(model, tiny_vae):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(32, 32)
    mask[:, 16:] = 1  # the right half
    s = SamplingSettings(cfg=2.0, top_k=5, seed=3)
    out = edit(model, tiny_vae, image, mask, 1, s)
    assert torch.equal(out, edit(model, tiny_vae, image, mask, 1, cfg=2.0, top_k=5, seed=3))
    assert not torch.equal(out, edit(model, tiny_vae, image, mask, 1, s, seed=4))  # the call's seed wins

import pytest
import torch

from tokenizer import DigitsDataset
from var.digits_eval import frechet_distance, judge_samples, load_judge


@pytest.fixture(scope="module")
def cache(nextscale_cache):
    return nextscale_cache  # the run's shared judge cache (conftest.py): the 16 px judge is trained once


def test_judge_recognises_real_digits_and_caches(cache):
    judge = load_judge(16, cache_dir=cache)
    assert (cache / "digits_judge_16px.safetensors").is_file()
    val = DigitsDataset("val", image_size=16)
    report = judge_samples((val.images + 1) / 2, val.labels, judge)
    assert report.accuracy > 0.93 and report.num_samples == len(val)
    assert report.frechet < 5.0  # held-out digits against themselves (feature noise only)
    # the cached judge is the same network
    again = load_judge(16, cache_dir=cache)
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), again.state_dict().values()))
    # wrong labels: accuracy collapses, and the report names every class
    wrong = judge_samples((val.images + 1) / 2, (val.labels + 1) % 10, judge)
    assert wrong.accuracy < 0.2 and set(wrong.per_class) == set(range(10))
    assert "right per class" in report.summary()


def test_first_use_inside_judge_samples_trains_the_judge(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTSCALE_CACHE", str(tmp_path))  # no cached judge: judge_samples (no_grad) trains one
    val = DigitsDataset("val", image_size=8)
    assert judge_samples((val.images + 1) / 2, val.labels).accuracy > 0.8
    assert (tmp_path / "digits_judge_8px.safetensors").is_file()


def test_noise_is_far_from_digits(cache):
    judge = load_judge(16, cache_dir=cache)
    noise = torch.rand(100, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    val = DigitsDataset("val", image_size=16)
    real = judge_samples((val.images[:100] + 1) / 2, val.labels[:100], judge)
    fake = judge_samples(noise, val.labels[:100], judge)
    assert fake.frechet > 5 * real.frechet


def test_frechet_distance_of_shifted_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 4, generator=g).double().numpy()
    b = a + 2.0  # same covariance, mean moved by 2 in each of 4 dims: distance 16
    assert abs(frechet_distance(a, b) - 16.0) < 1e-6
    assert abs(frechet_distance(a, a)) < 1e-6


def test_thresholds_compare_counts_not_rounded_floats():
    """18 of 20 is 90%: the float32 mean of those votes, 0.8999999761581421, failed `>= 0.9`."""
    from var.digits_eval import DigitsReport

    assert torch.tensor([1.0] * 18 + [0.0] * 2).mean().item() < 0.9  # the float that failed
    report = DigitsReport({0: (18, 20), 1: (20, 20)}, frechet=0.0)
    assert report.every_class_at_least(0.9) and report.every_class_at_least("0.9")
    assert not report.every_class_at_least(0.91)
    assert not DigitsReport({0: (17, 20), 1: (20, 20)}, frechet=0.0).every_class_at_least(0.9)
    assert report.num_samples == 40 and report.accuracy == 38 / 40 and report.min_class_accuracy == 0.9
    assert "0:18/20" in report.summary()

"""The batches a run reads (scaffold.batches): a function of (seed, step, rank), so a resume repeats them."""

from scaffold.batches import StepBatchSampler


def test_step_batch_sampler_is_a_function_of_the_step():
    a = StepBatchSampler(10, 4, seed=1)
    b = StepBatchSampler(10, 4, seed=1, start_step=2)
    it = iter(a)
    first = [next(it) for _ in range(4)]
    assert next(iter(b)) == first[2]
    assert sorted(first[0] + first[1] + first[2][:2]) == list(range(10))  # one pass is a permutation
    r0, r1 = StepBatchSampler(10, 2, 1, rank=0, world_size=2), StepBatchSampler(10, 2, 1, rank=1, world_size=2)
    assert r0.batch(0) + r1.batch(0) == a.batch(0)

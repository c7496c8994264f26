"""Augmentation: RandomCropFlip against a pixel-by-pixel loop on every backend, its plans
deterministic for a seed and new each epoch, and fit's hook: every training batch augmented
(each process its rows of one plan per batch), validation data never."""

import numpy as np
import pytest

from portacnn import RandomCropFlip, reference
from portacnn.backends import to_numpy
from portacnn.training import ONE_PROCESS, OneProcess
from portacnn.training.augment import epoch_rng

from helpers import small_net, toy_data


@pytest.mark.parametrize("padding,flip", [(2, True), (0, True), (1, False)])
def test_crop_and_flip_match_the_pixel_loop(backend, padding, flip):
    x = np.random.default_rng(0).normal(size=(5, 2, 4, 6))
    augment = RandomCropFlip(padding, flip=flip)
    plan = augment.plan(np.random.default_rng(1), 5)
    out = augment.apply(backend.asarray(x, dtype="float64"), plan)
    assert out.shape == x.shape and out.dtype == backend.asarray(x, dtype="float64").dtype
    assert np.array_equal(to_numpy(out), reference.random_crop_flip(x, plan, padding))
    assert plan[:, :2].max() <= 2 * padding and (plan[:, 2].max() == 1) == flip


def test_plans_cover_every_offset_and_flip_evenly():
    plan = RandomCropFlip(1).plan(np.random.default_rng(0), 9000)
    counts = np.unique(plan, axis=0, return_counts=True)[1]
    assert len(counts) == 3 * 3 * 2 and counts.min() > 400          # 500 expected each
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    assert np.array_equal(RandomCropFlip(1).apply(x, [[1, 1, 0]]), x)         # centred: itself
    assert np.array_equal(RandomCropFlip(1).apply(x, [[1, 1, 1]]), x[..., ::-1])


class Recorder:
    """RandomCropFlip that keeps each batch it was given and each plan it drew."""

    def __init__(self):
        self.inner, self.batches, self.plans = RandomCropFlip(2), [], []

    def plan(self, rng, n):
        self.plans.append(self.inner.plan(rng, n))
        return self.plans[-1]

    def apply(self, x, plan):
        self.batches.append((to_numpy(x).copy(), np.array(plan)))
        return self.inner.apply(x, plan)


class Half(OneProcess):
    """One of two processes, without MPI: its half of each batch (what DataParallel shards)."""

    def __init__(self, rank):
        self.rank = rank

    def shard(self, start, stop):
        middle = (start + stop) // 2
        return (start, middle) if self.rank == 0 else (middle, stop)


def _fit(replicas=ONE_PROCESS, seed=3, epochs=2):
    x, y = toy_data(10)
    recorder = Recorder()
    small_net().fit(x, y, epochs=epochs, batch_size=4, optimizer="sgd", seed=seed, verbose=0,
                    validation_data=toy_data(7, seed=1), augment=recorder, replicas=replicas)
    return recorder


def test_fit_augments_every_training_batch_and_no_validation_batch():
    recorder = _fit()
    assert [b.shape[0] for b, _ in recorder.batches] == [4, 4, 2] * 2       # never the 7 rows
    assert [p.shape[0] for p in recorder.plans] == [4, 4, 2] * 2


def test_plans_repeat_for_a_seed_and_change_between_epochs():
    first, again, other = _fit(), _fit(), _fit(seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first.plans, again.plans))
    assert not np.array_equal(first.plans[0], first.plans[3])              # epoch 2's batch 1
    assert not np.array_equal(first.plans[0], other.plans[0])
    assert np.array_equal(epoch_rng(3, 1).integers(0, 99, 8), epoch_rng(3, 1).integers(0, 99, 8))


def test_each_process_applies_its_rows_of_the_whole_batchs_plan():
    whole, ranks = _fit(epochs=1), [_fit(Half(r), epochs=1) for r in range(2)]
    for i, (x, plan) in enumerate(whole.batches):
        parts = [rank.batches[i] for rank in ranks]
        assert np.array_equal(np.concatenate([p for _, p in parts]), plan)
        assert np.array_equal(np.concatenate([b for b, _ in parts]), x)    # the same rows
        assert all(np.array_equal(rank.plans[i], whole.plans[i]) for rank in ranks)


def test_bad_augmentations_are_refused_with_the_fix():
    x, y = toy_data(10)
    with pytest.raises(TypeError, match=r"augment must have plan\(rng, n\) and apply"):
        small_net().fit(x, y, augment=lambda xb: xb, verbose=0)
    with pytest.raises(ValueError, match="padding must be an int >= 0, got -1"):
        RandomCropFlip(-1)
    with pytest.raises(ValueError, match=r"takes image batches \(N, C, H, W\), got shape \(3, 4\)"):
        RandomCropFlip().apply(np.zeros((3, 4)), np.zeros((3, 3), dtype=int))


def test_a_batch_costs_six_operations_and_no_host_read_whatever_its_size():
    """One upload of the indices, two additions, the padding (two) and one take: launches on
    a GPU, counted on the recording namespace; never a read back."""
    from recording import recording, unwrap, wrap

    augment = RandomCropFlip()
    for n in (2, 64):
        x = np.random.default_rng(n).normal(size=(n, 3, 8, 8))
        plan = augment.plan(np.random.default_rng(0), n)
        with recording() as rec:
            out = augment.apply(wrap(x), plan)
        assert (rec.ops, rec.host_reads) == (6, 0), rec.by_name
        assert np.array_equal(unwrap(out), reference.random_crop_flip(x, plan, 4))

"""Balanced mini-batches, hard-negative weights and bagging bootstraps (whole-slide mitosis paper, section V)."""

from __future__ import annotations

import numpy as np
import pytest

from histoscope.train.sampling import BalancedBatchSampler, bootstrap_negatives, hard_negative_weights


def _labels(n_pos=50, n_neg=400):
    return np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]


def test_every_batch_is_half_positive_and_every_positive_is_seen_once():
    y = _labels()
    s = BalancedBatchSampler(y, batch_size=16, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 7
    for b in batches:
        assert (y[b] == 1).sum() == (y[b] == 0).sum()
        assert len(set(b)) == len(b)
    pos = [i for b in batches for i in b if y[i] == 1]
    assert sorted(pos) == list(range(50))


def test_epochs_differ_and_replay_exactly():
    y = _labels()
    s = BalancedBatchSampler(y, batch_size=16, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 and e0 != e1


def test_negative_weights_steer_the_draw():
    y = _labels(n_pos=200, n_neg=100)
    w = np.zeros(100)
    w[:5] = 1.0  # only five negatives may be drawn
    s = BalancedBatchSampler(y, batch_size=20, negative_weights=w, seed=0)
    drawn = {i for b in s for i in b if y[i] == 0}
    assert drawn <= set(range(200, 205))


def test_hard_negative_weights_follow_probability_with_a_floor():
    w = hard_negative_weights(np.array([0.0, 0.5, 0.9]), floor=0.01)
    assert np.allclose(w, [0.01, 0.5, 0.9])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        hard_negative_weights(np.array([1.5]))


def test_bootstrap_is_n_of_n_with_replacement_and_seeded():
    c = bootstrap_negatives(np.ones(1000), rng=0)
    assert c.sum() == 1000 and (c == 0).mean() == pytest.approx(np.exp(-1), abs=0.05)
    assert np.array_equal(c, bootstrap_negatives(np.ones(1000), rng=0))
    assert not np.array_equal(c, bootstrap_negatives(np.ones(1000), rng=1))


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="even"):
        BalancedBatchSampler(_labels(), batch_size=15)
    with pytest.raises(ValueError, match="positives and negatives"):
        BalancedBatchSampler(np.zeros(10), batch_size=4)
    with pytest.raises(ValueError, match="400 finite"):
        BalancedBatchSampler(_labels(), batch_size=4, negative_weights=np.ones(3))

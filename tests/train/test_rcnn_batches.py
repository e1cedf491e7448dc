"""MITOS-RCNN batch composition: the MoNuSeg share of each batch and one pass over the mitoses per epoch."""

from __future__ import annotations

import pytest

from histoscope.train.rcnn import RcnnTrainConfig, _batches


@pytest.mark.parametrize("fraction, k_neg", [(0.0, 0), (0.25, 2), (0.5, 4)])
def test_each_batch_holds_its_share_of_negatives_and_an_epoch_sees_every_mitosis(fraction, k_neg):
    n_pos, n_neg = 50, 12
    cfg = RcnnTrainConfig(batch_size=8, monuseg_fraction=fraction, seed=3)
    batches = _batches(n_pos, n_neg, cfg, epoch=0)
    assert all(len(b) == 8 for b in batches)
    assert all(sum(i >= n_pos for i in b) == k_neg for b in batches)
    assert all(n_pos <= i < n_pos + n_neg for b in batches for i in b[8 - k_neg :])
    positives = [i for b in batches for i in b if i < n_pos]
    assert set(positives) == set(range(n_pos)) and len(batches) == -(-n_pos // (8 - k_neg))
    assert batches == _batches(n_pos, n_neg, cfg, epoch=0) and batches != _batches(n_pos, n_neg, cfg, epoch=1)

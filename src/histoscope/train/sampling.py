"""Batch samplers for detectors trained on rare positives (the whole-slide mitosis paper, section V).

Tellez et al. train on *balanced* mini-batches: half positives, half negatives, with the
negatives drawn uniformly (the "easy" model) or in proportion to a first model's mitosis
probability (hard-negative mining), each member of a bagging ensemble on its own bootstrap.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

__all__ = ["BalancedBatchSampler", "hard_negative_weights", "bootstrap_negatives"]


class BalancedBatchSampler:
    """Mini-batches of ``batch_size`` items, half positive and half negative.

    An epoch visits every positive once (shuffled); each batch's negatives are drawn from
    ``negatives`` with probability proportional to ``negative_weights`` (uniform by
    default), with replacement across the epoch and without replacement within a batch
    when there are enough of them.

    Parameters
    ----------
    labels : sequence of int
        Label of every dataset item; 1 = positive, anything else = negative.
    batch_size : int
        Even; 64 in the paper.
    negative_weights : array, optional
        One weight per *negative* item (in dataset order); need not be normalised.
    seed : int
        The epoch-``e`` stream is a function of ``(seed, e)`` only (repeatable, resumable).

    Examples
    --------
    >>> s = BalancedBatchSampler([1, 0, 0, 0, 1, 0], batch_size=4, seed=0)
    >>> [sorted(int(l) for l in np.asarray([1, 0, 0, 0, 1, 0])[b]) for b in s]
    [[0, 0, 1, 1]]
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, *, batch_size: int = 64, negative_weights: np.ndarray | None = None, seed: int = 0) -> None:
        labels = np.asarray(labels)
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be an even number >= 2, got {batch_size}")
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels != 1)
        if not len(self.positives) or not len(self.negatives):
            raise ValueError(f"a balanced batch needs positives and negatives; got {len(self.positives)} positive and {len(self.negatives)} negative items")
        if negative_weights is None:
            self.p = None
        else:
            w = np.asarray(negative_weights, dtype=float)
            if w.shape != self.negatives.shape or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
                raise ValueError(f"negative_weights must be {len(self.negatives)} finite non-negative numbers with a positive sum, got shape {w.shape}")
            self.p = w / w.sum()
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.positives) / (self.batch_size // 2))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        half = self.batch_size // 2
        pos = rng.permutation(self.positives)
        for b in range(len(self)):
            p = pos[b * half : (b + 1) * half]
            replace = len(self.negatives) < len(p) or (self.p is not None and np.count_nonzero(self.p) < len(p))
            n = rng.choice(self.negatives, size=len(p), replace=replace, p=self.p)
            batch = np.concatenate([p, n])
            yield rng.permutation(batch).tolist()


def hard_negative_weights(probabilities: np.ndarray, *, floor: float = 0.01) -> np.ndarray:
    """Sampling weights of negatives in proportion to a first model's mitosis probability.

    ``floor`` keeps every negative drawable (the paper resamples "proportionally to the
    probability"; a small floor stops the easy negatives from vanishing altogether).
    """
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 1 or (p < 0).any() or (p > 1).any():
        raise ValueError(f"probabilities must be a 1-D array in [0, 1], got shape {p.shape}, range [{p.min() if p.size else 0}, {p.max() if p.size else 0}]")
    return np.maximum(p, floor)


def bootstrap_negatives(weights: np.ndarray, *, rng: int | np.random.Generator | None = None) -> np.ndarray:
    """Bagging: a bootstrap (draw ``n`` of ``n`` with replacement, by ``weights``) as per-item counts.

    The counts are the member's new negative weights (an item drawn twice is twice as
    likely, one never drawn is out of this member's bag).
    """
    w = np.asarray(weights, dtype=float)
    g = np.random.default_rng(rng)
    idx = g.choice(len(w), size=len(w), replace=True, p=w / w.sum())
    return np.bincount(idx, minlength=len(w)).astype(float)

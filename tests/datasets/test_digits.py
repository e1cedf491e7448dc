"""The synthetic NIC task (digits in tilted / axis-aligned rectangles)."""

from __future__ import annotations

import numpy as np
import pytest

from histoscope.datasets.digits import CELL, digit_bank, digits_dataset, digits_image


def test_cells_hold_real_digits_of_the_recorded_class():
    d = digits_image(256, seed=3)
    bank, labels = digit_bank("all")
    n = 256 // CELL
    cells = d.image[..., 0].reshape(n, CELL, n, CELL).transpose(0, 2, 1, 3)
    assert (d.image[..., 0] == d.image[..., 1]).all() and (d.image[..., 1] == d.image[..., 2]).all()
    rows, cols = np.nonzero(d.cell_classes >= 0)
    for r, c in list(zip(rows, cols))[:200]:
        hits = np.flatnonzero((bank == cells[r, c]).all(axis=(1, 2)))
        assert len(hits) and d.cell_classes[r, c] in set(labels[hits])  # a load_digits image of that class
    empty = d.cell_classes < 0
    assert (cells[empty] == 0).all()


def test_rectangles_set_the_classes_and_the_label():
    for seed in range(6):
        d = digits_image(512, seed=seed)
        centres = np.arange(512 // CELL) * CELL + CELL // 2
        inside_t = d.tilted_mask[np.ix_(centres, centres)]
        inside_a = d.axis_mask[np.ix_(centres, centres)]
        assert inside_t.sum() > 20 and inside_a.sum() > 20
        assert (d.cell_classes[inside_t] == d.label).all()
        assert (d.cell_classes[inside_a] == d.axis_label).all()
        assert not (d.tilted_mask & d.axis_mask).any()
        assert d.angle in (45, 135)
        # the tilted rectangle's edges run diagonally: its bounding box is much larger than its area
        ys, xs = np.nonzero(d.tilted_mask)
        box = (np.ptp(xs) + 1) * (np.ptp(ys) + 1)
        assert d.tilted_mask.sum() < 0.8 * box
        ys, xs = np.nonzero(d.axis_mask)
        assert d.axis_mask.sum() > 0.97 * (np.ptp(xs) + 1) * (np.ptp(ys) + 1)
        long, short = d.tilted_size
        assert abs(d.tilted_mask.sum() - long * short) < 0.1 * long * short


def test_outside_digits_are_random():
    d = digits_image(1024, seed=0, density=0.5)
    centres = np.arange(1024 // CELL) * CELL + CELL // 2
    outside = ~(d.tilted_mask | d.axis_mask)[np.ix_(centres, centres)]
    classes = d.cell_classes[outside]
    assert 0.42 < (classes >= 0).mean() < 0.58
    counts = np.bincount(classes[classes >= 0], minlength=10)
    assert counts.min() > 0.6 * counts.mean()


def test_seeded_and_prefix_stable():
    a = digits_dataset(3, 128, seed=5)
    b = digits_dataset(5, 128, seed=5)
    for x, y in zip(a, b[:3]):
        assert np.array_equal(x.image, y.image) and x.label == y.label
    assert not np.array_equal(a[0].image, a[1].image)
    labels = [d.label for d in digits_dataset(60, 128, seed=1)]
    assert len(set(labels)) >= 8


def test_splits_are_disjoint_halves():
    tr, te = digit_bank("train"), digit_bank("test")
    assert len(tr[0]) + len(te[0]) == len(digit_bank("all")[0])
    d = digits_image(256, split="test", seed=2)
    n = 256 // CELL
    cells = d.image[..., 0].reshape(n, CELL, n, CELL).transpose(0, 2, 1, 3)[d.cell_classes >= 0]
    flat_tr = {c.tobytes() for c in tr[0]}
    flat_te = {c.tobytes() for c in te[0]}
    assert all(c.tobytes() in flat_te for c in cells)
    assert sum(c.tobytes() in flat_tr and c.tobytes() not in flat_te for c in cells) == 0


@pytest.mark.parametrize("kw", [{"size": 100}, {"size": 32}, {"rect_size": (0.5, 0.2)}, {"density": 1.5}, {"split": "val"}])
def test_bad_arguments(kw):
    size = kw.pop("size", 256)
    with pytest.raises(ValueError):
        digits_image(size, **kw)

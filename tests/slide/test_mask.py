"""Masks: exact coverage against a brute-force reference; tissue masks on real thumbnails."""

from __future__ import annotations

import numpy as np
import pytest

from histoscope import open_slide, tissue_mask
from histoscope.slide import Mask
from histoscope.slide.mask import pen_mask


def _brute_coverage(mask: np.ndarray, W: int, H: int, x, y, w, h) -> float:
    """Upsample the mask to level 0 by pixel replication and average over the rectangle."""
    rows = (np.arange(H) * mask.shape[0] // H)
    cols = (np.arange(W) * mask.shape[1] // W)
    full = mask[rows[:, None], cols[None, :]]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    inside = full[y0:y1, x0:x1].sum() if x1 > x0 and y1 > y0 else 0
    return inside / (w * h)


def test_coverage_matches_brute_force(rng):
    W, H = 400, 300
    arr = rng.random((30, 40)) > 0.5  # exact integer ratio: 10 level-0 px per mask px
    m = Mask(arr, (W, H))
    xs = rng.integers(-50, W, 200)
    ys = rng.integers(-50, H, 200)
    ws = rng.integers(1, 120, 200)
    hs = rng.integers(1, 120, 200)
    got = m.coverage(xs, ys, ws, hs)
    ref = np.array([_brute_coverage(arr, W, H, *v) for v in zip(xs, ys, ws, hs)])
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_coverage_full_and_empty():
    m = Mask(np.ones((5, 5), bool), (100, 100))
    assert m.coverage(0, 0, 100, 100) == pytest.approx(1.0)
    assert m.coverage(50, 50, 100, 100) == pytest.approx(0.25)  # three quarters off the slide
    assert Mask(np.zeros((5, 5), bool), (100, 100)).coverage(0, 0, 10, 10) == 0.0


def test_mask_knows_its_mpp():
    m = Mask(np.ones((100, 200), bool), (2000, 1000), (0.25, 0.25))
    assert m.downsample == (10.0, 10.0) and m.mpp == pytest.approx(2.5)


def test_blank_slide_has_no_tissue():
    s = open_slide(np.full((2000, 2000, 3), 242, np.uint8), mpp=0.5)
    assert tissue_mask(s).fraction == 0.0


def test_cmu_tissue_mask(cmu_svs):
    with open_slide(cmu_svs) as s:
        m = tissue_mask(s)
        assert m.mpp == pytest.approx(8.0, rel=0.05)
        assert 0.2 < m.fraction < 0.6
        th = s.thumbnail(400)
    inside = m.resized(th.shape[:2])
    # tissue is darker than what the mask calls background (real glass)
    assert th[inside].mean() < th[~inside].mean() - 40


@pytest.mark.parametrize("name", ["tcga-red-pen.png", "tcga-green-pen.png", "wsi-blue-pen.png"])
def test_pen_marks_are_not_tissue(shared, name):
    with open_slide(shared("thumbnails", name)) as s:
        m = tissue_mask(s)
        rgb = s.read_region((0, 0), s.dimensions)
    pen = pen_mask(rgb)
    assert pen.mean() > 0.01, "the fixture should contain pen ink"
    inside = m.resized(rgb.shape[:2])
    # almost no pen pixel is called tissue, and there is still tissue
    assert (inside & pen).sum() / pen.sum() < 0.05
    assert m.fraction > 0.1


def test_pen_mask_spares_real_he(shared):
    with open_slide(shared("stain_targets", "histolab", "tcga-lung-rgb.png")) as s:
        rgb = s.read_region((0, 0), s.dimensions)
    assert pen_mask(rgb).mean() < 0.01

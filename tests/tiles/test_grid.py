"""The tiling grid against a brute-force reference, sampling, and filters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histoscope import open_slide, tissue_mask
from histoscope.slide import Mask
from histoscope.tiles import TileSpec, sample_tiles, tile_grid


def _brute_grid(W, H, extent, stride, drop=True):
    out = []
    y = 0.0
    while (y + extent <= H + 1e-9) if drop else (y < H):
        x = 0.0
        while (x + extent <= W + 1e-9) if drop else (x < W):
            out.append((round(x), round(y)))
            if not drop and x + extent >= W:
                break
            x += stride
        if not drop and y + extent >= H:
            break
        y += stride
    return out


@pytest.mark.parametrize("size,stride,overlap", [(256, None, None), (256, None, 0.3), (100, 37.0, None), (512, None, 0.5)])
def test_grid_matches_brute_force(size, stride, overlap):
    s = open_slide(np.zeros((1999, 2501, 3), np.uint8) + 200, mpp=0.5)
    t = tile_grid(s, TileSpec(size=size, mpp=0.5, stride=stride, overlap=overlap))
    step = stride if stride is not None else size * (1 - (overlap or 0))
    ref = _brute_grid(2501, 1999, size, step)
    assert list(zip(t["x"], t["y"])) == ref
    assert (t["w0"] == size).all() and (t["mpp"] == 0.5).all()


def test_overlap_03_shares_30_percent():
    s = open_slide(np.zeros((1000, 1000, 3), np.uint8), mpp=0.5)
    t = tile_grid(s, TileSpec(size=100, mpp=0.5, overlap=0.3))
    xs = np.unique(t["x"])
    assert np.all(np.diff(xs) == 70)


def test_grid_at_coarser_mpp_uses_level0_footprint():
    s = open_slide(np.zeros((1000, 2000, 3), np.uint8), mpp=0.25)
    t = tile_grid(s, TileSpec(size=128, mpp=1.0))
    assert (t["w0"] == 512).all() and (t["downsample"] == 4.0).all()
    assert list(zip(t["x"], t["y"]))[:3] == [(0, 0), (512, 0), (1024, 0)]
    assert len(t) == (2000 // 512) * (1000 // 512)


def test_edge_pad_covers_everything():
    s = open_slide(np.zeros((300, 500, 3), np.uint8), mpp=0.5)
    t = tile_grid(s, TileSpec(size=256, mpp=0.5), edge="pad")
    assert list(zip(t["x"], t["y"])) == [(0, 0), (256, 0), (0, 256), (256, 256)]
    assert len(tile_grid(s, TileSpec(size=256, mpp=0.5))) == 1


def test_region_grid():
    s = open_slide(np.zeros((1000, 1000, 3), np.uint8), mpp=0.5)
    t = tile_grid(s, TileSpec(size=100, mpp=0.5), region=(150, 220, 300, 200))
    assert t["x"].min() == 150 and t["y"].min() == 220 and len(t) == 3 * 2


def test_tissue_and_annotation_filters():
    img = np.full((400, 400, 3), 240, np.uint8)
    s = open_slide(img, mpp=0.5)
    tissue = Mask(np.pad(np.ones((20, 20), bool), ((0, 20), (0, 20))), (400, 400))  # top-left quarter
    t = tile_grid(s, TileSpec(size=100, mpp=0.5), tissue=tissue, min_tissue=0.5)
    assert set(zip(t["x"], t["y"])) == {(0, 0), (100, 0), (0, 100), (100, 100)}
    ann = Mask(np.pad(np.ones((10, 40), bool), ((0, 30), (0, 0))), (400, 400))  # top 100 px rows
    t2 = tile_grid(s, TileSpec(size=100, mpp=0.5), tissue=tissue, annotation=ann, min_annotation=0.5)
    assert set(zip(t2["x"], t2["y"])) == {(0, 0), (100, 0), (200, 0), (300, 0)}
    assert "annotation" in t2.columns


def test_validation():
    with pytest.raises(ValueError, match="not both"):
        TileSpec(size=256, stride=100, overlap=0.3)
    with pytest.raises(ValueError, match="overlap"):
        TileSpec(size=256, overlap=1.0)
    with pytest.raises(ValueError, match="positive int"):
        TileSpec(size=0)
    s = open_slide(np.zeros((100, 100, 3), np.uint8), mpp=0.5)
    with pytest.raises(ValueError, match="needs a tissue mask"):
        tile_grid(s, TileSpec(size=10, mpp=0.5), min_tissue=0.5)


def test_sample_tiles_deterministic_and_in_tissue(cmu_svs):
    with open_slide(cmu_svs) as s:
        m = tissue_mask(s)
        a = sample_tiles(s, 50, TileSpec(size=128, mpp=0.5), tissue=m, min_tissue=0.5, rng=7)
        b = sample_tiles(s, 50, TileSpec(size=128, mpp=0.5), tissue=m, min_tissue=0.5, rng=7)
        c = sample_tiles(s, 50, TileSpec(size=128, mpp=0.5), tissue=m, min_tissue=0.5, rng=8)
    assert len(a) == 50
    pd.testing.assert_frame_equal(a, b)
    assert not a[["x", "y"]].equals(c[["x", "y"]])
    assert (a["tissue"] >= 0.5).all()
    W, H = s.dimensions
    assert (a["x"] >= 0).all() and (a["x"] + a["w0"] <= W).all() and (a["y"] + a["h0"] <= H).all()

"""Hotspot (Tellez et al. 2018), grades and per-10-HPF categories (MITOS-RCNN).

The sliding-disk counts are checked against a brute-force count with the same discretisation
(exact) and against a direct point-in-circle count (within the grid tolerance).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from histoscope.exceptions import MaskError
from histoscope.mitosis.hotspot import (
    HPF_AREA_MM2,
    Hotspot,
    MitoticCount,
    disk_kernel,
    grade_from_count,
    hotspot,
    mitotic_category,
    mitotic_count_per_10hpf,
)
from histoscope.slide import Mask

MPP = 0.25
SHAPE = (24_000, 32_000)  # (height, width): 6 x 8 mm at 0.25 um/px -> 120 x 160 cells of 50 um


def _uniform(rng, n, shape=SHAPE):
    return np.column_stack([rng.uniform(0, shape[1], n), rng.uniform(0, shape[0], n)])


def _brute_grid_count(xy, row, col, cell_px, radius_cells, grid_shape):
    """Detections whose grid cell centre lies within the radius of cell (row, col), one by one."""
    n = 0
    for x, y in xy:
        c = min(int(x // cell_px), grid_shape[1] - 1)
        r = min(int(y // cell_px), grid_shape[0] - 1)
        if (r - row) ** 2 + (c - col) ** 2 <= radius_cells**2:
            n += 1
    return n


def test_returns_documented_fields(rng):
    hs = hotspot(_uniform(rng, 50), slide_shape=SHAPE, mpp=MPP)
    assert isinstance(hs, Hotspot)
    assert hs.count_map.shape == (120, 160) == hs.tissue.shape
    assert hs.count_map.dtype == np.float64
    assert hs.grid_um == 50.0 and hs.percentile == 95.0 and hs.area_mm2 == 2.0
    assert hs.radius_px == pytest.approx(math.sqrt(2e6 / math.pi) / MPP)
    assert hs.positions_over_tissue == 120 * 160
    assert hs.effective_area_mm2 == pytest.approx(2.0, rel=0.05)
    assert hs.cell_px == pytest.approx(200.0)
    xs, ys = hs.cell_centres()
    assert xs[0] == pytest.approx(100.0) and ys.shape == (120,)


def test_counts_match_brute_force_with_same_discretisation(rng):
    xy = _uniform(rng, 300)
    hs = hotspot(xy, slide_shape=SHAPE, mpp=MPP)
    radius_cells = hs.radius_px / hs.cell_px
    rows = rng.integers(0, hs.count_map.shape[0], 12)
    cols = rng.integers(0, hs.count_map.shape[1], 12)
    for r, c in zip(rows, cols):
        ref = _brute_grid_count(xy, r, c, hs.cell_px, radius_cells, hs.count_map.shape)
        assert hs.count_map[r, c] == ref
    assert np.array_equal(hs.count_map, np.round(hs.count_map))


def test_counts_match_point_in_circle_within_grid_tolerance(rng):
    xy = _uniform(rng, 400)
    hs = hotspot(xy, slide_shape=SHAPE, mpp=MPP)
    xs, ys = hs.cell_centres()
    slack = hs.cell_px / math.sqrt(2)  # a detection lies at most half a cell diagonal from its cell centre
    for r, c in zip(rng.integers(0, len(ys), 15), rng.integers(0, len(xs), 15)):
        d = np.hypot(xy[:, 0] - xs[c], xy[:, 1] - ys[r])
        lo = int((d <= hs.radius_px - slack).sum())
        hi = int((d <= hs.radius_px + slack).sum())
        assert lo <= hs.count_map[r, c] <= hi


def test_cluster_gives_max_at_cluster(rng):
    centre = np.array([21_000.0, 9_000.0])
    cluster = centre + rng.normal(0, 400, size=(30, 2))  # 100 um spread, well inside the 798 um disk
    background = _uniform(rng, 20)
    hs = hotspot(np.vstack([cluster, background]), slide_shape=SHAPE, mpp=MPP)
    assert np.hypot(*(np.array(hs.centre_xy) - centre)) < hs.radius_px / 2
    # all cluster points plus the background ones that fall in the disk, up to the grid tolerance
    d = np.hypot(*(np.vstack([cluster, background]) - np.array(hs.centre_xy)).T)
    slack = hs.cell_px / math.sqrt(2)
    assert int((d <= hs.radius_px - slack).sum()) <= hs.max_count <= int((d <= hs.radius_px + slack).sum())
    assert hs.max_count >= 30
    assert hs.count_map.max() == hs.max_count


def test_count_is_numpy_percentile_over_tissue(rng):
    xy = _uniform(rng, 500)
    tissue = np.zeros((60, 80), bool)
    tissue[10:50, 5:60] = True
    for p in (95.0, 50.0, 99.0):
        hs = hotspot(xy, slide_shape=SHAPE, mpp=MPP, tissue_mask=tissue, percentile=p)
        assert hs.count == pytest.approx(np.percentile(hs.count_map[hs.tissue], p))
        assert hs.positions_over_tissue == int(hs.tissue.sum())


def test_tissue_mask_excludes_positions(rng):
    # A dense cluster on the left half, tissue only on the right half.
    cluster = np.array([6_000.0, 12_000.0]) + rng.normal(0, 300, size=(40, 2))
    sparse = np.column_stack([rng.uniform(20_000, 32_000, 10), rng.uniform(0, 24_000, 10)])
    xy = np.vstack([cluster, sparse])
    tissue = np.zeros((24, 32), bool)
    tissue[:, 16:] = True  # x >= 16_000 px
    free = hotspot(xy, slide_shape=SHAPE, mpp=MPP)
    masked = hotspot(xy, slide_shape=SHAPE, mpp=MPP, tissue_mask=tissue)
    assert free.max_count >= 40
    assert masked.centre_xy[0] >= 16_000
    assert masked.max_count < free.max_count
    assert masked.positions_over_tissue == 120 * 80
    assert not masked.tissue[:, :80].any() and masked.tissue[:, 80:].all()
    assert np.array_equal(masked.count_map, free.count_map)  # the mask restricts positions, not detections


def test_tissue_mask_object_and_array_agree(rng):
    xy = _uniform(rng, 100)
    arr = rng.random((48, 64)) > 0.4
    a = hotspot(xy, slide_shape=SHAPE, mpp=MPP, tissue_mask=arr)
    b = hotspot(xy, slide_shape=SHAPE, mpp=MPP, tissue_mask=Mask(arr, (SHAPE[1], SHAPE[0])))
    assert np.array_equal(a.tissue, b.tissue) and a.count == b.count


def test_tissue_grid_is_majority_coverage():
    # Mask pixel = 4 x 4 grid cells: the grid tissue map is the mask upsampled exactly.
    arr = np.zeros((30, 40), bool)
    arr[3:9, 10:25] = True
    hs = hotspot(np.zeros((0, 2)), slide_shape=SHAPE, mpp=MPP, tissue_mask=arr)
    assert np.array_equal(hs.tissue, np.kron(arr, np.ones((4, 4), bool)))


def test_physical_scaling_gives_same_result(rng):
    xy_um = np.column_stack([rng.uniform(0, 8_000, 200), rng.uniform(0, 6_000, 200)])  # microns
    xy_um = np.vstack([xy_um, [4_000, 3_000] + rng.normal(0, 100, (25, 2))])
    a = hotspot(xy_um / 0.25, slide_shape=(24_000, 32_000), mpp=0.25)
    b = hotspot(xy_um / 0.5, slide_shape=(12_000, 16_000), mpp=0.5)
    assert np.array_equal(a.count_map, b.count_map)
    assert a.count == b.count and a.max_count == b.max_count
    assert a.radius_px == pytest.approx(2 * b.radius_px)
    assert np.allclose(np.array(a.centre_xy) * 0.25, np.array(b.centre_xy) * 0.5)


def test_empty_detections_give_zero():
    for empty in (np.zeros((0, 2)), [], np.zeros(0)):
        hs = hotspot(empty, slide_shape=SHAPE, mpp=MPP)
        assert hs.count == 0.0 and hs.max_count == 0 and not hs.count_map.any()
    mc = mitotic_count_per_10hpf(np.zeros((0, 2)), slide_shape=SHAPE, mpp=MPP)
    assert mc.count == 0 and mc.category == "low"


def test_detection_on_far_edge_is_accepted():
    hs = hotspot([[SHAPE[1], SHAPE[0]]], slide_shape=SHAPE, mpp=MPP)
    assert hs.max_count == 1 and hs.count_map[-1, -1] == 1


def test_partial_last_cell_and_mpp_pair(rng):
    shape = (10_050, 10_130)  # not a multiple of the 200 px cell
    xy = _uniform(rng, 60, shape)
    hs = hotspot(xy, slide_shape=shape, mpp=(MPP, MPP))
    assert hs.count_map.shape == (51, 51)
    assert hs.centre_xy[0] <= shape[1] and hs.centre_xy[1] <= shape[0]


def test_disk_kernel():
    assert disk_kernel(1.0).sum() == 5
    k = disk_kernel(15.96)
    assert k.shape == (31, 31) and k[15, 0] == 1 and k[0, 0] == 0
    assert k.sum() * 50**2 / 1e6 == pytest.approx(2.0, rel=0.05)


def test_grade_boundaries():
    assert [grade_from_count(c) for c in (0, 5, 5.99, 6, 19.5, 20, 100)] == [1, 1, 1, 2, 2, 3, 3]
    assert grade_from_count(3, theta1=3, theta2=4) == 2
    got = grade_from_count(np.array([[0, 6], [19, 20]]))
    assert got.shape == (2, 2) and got.tolist() == [[1, 2], [2, 3]]
    assert isinstance(grade_from_count(7), int)


def test_categories_at_boundaries():
    assert [mitotic_category(c) for c in (0, 9, 10, 19, 20)] == ["low", "low", "moderate", "moderate", "severe"]
    assert mitotic_category(9.5) == "low" and mitotic_category(19.5) == "severe"
    assert mitotic_category(np.array([9, 10, 19, 20])).tolist() == ["low", "moderate", "moderate", "severe"]


def test_per_10hpf_uses_max_of_10_field_disk(rng):
    centre = np.array([16_000.0, 12_000.0])
    cluster = centre + rng.normal(0, 300, size=(14, 2))
    mc = mitotic_count_per_10hpf(cluster, slide_shape=SHAPE, mpp=MPP)
    assert isinstance(mc, MitoticCount)
    assert mc.area_mm2 == pytest.approx(10 * HPF_AREA_MM2) and mc.hpf_area_mm2 == pytest.approx(0.19635, abs=1e-5)
    assert mc.count == 14 == mc.hotspot.max_count and mc.category == "moderate"
    assert mc.radius_px == pytest.approx(math.sqrt(10 * HPF_AREA_MM2 * 1e6 / math.pi) / MPP)
    more = np.vstack([cluster, centre + rng.normal(0, 300, size=(10, 2))])
    assert mitotic_count_per_10hpf(more, slide_shape=SHAPE, mpp=MPP).category == "severe"


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"mpp": -0.25}, ValueError, "mpp"),
        ({"mpp": 0.0}, ValueError, "mpp"),
        ({"mpp": "0.25"}, TypeError, "mpp"),
        ({"mpp": (0.25, 0.5)}, ValueError, "square"),
        ({"area_mm2": 0}, ValueError, "area_mm2"),
        ({"grid_um": -1}, ValueError, "grid_um"),
        ({"grid_um": 900.0}, ValueError, "radius"),
        ({"grid_um": 0.01}, ValueError, "grid"),
        ({"percentile": 101}, ValueError, "percentile"),
        ({"slide_shape": (24_000,)}, ValueError, "slide_shape"),
        ({"slide_shape": (0, 100)}, ValueError, "slide_shape"),
        ({"tissue_mask": np.ones((10, 40), bool)}, MaskError, "aspect"),
        ({"tissue_mask": np.ones((3,), bool)}, MaskError, "2-D"),
        ({"tissue_mask": np.zeros((30, 40), bool)}, MaskError, "tissue"),
        ({"tissue_mask": Mask(np.ones((3, 4), bool), (400, 300))}, MaskError, "slide"),
        ({"tissue_mask": [[True]]}, TypeError, "tissue_mask"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"slide_shape": SHAPE, "mpp": MPP, **kwargs}
    with pytest.raises(exc, match=match):
        hotspot([[100.0, 100.0]], **args)


@pytest.mark.parametrize(
    ("xy", "match"),
    [
        ([[100.0, 100.0, 1.0]], "shape"),
        ([[np.nan, 1.0]], "NaN"),
        ([[-1.0, 5.0]], "outside"),
        ([[10.0, SHAPE[0] + 1.0]], "outside"),
        ([[SHAPE[0], SHAPE[1]]], "outside"),  # swapped (x, y) / (height, width)
    ],
)
def test_bad_detections(xy, match):
    with pytest.raises(ValueError, match=match):
        hotspot(xy, slide_shape=SHAPE, mpp=MPP)


def test_bad_counts_and_thresholds():
    with pytest.raises(ValueError, match="theta1"):
        grade_from_count(3, theta1=20, theta2=6)
    with pytest.raises(ValueError, match="non-negative"):
        grade_from_count(-1)
    with pytest.raises(ValueError, match="non-negative"):
        mitotic_category(np.array([1.0, np.nan]))
    with pytest.raises(TypeError):
        mitotic_category("ten")
    with pytest.raises(ValueError, match="hpf_area_mm2"):
        mitotic_count_per_10hpf([], slide_shape=SHAPE, mpp=MPP, hpf_area_mm2=-0.2)
    with pytest.raises(ValueError, match="n_fields"):
        mitotic_count_per_10hpf([], slide_shape=SHAPE, mpp=MPP, n_fields=0)


def test_gigapixel_grid_is_fast():
    # 100k x 80k px at 0.25 um/px with 50 um cells: a 400 x 500 grid.
    rng = np.random.default_rng(1)
    shape = (80_000, 100_000)
    hs = hotspot(_uniform(rng, 5_000, shape), slide_shape=shape, mpp=0.25)
    assert hs.count_map.shape == (400, 500)
    assert hs.count > 0

"""histoscope.mitosis.candidates: the H&E candidate detector of Tellez et al. (2018).

Checked against the literal algorithm (argmin over the unsuppressed pixels, suppress a disk,
repeat), on synthetic dark figures with known positions, on real mitoses (AMi-Br crops centred
on a mitotic figure) and real tissue (MoNuSeg), and tile-by-tile against whole-image runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from histoscope.mitosis.candidates import (
    CANDIDATE_COLUMNS,
    DEFAULT_DIAMETER_UM,
    candidate_recall,
    candidates_per_mm2,
    detect_candidates,
    detect_candidates_slide,
    mean_intensity,
)
from histoscope.slide import Mask, open_slide

MPP = 0.25


# --------------------------------------------------------------------------- helpers


def literal_reference(
    image: np.ndarray, *, mpp: float, diameter_um: float, threshold: float, smooth_um: float
) -> list[tuple[int, int]]:
    """The paper's procedure, literally: global argmin, record, suppress a disk, until none below t."""
    work = mean_intensity(image, mpp=mpp, smooth_um=smooth_um).astype(np.float64)
    h, w = work.shape
    yy, xx = np.mgrid[:h, :w]
    r = diameter_um / mpp / 2
    found = []
    while True:
        idx = int(np.argmin(work))
        if not work.flat[idx] < threshold:
            return found
        y, x = divmod(idx, w)
        found.append((x, y))
        work[(xx - x) ** 2 + (yy - y) ** 2 <= r * r + 1e-9] = np.inf


def blobs_image(shape, centres, depths, *, sigma_px=4.0, background=225):
    """Glass with Gaussian dark figures: intensity background - depth * exp(-r^2 / 2 sigma^2)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    img = np.full(shape, float(background))
    for (cx, cy), depth in zip(centres, depths):
        img -= depth * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma_px**2))
    return np.repeat(np.clip(np.rint(img), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def textured(shape, rng, *, levels=None):
    """Random smooth texture in 0..255 (optionally quantised to a few levels, which makes ties)."""
    noise = ndi.gaussian_filter(rng.normal(size=shape), 3.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    img = 20 + 215 * noise
    if levels is not None:
        img = np.asarray(levels)[np.digitize(img, np.linspace(20, 235, len(levels) + 1)[1:-1])]
    gray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.stack([gray, np.clip(gray.astype(int) + 10, 0, 255).astype(np.uint8), gray], axis=2)


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------- the algorithm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_literal_argmin_loop(seed):
    rng = np.random.default_rng(seed)
    img = textured((90, 120), rng)
    kw = dict(mpp=0.5, diameter_um=8.0, threshold=120.0, smooth_um=0.5)
    got = detect_candidates(img, **kw)
    assert list(zip(got["x"], got["y"])) == literal_reference(img, **kw)
    assert len(got) > 10


def test_matches_literal_loop_with_ties():
    # four grey levels and no smoothing: most pixels tie, the order must still be np.argmin's
    img = textured((70, 80), np.random.default_rng(5), levels=[30, 60, 100, 200])
    kw = dict(mpp=1.0, diameter_um=9.0, threshold=110.0, smooth_um=0.0)
    got = detect_candidates(img, **kw)
    assert list(zip(got["x"], got["y"])) == literal_reference(img, **kw)


def test_synthetic_figures_found_at_their_centres_darkest_first():
    centres = [(40, 50), (160, 45), (100, 150), (220, 200)]
    depths = [120, 190, 160, 150]  # minima about 112, 46, 74, 84 after the default smoothing
    img = blobs_image((260, 280), centres, depths)
    found = detect_candidates(img, mpp=MPP, threshold=150)
    assert list(found.columns) == list(CANDIDATE_COLUMNS)
    assert len(found) == 4
    expected_order = np.argsort([225 - d for d in depths])
    for row, k in zip(found.itertuples(), expected_order):
        cx, cy = centres[k]
        assert abs(row.x - cx) <= 1 and abs(row.y - cy) <= 1
    assert found["intensity"].is_monotonic_increasing
    assert found["x"].dtype == np.int64 and found["y"].dtype == np.int64


def test_suppression_distance_and_coverage():
    img = textured((150, 160), np.random.default_rng(11))
    mpp, d, t = 0.5, 10.0, 130.0
    found = detect_candidates(img, mpp=mpp, diameter_um=d, threshold=t)
    xy = found[["x", "y"]].to_numpy(float)
    r_px = d / mpp / 2
    dist = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > r_px  # no candidate inside another's disk
    # every pixel below t lies within d/2 of a candidate (nothing below t remains)
    dark = np.argwhere(mean_intensity(img, mpp=mpp) < t)[:, ::-1]
    gap = np.sqrt(((dark[:, None] - xy[None]) ** 2).sum(-1)).min(axis=1)
    assert gap.max() <= r_px + 1e-9


def test_diameter_is_physical():
    # two figures 40 px apart: 10 um at 0.25 um/px (one 25 um disk covers both), 40 um at 1 um/px
    img = blobs_image((100, 160), [(50, 50), (90, 50)], [180, 150], sigma_px=3.0)
    assert len(detect_candidates(img, mpp=0.25)) == 1
    assert len(detect_candidates(img, mpp=1.0, smooth_um=0.25)) == 2


def test_threshold_respected():
    img = blobs_image((120, 240), [(60, 60), (180, 60)], [100, 160])  # minima about 131 and 74
    smooth = mean_intensity(img, mpp=MPP)
    found = detect_candidates(img, mpp=MPP, threshold=90)
    assert [(r.x, r.y) for r in found.itertuples()] == [(180, 60)]
    assert found["intensity"].iloc[0] == pytest.approx(smooth[60, 180])
    pale = float(smooth[60, 60])
    assert 125 < pale < 135
    assert len(detect_candidates(img, mpp=MPP, threshold=pale)) == 1  # not strictly below
    assert len(detect_candidates(img, mpp=MPP, threshold=pale + 0.01)) == 2
    # a minimum exactly at the threshold is not below it
    flat = np.full((50, 50, 3), 90, np.uint8)
    empty = detect_candidates(flat, mpp=MPP, threshold=90)
    assert empty.empty and list(empty.columns) == list(CANDIDATE_COLUMNS)
    assert len(detect_candidates(flat, mpp=MPP, threshold=90.5)) > 0


def test_max_candidates_keeps_the_darkest():
    img = textured((120, 120), np.random.default_rng(3))
    full = detect_candidates(img, mpp=0.5, diameter_um=8, threshold=150)
    top = detect_candidates(img, mpp=0.5, diameter_um=8, threshold=150, max_candidates=5)
    pd.testing.assert_frame_equal(top, full.iloc[:5])
    assert detect_candidates(img, mpp=0.5, max_candidates=0).empty


@pytest.mark.parametrize(
    "image, error",
    [
        (np.zeros((20, 20, 3), np.float32), TypeError),
        (np.zeros((20, 20, 3), np.uint16), TypeError),
        (np.zeros((20, 20), np.uint8), ValueError),
        (np.zeros((20, 20, 4), np.uint8), ValueError),
        (np.zeros((0, 20, 3), np.uint8), ValueError),
        ([[[0, 0, 0]]], TypeError),
    ],
)
def test_bad_images(image, error):
    with pytest.raises(error, match="image"):
        detect_candidates(image, mpp=MPP)


def test_bad_parameters():
    img = np.full((20, 20, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="mpp must be positive.*-1"):
        detect_candidates(img, mpp=-1)
    with pytest.raises(ValueError, match="diameter_um"):
        detect_candidates(img, mpp=MPP, diameter_um=0)
    with pytest.raises(ValueError, match="max_candidates"):
        detect_candidates(img, mpp=MPP, max_candidates=-2)
    with pytest.raises(TypeError):
        detect_candidates(img, MPP)  # keyword-only


# --------------------------------------------------------------------------- recall and density helpers


def test_candidate_recall_and_density():
    cand = pd.DataFrame({"x": [10, 100], "y": [10, 10], "intensity": [50.0, 60.0]})
    truth = [[10, 42], [100, 10], [300, 300]]  # 32 px = 8 um (inclusive), 0 px, far
    assert candidate_recall(cand, truth, mpp=MPP) == pytest.approx(2 / 3)
    assert candidate_recall(cand, truth, mpp=0.5) == pytest.approx(1 / 3)  # 32 px = 16 um
    assert candidate_recall(np.zeros((0, 2)), truth, mpp=MPP) == 0.0
    assert np.isnan(candidate_recall(cand, np.zeros((0, 2)), mpp=MPP))
    assert candidates_per_mm2(50, (1000, 1000), mpp=0.25) == pytest.approx(800.0)
    assert candidates_per_mm2(1, (2000, 500, 3), mpp=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape_px"):
        candidates_per_mm2(1, (0, 10), mpp=1.0)


# --------------------------------------------------------------------------- whole slides


def test_slide_equals_array_on_synthetic_image():
    img = textured((300, 420), np.random.default_rng(8))
    kw = dict(diameter_um=10.0, threshold=110.0, smooth_um=0.5)
    ref = detect_candidates(img, mpp=0.5, **kw)
    with open_slide(img, mpp=0.5) as slide:
        got = detect_candidates_slide(slide, mpp=0.5, tile=64, **kw)  # 5 x 7 tiles
    assert len(ref) > 30
    pd.testing.assert_frame_equal(got, ref)


def test_slide_coordinates_are_level0_when_reading_coarser():
    centres = [(80, 100), (300, 220), (500, 90)]
    img = blobs_image((320, 600), centres, [180, 170, 160], sigma_px=6.0)
    with open_slide(img, mpp=0.25) as slide:
        got = detect_candidates_slide(slide, mpp=0.5, tile=128)  # read at half resolution
    assert len(got) == 3
    for row, (cx, cy) in zip(got.itertuples(), centres):
        assert abs(row.x - cx) <= 2 and abs(row.y - cy) <= 2


def test_slide_mask_skips_tiles_and_drops_outside():
    img = textured((400, 400), np.random.default_rng(4))
    kw = dict(diameter_um=8.0, threshold=120.0)
    ref = detect_candidates(img, mpp=0.5, **kw)
    inside = np.zeros((8, 8), bool)
    inside[:, :4] = True  # left half of the slide
    with open_slide(img, mpp=0.5) as slide:
        mask = Mask(inside, slide.dimensions, slide.mpp)
        got = detect_candidates_slide(slide, mpp=0.5, tile=96, mask=mask, **kw)
    expected = ref.loc[ref["x"] < 200].reset_index(drop=True)
    assert len(expected) > 10
    pd.testing.assert_frame_equal(got, expected)


def test_slide_rejects_non_slides():
    with pytest.raises(TypeError, match="open_slide"):
        detect_candidates_slide(np.zeros((10, 10, 3), np.uint8))
    with open_slide(np.zeros((10, 10, 3), np.uint8), mpp=0.25) as slide, pytest.raises(ValueError, match="tile"):
        detect_candidates_slide(slide, tile=4)


# --------------------------------------------------------------------------- real data


def test_real_slide_tiles_equal_whole_image(shared):
    img = load_rgb(shared("monuseg", "images", "TCGA-NH-A8F7-01A-01-TS1.png"))  # the densest image
    ref = detect_candidates(img, mpp=MPP)
    with open_slide(img, mpp=MPP) as slide:
        got = detect_candidates_slide(slide, mpp=MPP, tile=256)  # 4 x 4 tiles of a 1000 px image
    pd.testing.assert_frame_equal(got, ref)


def test_amibr_mitoses_get_a_candidate(shared):
    """At the defaults, ~98% of real mitotic figures have a candidate within 8 um of their centre.

    Measured on the shared data: 98.0% of these 201 crops (98.1% of all 2,210); the same
    detector puts a candidate within 8 um of off-centre points of the same crops only ~45%
    of the time, so the hits are not just candidate density.
    """
    folder = shared("mitosis", "amibr_128")
    files = pd.read_csv(folder / "labels.csv")["file"].to_numpy()[::11]
    centre, corners = [], []
    for f in files:
        found = detect_candidates(load_rgb(folder / f), mpp=MPP)
        centre.append(candidate_recall(found, [[64, 64]], mpp=MPP))
        corners.append(candidate_recall(found, [[32, 32], [96, 32], [32, 96], [96, 96]], mpp=MPP))
    assert len(files) == 201
    assert np.mean(centre) >= 0.95
    assert np.mean(centre) - np.mean(corners) > 0.3


def test_monuseg_density_and_speed(shared):
    """Candidates per mm^2 of real tissue at the defaults, and the time per 1000 x 1000 px image.

    Measured: 1,232-4,336 per mm^2 (median ~3,400; 77-271 per 0.0625 mm^2 image), near the
    saturation of a 25 um suppression disk (~4,500 per mm^2 for random packing) in dense
    tumour, fewer in pale tissue; 70-220 ms per image.
    """
    monuseg_images = {p.stem: load_rgb(p) for p in sorted(shared("monuseg", "images").glob("*.png"))}
    density = {}
    for name, img in monuseg_images.items():
        assert img.shape == (1000, 1000, 3)
        density[name] = candidates_per_mm2(len(detect_candidates(img, mpp=MPP)), img.shape, mpp=MPP)
    values = np.array(list(density.values()))
    assert len(values) == 8
    assert 2000 < np.median(values) < 4500, density
    assert values.min() > 500 and values.max() < 5000, density
    # the palest image (E2-A1B5) gets the fewest candidates
    assert min(density, key=density.get).startswith("TCGA-E2-A1B5")

    img = monuseg_images["TCGA-NH-A8F7-01A-01-TS1"]
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        detect_candidates(img, mpp=MPP)
        best = min(best, time.perf_counter() - t0)
    assert best < 2.0, f"{best:.2f} s for a 1000 x 1000 px image"


def test_default_diameter_is_papers():
    assert DEFAULT_DIAMETER_UM == 100 * 0.25

"""open_slide and read_region against direct OpenSlide / tifffile / Pillow reads on real files."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from PIL import Image

from histoscope import open_slide
from histoscope.exceptions import MppUnavailableError
from histoscope.slide import ArraySlide, OpenSlideSlide, PillowSlide, TiffSlide


def _direct(path, location, level, size):
    """What OpenSlide itself returns, flattened onto white the documented way."""
    rgba = np.asarray(openslide.OpenSlide(str(path)).read_region(location, level, size)).astype(np.float64)
    a = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


@pytest.mark.parametrize(
    "location,size",
    [((0, 0), (512, 512)), ((1000, 1500), (300, 200)), ((2000, 2900), (256, 256)), ((-100, -50), (300, 200))],
)
def test_read_region_matches_openslide_cmu(cmu_svs, location, size):
    with open_slide(cmu_svs) as s:
        assert isinstance(s, OpenSlideSlide)
        got = s.read_region(location, size)
    assert got.dtype == np.uint8 and got.shape == (size[1], size[0], 3)
    np.testing.assert_array_equal(got, _direct(cmu_svs, location, 0, size))


def test_read_region_matches_openslide_levels(tcga_svs):
    with open_slide(tcga_svs) as s:
        assert s.level_count == 2
        for level in (0, 1):
            got = s.read_region((1200, 800), (400, 300), level=level)
            np.testing.assert_array_equal(got, _direct(tcga_svs, (1200, 800), level, (400, 300)))


def test_metadata_cmu(cmu_svs):
    with open_slide(cmu_svs) as s:
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx((0.499, 0.499))
        assert s.mpp_source == "file"
        assert s.objective_power == 20.0
        assert set(s.associated_images) == {"label", "macro", "thumbnail"}
        label = s.associated_images["label"]
        assert label.dtype == np.uint8 and label.ndim == 3 and label.shape[2] == 3
        info = s.info()
        assert info["level_dimensions"] == [[2220, 2967]]


def test_mpp_override(tcga_svs):
    with open_slide(tcga_svs) as s:
        assert s.mpp is None
        with pytest.raises(MppUnavailableError, match="--slide-mpp"):
            s.read_region((0, 0), (10, 10), mpp=1.0)
    with open_slide(tcga_svs, mpp=0.25) as s:
        assert s.mpp == (0.25, 0.25) and s.mpp_source == "user"
        # 0.5 um/px = downsample 2: served from level 1 (downsample 2.0005, within 1%) without resampling
        res = s.resolve(mpp=0.5)
        assert res.level == 1 and not res.resample
        # 1.0 um/px: nearest finer level is 1, resampled by 2
        res = s.resolve(mpp=1.0)
        assert res.level == 1 and res.resample and res.downsample == pytest.approx(4.0)


def test_read_at_mpp_matches_downsampled_level0(cmu_svs):
    """Reading at 1 um/px agrees with an area-averaged level-0 read (trusted reference: skimage)."""
    from skimage.transform import downscale_local_mean

    with open_slide(cmu_svs, mpp=0.5) as s:
        got = s.read_region((1000, 1000), (128, 128), mpp=1.0).astype(float)
        ref = downscale_local_mean(s.read_region((1000, 1000), (256, 256)).astype(float), (2, 2, 1))
    assert np.abs(got - ref).mean() < 6.0  # bilinear vs box filter on real tissue


def test_padding_past_edge_is_white(cmu_svs):
    with open_slide(cmu_svs) as s:
        W, H = s.dimensions
        tile = s.read_region((W - 100, H - 50), (256, 256))
    assert (tile[50:, :] == 255).all() and (tile[:, 100:] == 255).all()
    assert (tile[:50, :100] != 255).any()


def test_thumbnail_matches_openslide(cmu_svs):
    with open_slide(cmu_svs) as s:
        th = s.thumbnail(512)
    assert max(th.shape[:2]) == 512
    ref = np.asarray(openslide.OpenSlide(str(cmu_svs)).get_thumbnail((512, 512)).convert("RGB")).astype(float)
    assert ref.shape[:2] == th.shape[:2] or abs(ref.shape[0] - th.shape[0]) <= 1
    h, w = min(ref.shape[0], th.shape[0]), min(ref.shape[1], th.shape[1])
    assert np.abs(th[:h, :w].astype(float) - ref[:h, :w]).mean() < 8.0


def test_tifffile_backend_matches_pillow(shared):
    path = shared("ihc", "kidney-48-5.tif")
    with open_slide(path) as s:
        assert isinstance(s, TiffSlide)
        ref = np.asarray(Image.open(path).convert("RGB"))
        assert s.dimensions == (ref.shape[1], ref.shape[0])
        np.testing.assert_array_equal(s.read_region((100, 200), (300, 150)), ref[200:350, 100:400])


def test_pillow_backend_rgba_png_is_flattened(shared):
    path = shared("stain_targets", "histolab", "tcga-lung-rgb.png")
    with open_slide(path) as s:
        assert isinstance(s, PillowSlide)
        ref = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(s.read_region((0, 0), s.dimensions), ref)
    rgba = shared("stain_targets", "torchstain", "target.png")
    with open_slide(rgba) as s:
        np.testing.assert_array_equal(s.read_region((0, 0), s.dimensions), np.asarray(Image.open(rgba).convert("RGB")))


def test_array_slide_roundtrip(rng):
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    s = open_slide(img, mpp=0.5)
    assert isinstance(s, ArraySlide) and s.dimensions == (400, 300)
    np.testing.assert_array_equal(s.read_region((10, 20), (50, 40)), img[20:60, 10:60])
    np.testing.assert_array_equal(s.read_region((0, 0), (400, 300)), img)
    # 1.0 um/px from a 0.5 um/px array: a 2x downsample of the same pixels
    half = s.read_region((0, 0), (200, 150), mpp=1.0)
    assert half.shape == (150, 200, 3)


def test_large_resampled_read_is_blockwise_identical(rng, monkeypatch):
    """Reading block by block (bounded memory) gives the same pixels as one big read."""
    import histoscope.slide.base as base

    img = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    s = open_slide(img, mpp=0.25)
    whole = s.read_region((0, 0), (400, 300), downsample=2.0)
    monkeypatch.setattr(base, "MAX_SOURCE_PIXELS", 64 * 64)
    blocks = s.read_region((0, 0), (400, 300), downsample=2.0)
    assert np.abs(whole.astype(int) - blocks.astype(int)).max() <= 1


def test_fast_tile_decoder_equals_openslide(cmu_svs, tcga_svs, rng):
    """The direct tile decoder is used where it agrees with OpenSlide, and gives OpenSlide's pixels."""
    from histoscope.slide.backends import OpenSlideSlide

    for path in (cmu_svs, tcga_svs):
        fast = OpenSlideSlide(path)
        plain = OpenSlideSlide(path, accelerate=False)
        assert fast._tiles is not None and 0 in fast._tiles.levels
        assert plain._tiles is None
        W, H = fast.dimensions
        for _ in range(15):
            w, h = int(rng.integers(1, 700)), int(rng.integers(1, 700))
            x, y = int(rng.integers(-w + 1, W)), int(rng.integers(-h + 1, H))
            np.testing.assert_array_equal(fast.read_region((x, y), (w, h)), plain.read_region((x, y), (w, h)))
        fast.close()
        plain.close()

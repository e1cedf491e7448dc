"""Tests for histoscope.datasets.synthetic (small slides, a few seconds in all)."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import openslide
import pytest
import tifffile

from histoscope.datasets import SyntheticSlideInfo, demo_slide, synthetic_slide
from histoscope.datasets import synthetic as synth

W, H, MPP, TILE = 2048, 1536, 0.5, 256


def _sha256(path: os.PathLike[str] | str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _gray(rgba: np.ndarray) -> np.ndarray:
    return np.asarray(rgba, dtype=np.float64)[..., :3].mean(axis=-1)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlideInfo:
    path = tmp_path_factory.mktemp("synthetic") / "slide.tiff"
    return synthetic_slide(
        path, width=W, height=H, mpp=MPP, tile=TILE, seed=3, n_mitoses=6, verbose=False
    )


def test_info(slide: SyntheticSlideInfo) -> None:
    assert slide.path.is_file()
    assert (slide.width, slide.height, slide.mpp, slide.seed) == (W, H, MPP, 3)
    assert slide.levels == [(2048, 1536), (1024, 768)]
    assert slide.mitoses.shape == (6, 2)
    assert np.all((slide.mitoses >= 0) & (slide.mitoses < [W, H]))
    frame = slide.mitoses_frame()
    assert list(frame.columns) == ["x", "y"]
    np.testing.assert_allclose(frame.to_numpy(), slide.mitoses)
    with pytest.raises(AttributeError):
        slide.width = 1  # type: ignore[misc]  # frozen


def test_opens_in_openslide(slide: SyntheticSlideInfo) -> None:
    assert openslide.OpenSlide.detect_format(str(slide.path)) == "generic-tiff"
    with openslide.OpenSlide(str(slide.path)) as osr:
        assert osr.level_count == 2
        assert osr.level_dimensions == ((2048, 1536), (1024, 768))
        np.testing.assert_allclose(osr.level_downsamples, [1.0, 2.0])
        props = osr.properties
        assert props["tiff.ResolutionUnit"] == "centimeter"
        assert float(props["tiff.XResolution"]) == pytest.approx(1e4 / MPP)
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert float(props[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(MPP)
        assert props["openslide.level[0].tile-width"] == str(TILE)


def test_opens_in_tifffile(slide: SyntheticSlideInfo) -> None:
    with tifffile.TiffFile(slide.path) as tf:
        assert tf.is_bigtiff
        pages = tf.pages
        assert len(pages) == 2
        assert [p.shape for p in pages] == [(1536, 2048, 3), (768, 1024, 3)]
        assert pages[0].is_tiled and pages[0].tilewidth == TILE
        assert pages[0].compression == tifffile.COMPRESSION.JPEG
        assert pages[1].subfiletype == 1
        assert not pages[0].subifds
        unit = pages[0].tags["ResolutionUnit"].value
        assert unit == tifffile.RESUNIT.CENTIMETER
        num, den = pages[0].tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(MPP)
        num, den = pages[1].tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(2 * MPP)
        level1 = pages[1].asarray()
    # the two readers agree
    with openslide.OpenSlide(str(slide.path)) as osr:
        via_os = np.asarray(osr.read_region((0, 0), 1, (1024, 768)))[..., :3]
    assert np.abs(via_os.astype(int) - level1).max() <= 2


def test_background_corners_are_glass(slide: SyntheticSlideInfo) -> None:
    with openslide.OpenSlide(str(slide.path)) as osr:
        for x, y in [(0, 0), (W - 64, 0), (0, H - 64), (W - 64, H - 64)]:
            g = _gray(osr.read_region((x, y), 0, (64, 64)))
            assert g.mean() > 235
            assert g.std() < 3


def test_mitoses_are_darker_than_tissue(slide: SyntheticSlideInfo) -> None:
    with openslide.OpenSlide(str(slide.path)) as osr:
        whole = _gray(osr.read_region((0, 0), 0, (W, H)))
        tissue = whole[whole < 225]
        assert 0.2 < tissue.size / whole.size < 0.7  # tissue_fraction 0.45
        median = np.median(tissue)
        nuclei_p1 = np.percentile(tissue, 1)
        for x, y in slide.mitoses:
            r = 4  # px: 2 um
            loc = (int(round(x)) - r, int(round(y)) - r)
            g = _gray(osr.read_region(loc, 0, (2 * r + 1, 2 * r + 1)))
            assert g.mean() < median - 60
            assert g.min() <= nuclei_p1  # among the darkest pixels of the slide


def test_mitoses_in_tissue_and_apart(slide: SyntheticSlideInfo) -> None:
    m = slide.mitoses
    d = np.hypot(*(m[:, None, :] - m[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 40 / MPP - 1e-6
    with openslide.OpenSlide(str(slide.path)) as osr:
        for x, y in m:
            # 20 um around the figure: still tissue, not glass
            r = int(20 / MPP)
            ring = _gray(osr.read_region((int(x) - r, int(y) - r), 0, (2 * r, 2 * r)))
            assert np.median(ring) < 225


def test_deterministic_and_seed_dependent(tmp_path: os.PathLike[str]) -> None:
    kw = dict(width=1024, height=768, tile=256, n_mitoses=3, verbose=False)
    a = synthetic_slide(tmp_path / "a.tiff", seed=7, **kw)
    b = synthetic_slide(tmp_path / "b.tiff", seed=7, **kw)
    c = synthetic_slide(tmp_path / "c.tiff", seed=8, **kw)
    assert _sha256(a.path) == _sha256(b.path)
    np.testing.assert_array_equal(a.mitoses, b.mitoses)
    assert _sha256(a.path) != _sha256(c.path)
    assert not np.array_equal(a.mitoses, c.mitoses)
    # no temporary files left beside the slides
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tiff", "b.tiff", "c.tiff"]


def test_tiles_agree_with_any_region() -> None:
    """Any region, at any level, draws the pixels of the tiles covering it."""
    model = synth._SlideModel(4096, 3072, 0.5, 5, 0.45, 4)
    for ds in (1, 2, 8):
        x0, y0 = 1024 * ds, 768 * ds
        big = model.render(x0, y0, 512, 384, ds)
        for i in range(0, 384, 128):
            for j in range(0, 512, 128):
                part = model.render_tile(x0 + j * ds, y0 + i * ds, 128, 128, ds)
                if part is None:
                    part = model.glass(x0 + j * ds, y0 + i * ds, 128, 128, ds)
                # equal up to float rounding (different region, different sums)
                diff = np.abs(part.astype(int) - big[i : i + 128, j : j + 128])
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"width": 0}, "0"),
        ({"width": -5}, "-5"),
        ({"height": 1.5}, "1.5"),
        ({"width": True}, "True"),
        ({"tile": 100}, "100"),
        ({"tile": 0}, "0"),
        ({"mpp": 0.0}, "0.0"),
        ({"mpp": -0.25}, "-0.25"),
        ({"mpp": float("nan")}, "nan"),
        ({"mpp": "0.5"}, "'0.5'"),
        ({"seed": -1}, "-1"),
        ({"n_mitoses": -1}, "-1"),
        ({"tissue_fraction": 0.0}, "0.0"),
        ({"tissue_fraction": 1.0}, "1.0"),
        ({"tissue_fraction": 1.5}, "1.5"),
        ({"jpeg_quality": 0}, "0"),
        ({"jpeg_quality": 101}, "101"),
    ],
)
def test_argument_validation(tmp_path: os.PathLike[str], kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(shown)):
        synthetic_slide(tmp_path / "x.tiff", verbose=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_keyword_only(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(TypeError):
        synthetic_slide(tmp_path / "x.tiff", 1024)  # type: ignore[misc]


def test_missing_parent_directory(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        synthetic_slide(tmp_path / "nope" / "x.tiff", width=512, height=512, verbose=False)


def test_too_many_mitoses_for_the_tissue(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ValueError, match="n_mitoses=500"):
        synthetic_slide(tmp_path / "x.tiff", width=512, height=512, n_mitoses=500, verbose=False)


def test_interrupted_write_leaves_nothing(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.tiff"
    target.write_bytes(b"previous")
    calls = {"n": 0}
    real = synth._SlideModel.render_tile

    def failing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(synth._SlideModel, "render_tile", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic_slide(target, width=1024, height=768, n_mitoses=2, verbose=False)
    assert target.read_bytes() == b"previous"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.tiff"]


def test_small_and_odd_sizes(tmp_path: os.PathLike[str]) -> None:
    info = synthetic_slide(
        tmp_path / "odd.tiff", width=1500, height=333, tile=128, n_mitoses=0, verbose=False
    )
    assert info.levels == [(1500, 333), (750, 167)]
    assert info.mitoses.shape == (0, 2)
    assert len(info.mitoses_frame()) == 0
    with openslide.OpenSlide(str(info.path)) as osr:
        assert osr.level_dimensions == ((1500, 333), (750, 167))


def test_demo_slide_cached(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # a small stand-in for the 12000 x 9000 demo keeps the test fast
    monkeypatch.setitem(synth._DEMO, "width", 1024)
    monkeypatch.setitem(synth._DEMO, "height", 768)
    monkeypatch.setitem(synth._DEMO, "n_mitoses", 3)
    calls = []
    real = synth.synthetic_slide

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "synthetic_slide", counting)
    cache = tmp_path / "cache"
    first = demo_slide(cache, verbose=False)
    assert len(calls) == 1
    assert first.path.parent == cache
    assert synth.__version__ in first.path.name and "1024x768" in first.path.name
    assert first.path.with_suffix(".json").is_file()
    mtime = first.path.stat().st_mtime_ns
    second = demo_slide(cache, verbose=False)
    assert len(calls) == 1  # not re-rendered
    assert second.path.stat().st_mtime_ns == mtime
    assert second.path == first.path and second.levels == first.levels
    np.testing.assert_array_equal(second.mitoses, first.mitoses)
    assert (second.width, second.height, second.mpp, second.seed) == (1024, 768, synth._DEMO["mpp"], 0)
    # default location from $HISTOSCOPE_CACHE
    monkeypatch.setenv("HISTOSCOPE_CACHE", str(cache))
    third = demo_slide(verbose=False)
    assert len(calls) == 1 and third.path == first.path
    # a damaged sidecar is regenerated
    first.path.with_suffix(".json").write_text("{not json")
    fourth = demo_slide(cache, verbose=False)
    assert len(calls) == 2
    np.testing.assert_array_equal(fourth.mitoses, first.mitoses)


@pytest.mark.parametrize("mpp", [0.25, 2.0])
def test_other_resolutions(tmp_path: os.PathLike[str], mpp: float) -> None:
    info = synthetic_slide(
        tmp_path / "r.tiff", width=1024, height=1024, mpp=mpp, n_mitoses=2, verbose=False
    )
    with openslide.OpenSlide(str(info.path)) as osr:
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(mpp)
        g = _gray(osr.read_region((0, 0), 0, (1024, 1024)))
    assert (g < 225).mean() > 0.2  # there is tissue
    assert g[:16, :16].mean() > 235  # and glass in the corner

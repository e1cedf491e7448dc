"""Every kind of bad input gets a specific histoscope error that names the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoscope import open_slide
from histoscope.exceptions import (
    HistoscopeError,
    MaskError,
    MppUnavailableError,
    RegionError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedFormatError,
    UnsupportedImageError,
)
from histoscope.slide import Mask


def test_missing_path(tmp_path):
    p = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFoundError, match="no such file") as e:
        open_slide(p)
    assert str(p) in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_directory(tmp_path):
    with pytest.raises(SlideNotFoundError, match="is a directory"):
        open_slide(tmp_path)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    with pytest.raises(SlideReadError, match=r"empty \(0 bytes\)") as e:
        open_slide(p)
    assert str(p) in str(e.value)


def test_text_file_renamed_svs(tmp_path):
    p = tmp_path / "notes.svs"
    p.write_text("patient 12, slide 3: re-scan tomorrow\n" * 20)
    with pytest.raises(UnsupportedFormatError, match="looks like a text file") as e:
        open_slide(p)
    assert str(p) in str(e.value)


def test_truncated_real_svs(tmp_path, cmu_svs):
    data = cmu_svs.read_bytes()
    p = tmp_path / "half.svs"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match="truncated") as e:
        with open_slide(p) as s:  # must fail at open, before any pixel is read
            s.read_region((0, 0), (2220, 2967))
    assert str(p) in str(e.value)


def test_truncated_j2k_svs(tmp_path, tcga_svs):
    data = tcga_svs.read_bytes()
    p = tmp_path / "half.svs"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match="truncated"):
        open_slide(p)


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_grayscale_and_16bit_png(tmp_path, mode):
    p = tmp_path / f"gray-{mode.replace(';', '')}.png"
    arr = np.arange(64 * 64, dtype=np.uint16 if mode == "I;16" else np.uint8).reshape(64, 64)
    Image.fromarray(arr).save(p)
    with pytest.raises(UnsupportedImageError) as e:
        open_slide(p)
    assert str(p) in str(e.value)
    assert ("grayscale" in str(e.value)) or ("8 bits" in str(e.value))


def test_16bit_rgb_tiff(tmp_path):
    p = tmp_path / "deep.tif"
    tifffile.imwrite(p, np.zeros((64, 64, 3), np.uint16), photometric="rgb")
    with pytest.raises(UnsupportedImageError, match="16-bit") as e:
        open_slide(p)
    assert str(p) in str(e.value)


def test_grayscale_tiff(tmp_path):
    p = tmp_path / "gray.tif"
    tifffile.imwrite(p, np.zeros((64, 64), np.uint8))
    with pytest.raises(UnsupportedImageError, match="grayscale"):
        open_slide(p)


def test_rgba_is_flattened_onto_white(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 0] = 200
    arr[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    with open_slide(p) as s:
        px = s.read_region((0, 0), (10, 10))
    assert (px[:5] == [200, 0, 0]).all() and (px[5:] == 255).all()


@pytest.mark.parametrize(
    "arr,match",
    [
        (np.zeros((10, 10), np.uint8), "grayscale"),
        (np.zeros((10, 10, 3), np.uint16), "16-bit"),
        (np.zeros((10, 10, 3), np.float32), "float32"),
        (np.zeros((10, 10, 5), np.uint8), "shape"),
    ],
)
def test_bad_arrays(arr, match):
    with pytest.raises(UnsupportedImageError, match=match):
        open_slide(arr)


def test_region_errors(cmu_svs):
    with open_slide(cmu_svs) as s:
        with pytest.raises(RegionError, match="entirely outside") as e:
            s.read_region((5000, 5000), (10, 10))
        assert str(cmu_svs) in str(e.value)
        with pytest.raises(RegionError, match="must be positive"):
            s.read_region((0, 0), (-5, 10))
        with pytest.raises(RegionError, match="must be positive"):
            s.read_region((0, 0), (0, 10))
        with pytest.raises(TypeError):
            s.read_region((0, 0), "big")
        with pytest.raises(ValueError, match="level 3 does not exist"):
            s.read_region((0, 0), (10, 10), level=3)


def test_mpp_the_slide_cannot_provide(cmu_svs, tcga_svs):
    with open_slide(cmu_svs) as s:
        with pytest.raises(MppUnavailableError, match="finer than the scan"):
            s.read_region((0, 0), (10, 10), mpp=0.1)
    with open_slide(tcga_svs) as s:
        with pytest.raises(MppUnavailableError, match="does not record its resolution") as e:
            s.read_region((0, 0), (10, 10), mpp=0.5)
        assert str(tcga_svs) in str(e.value)


def test_mask_of_wrong_shape(tmp_path, cmu_svs):
    p = tmp_path / "mask.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(p)
    with open_slide(cmu_svs) as s:
        with pytest.raises(MaskError, match="does not match slide") as e:
            Mask.from_image(p, s)
        assert "mask.png" in str(e.value)
        # the right aspect ratio at any resolution is accepted
        W, H = s.dimensions
        ok = Mask.from_image(np.ones((H // 10, W // 10), np.uint8), s)
        assert ok.fraction == 1.0


def test_all_errors_are_histoscope_errors():
    for cls in (SlideReadError, SlideNotFoundError, UnsupportedFormatError, UnsupportedImageError, MppUnavailableError, RegionError, MaskError):
        assert issubclass(cls, HistoscopeError)


def test_errors_pickle_for_dask():
    import pickle

    err = SlideReadError("/x/y.svs", "broken")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.path == "/x/y.svs"

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


# ------------------------------------------------------------------ lying headers (found by fuzz/)
def _with_tag(data: bytes, path, tag: str, value: int, page: int = 0) -> bytes:
    """``data`` with one TIFF tag of one page set to ``value`` (located with tifffile)."""
    import struct

    with tifffile.TiffFile(path) as tif:
        t = tif.pages[page].tags[tag]
        size = {3: 2, 4: 4, 16: 8}[int(t.dtype)]
        bo = tif.byteorder
    fmt = bo + {2: "H", 4: "I", 8: "Q"}[size]
    return data[: t.valueoffset] + struct.pack(fmt, value % 256**size) + data[t.valueoffset + size :]


@pytest.fixture(scope="module")
def small_tiled_tiff(tmp_path_factory):
    from histoscope.datasets import synthetic_slide

    p = tmp_path_factory.mktemp("tif") / "small.tiff"
    synthetic_slide(p, width=1536, height=1152, seed=1, n_mitoses=0, verbose=False)
    return p


@pytest.mark.parametrize(
    "tag, value, page, match",
    [
        ("ImageWidth", 1_000_000, 0, "1,000,000 x 1,152 pixels in tiles of 256 x 256 need 19,535 tiles, but its tables list 30"),
        ("ImageLength", 2**32 - 1, 0, "beyond any slide"),
        ("ImageLength", 0, 1, "image 1 of the TIFF declares a size of 768 x 0 pixels"),
        ("TileWidth", 0, 0, "declares tiles of 0 x 256 pixels"),  # OpenSlide divided by it: SIGFPE
        ("TileLength", 32768, 0, "at most 16,384 per side"),  # OpenSlide allocated one whole tile: SIGABRT under a memory cap
        ("TileByteCounts", 2**31, 0, "truncated"),
    ],
)
def test_lying_tiff_header_is_refused_before_any_decoder_sees_it(tmp_path, small_tiled_tiff, tag, value, page, match):
    import tracemalloc

    p = tmp_path / "lie.tiff"
    p.write_bytes(_with_tag(small_tiled_tiff.read_bytes(), small_tiled_tiff, tag, value, page))
    tracemalloc.start()
    with pytest.raises(SlideReadError, match=match) as e:
        open_slide(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(p) in str(e.value)
    assert peak < 20 * 2**20  # nothing of the declared size was allocated


@pytest.mark.parametrize("side, match", [(10**6, "1000000000000 pixels"), (10_000, "declares 10,000 x 10,000 = 100,000,000 pixels")])
def test_plain_image_declaring_a_huge_size_is_not_decoded(tmp_path, side, match):
    """10^12 px: Pillow's own bomb check; 10^8 px (in Pillow's warn-only band): histoscope's, before decoding."""
    import struct
    import tracemalloc
    import zlib

    buf = tmp_path / "ok.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buf)
    d = bytearray(buf.read_bytes())
    d[16:24] = struct.pack(">II", side, side)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])))
    p = tmp_path / "bomb.png"
    p.write_bytes(bytes(d))
    tracemalloc.start()
    with pytest.raises(SlideReadError, match=match) as e:
        open_slide(p)
    assert tracemalloc.get_traced_memory()[1] < 20 * 2**20
    tracemalloc.stop()
    assert "tiled pyramidal TIFF" in str(e.value) and str(p) in str(e.value)


def test_svs_whose_label_declares_a_huge_size(tmp_path, cmu_svs):
    """A lying label header: refused at open when the strips cannot cover it; a wider label that
    still passes fails alone, naming it, while info() lists names without decoding them and the
    slide itself still reads."""
    with tifffile.TiffFile(cmu_svs) as tif:
        label = next(i for i, pg in enumerate(tif.pages) if "label" in (pg.description or ""))
    data = _with_tag(cmu_svs.read_bytes(), cmu_svs, "ImageWidth", 65535, label)  # SHORT tags: the largest they hold
    p = tmp_path / "label.svs"
    p.write_bytes(_with_tag(data, cmu_svs, "ImageLength", 65535, label))
    with pytest.raises(SlideReadError, match=f"image {label} of the TIFF is inconsistent: 65,535 x 65,535 pixels in strips"):
        open_slide(p)
    p.write_bytes(data)
    with open_slide(p) as s:
        assert "label" in s.info()["associated_images"]
        with pytest.raises(SlideReadError, match="associated image 'label'"):
            s.associated_images
        assert s.read_region((0, 0), (64, 64)).shape == (64, 64, 3)


def test_png_chunk_declaring_more_bytes_than_the_file_is_refused(tmp_path):
    """Pillow would read a corrupt chunk length as it is (a 2 GiB read): refused from the chunk walk."""
    import struct

    ok = tmp_path / "ok.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(ok)
    d = bytearray(ok.read_bytes())
    i = d.index(b"IDAT") - 4
    d[i : i + 4] = struct.pack(">I", 2**31)
    p = tmp_path / "chunk.png"
    p.write_bytes(bytes(d))
    with pytest.raises(SlideReadError, match=r"chunk 'IDAT' at byte \d+ declares 2,147,483,648 bytes") as e:
        open_slide(p)
    assert str(p) in str(e.value)
    with open_slide(ok) as s:  # the walk passes a sound file
        assert s.dimensions == (64, 64)


def test_malformed_resolution_tags_mean_unknown_mpp(tmp_path):
    """An XResolution with no value: the plain TIFF opens, its resolution is unknown (it raised IndexError)."""
    import struct

    src = tmp_path / "plain.tif"
    tifffile.imwrite(src, np.full((64, 80, 3), 200, np.uint8), photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with open_slide(src) as s:
        assert s.backend == "tifffile" and s.mpp == pytest.approx((0.5, 0.5))
    with tifffile.TiffFile(src) as tif:
        t = tif.pages[0].tags["XResolution"]
        bo = tif.byteorder
    data = bytearray(src.read_bytes())
    data[t.offset + 4 : t.offset + 8] = struct.pack(bo + "I", 0)  # classic TIFF entry: code (2), type (2), count (4)
    p = tmp_path / "res.tif"
    p.write_bytes(bytes(data))
    with open_slide(p) as s:
        assert s.dimensions == (80, 64) and s.mpp is None

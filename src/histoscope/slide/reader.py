"""``open_slide``: pick the right backend for a path or an array, and fail clearly."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..exceptions import SlideNotFoundError, SlideReadError, UnsupportedFormatError
from .backends import ArraySlide, OpenSlideSlide, PillowSlide, TiffSlide
from .base import Slide

__all__ = ["open_slide", "slide_info", "SUPPORTED_FORMATS"]

SUPPORTED_FORMATS = (
    "OpenSlide formats (Aperio .svs/.tif, Hamamatsu .ndpi/.vms/.vmu, MIRAX .mrxs, Leica .scn, "
    "Philips .tiff, Sakura .svslide, Ventana .bif, DICOM, generic tiled TIFF), plain/pyramidal "
    "TIFF and OME-TIFF (tifffile), PNG/JPEG/BMP/GIF/WebP (Pillow), numpy arrays"
)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PILLOW_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"BM",
    b"GIF87a",
    b"GIF89a",
)


def _describe_head(head: bytes) -> str:
    if not head:
        return "it is empty"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) / len(head)
    if printable > 0.95:
        text = head[:24].decode("ascii", "replace").replace("\n", "\\n")
        return f"it looks like a text file (starts with {text!r})"
    return f"it starts with bytes {head[:8].hex(' ')}"


#: Largest side a TIFF image may declare (two million pixels: far beyond any scanner).
MAX_TIFF_SIDE = 2_000_000
#: Largest tile side a TIFF may declare (scanners write 240 to 1,024 px; OpenSlide allocates a whole tile).
MAX_TIFF_TILE = 16_384


def check_tiff_integrity(path: str) -> None:
    """Raise :class:`SlideReadError` unless every image of a TIFF has a consistent structure.

    Reads only the headers (tifffile), before any decoder sees the file, and checks what
    readers trust without checking: each image declares a width and height above zero (and
    at most :data:`MAX_TIFF_SIDE`), tile sizes above zero, at least as many tiles or strips
    as its declared size needs (a header that declares 10^6 x 10^6 pixels over a few real
    tiles is refused here, not read), uncompressed strips hold the bytes their rows need, and
    no tile or strip points past the end of the file (a truncated download or copy).
    Otherwise a corrupt header reaches OpenSlide or libtiff, which may divide by a zero tile
    size (a crash), allocate the declared size, or read a phantom gigapixel image for hours.
    """
    import logging

    import tifffile

    size = os.path.getsize(path)
    tlog = logging.getLogger("tifffile")
    level = tlog.level
    tlog.setLevel(logging.CRITICAL)  # it logs each inconsistency it tolerates; we refuse them instead
    try:
        with warnings.catch_warnings(), tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            for i, page in enumerate(tif.pages):
                problem = _page_problem(page, size)
                if problem:
                    raise SlideReadError(path, f"image {i} of the TIFF {problem}")
    except SlideReadError:
        raise
    except Exception as exc:  # tifffile raises many types on broken headers
        raise SlideReadError(path, f"corrupt TIFF structure ({type(exc).__name__}: {exc}); the file may be truncated") from None
    finally:
        tlog.setLevel(level)


def _tag(page, name: str, default=None):
    tag = page.tags.get(name)
    return default if tag is None else tag.value


def _as_tuple(v) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _page_problem(page, file_size: int) -> str | None:
    """What is wrong with one TIFF image's header (None: nothing found)."""
    import math

    W, H = _tag(page, "ImageWidth", 0), _tag(page, "ImageLength", 0)
    if not (isinstance(W, int) and isinstance(H, int)) or W <= 0 or H <= 0:
        return f"declares a size of {W} x {H} pixels: the header is corrupt"
    if W > MAX_TIFF_SIDE or H > MAX_TIFF_SIDE:
        return f"declares {W:,} x {H:,} pixels, beyond any slide (at most {MAX_TIFF_SIDE:,} per side): the header is corrupt; nothing was read"
    spp = _tag(page, "SamplesPerPixel", 1)
    planes = spp if _tag(page, "PlanarConfiguration", 1) == 2 else 1
    depth = max(int(_tag(page, "ImageDepth", 1)), 1)
    if "TileWidth" in page.tags or "TileLength" in page.tags:
        tw, th = _tag(page, "TileWidth", 0), _tag(page, "TileLength", 0)
        if not (0 < tw <= MAX_TIFF_TILE and 0 < th <= MAX_TIFF_TILE):  # a decoder allocates one whole tile
            return f"declares tiles of {tw} x {th} pixels (at most {MAX_TIFF_TILE:,} per side): the header is corrupt"
        offsets, counts = _as_tuple(_tag(page, "TileOffsets", ())), _as_tuple(_tag(page, "TileByteCounts", ()))
        need = math.ceil(W / tw) * math.ceil(H / th) * planes * depth
        what = f"{W:,} x {H:,} pixels in tiles of {tw} x {th} need {need:,} tiles"
    else:
        rps = _tag(page, "RowsPerStrip", 2**32 - 1)
        if rps <= 0:
            return f"declares {rps} rows per strip: the header is corrupt"
        rps = min(rps, H)
        offsets, counts = _as_tuple(_tag(page, "StripOffsets", ())), _as_tuple(_tag(page, "StripByteCounts", ()))
        per_plane = math.ceil(H / rps)
        need = per_plane * planes
        what = f"{W:,} x {H:,} pixels in strips of {rps} rows need {need:,} strips"
        bits = _as_tuple(_tag(page, "BitsPerSample", 8))[0]
        if _tag(page, "Compression", 1) == 1 and len(counts) >= need:  # uncompressed: sizes are exact
            row_bytes = math.ceil(W * (1 if planes > 1 else spp) * bits / 8)
            for k in range(need):
                rows = min(rps, H - (k % per_plane) * rps)
                if counts[k] < rows * row_bytes:
                    return f"declares {W:,} x {H:,} uncompressed pixels, but strip {k} holds {counts[k]:,} of the {rows * row_bytes:,} bytes its rows need: the header is corrupt"
    if len(offsets) < need or len(counts) < need:
        return f"is inconsistent: {what}, but its tables list {len(offsets):,} offsets and {len(counts):,} byte counts (corrupt header)"
    end = max((int(o) + int(c) for o, c in zip(offsets, counts) if c), default=0)
    if end > file_size:
        return f"needs data up to byte {end:,} but the file has only {file_size:,} bytes: it is truncated. Copy or download it again."
    return None


def open_slide(
    source: str | os.PathLike[str] | np.ndarray,
    *,
    mpp: float | tuple[float, float] | None = None,
) -> Slide:
    """Open a whole-slide image, a plain image, or a numpy array as a :class:`Slide`.

    Parameters
    ----------
    source : path or numpy.ndarray
        A slide file (any format OpenSlide reads, TIFF/OME-TIFF, PNG/JPEG/BMP), or an
        HxWx3 (or HxWx4) uint8 array, which becomes a one-level in-memory slide.
    mpp : float or (float, float), optional
        Microns per pixel at level 0. Overrides what the file says; required for
        physical-resolution reads of files that do not record it.

    Returns
    -------
    Slide

    Raises
    ------
    SlideNotFoundError
        The path does not exist, or is a directory.
    UnsupportedFormatError
        The file is not in any supported format (e.g. a text file renamed ``.svs``).
    UnsupportedImageError
        The image is grayscale, 16-bit, or otherwise not 8-bit RGB.
    SlideReadError
        The file is corrupt or truncated.

    Examples
    --------
    >>> import numpy as np
    >>> from histoscope import open_slide
    >>> with open_slide(np.full((100, 200, 3), 230, np.uint8), mpp=0.5) as s:
    ...     s.dimensions, s.read_region((190, 0), (20, 10)).shape
    ((200, 100), (10, 20, 3))
    """
    if isinstance(source, np.ndarray):
        return ArraySlide(source, mpp=mpp)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"open_slide expects a path or a numpy array, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise SlideNotFoundError(path, "no such file")
    if path.is_dir():
        raise SlideNotFoundError(path, "is a directory, not a slide file (for MIRAX give the .mrxs file beside it)")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise SlideReadError(path, f"cannot read the file: {exc.strerror or exc}") from None
    if size == 0:
        raise SlideReadError(path, "file is empty (0 bytes)")

    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    is_tiff = head[:4] in _TIFF_MAGIC
    if vendor is not None:
        if is_tiff:
            check_tiff_integrity(str(path))
        try:
            return OpenSlideSlide(path, mpp=mpp)
        except SlideReadError:
            if not is_tiff:
                raise
    if is_tiff:
        check_tiff_integrity(str(path))
        return TiffSlide(path, mpp=mpp)
    if head.startswith(_PILLOW_MAGIC) or head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return PillowSlide(path, mpp=mpp)
    raise UnsupportedFormatError(
        path, f"not a slide or image file that histoscope can read: {_describe_head(head)}. Supported: {SUPPORTED_FORMATS}."
    )


def slide_info(source: str | os.PathLike[str], *, mpp: float | None = None) -> dict:
    """Open a slide, return its :meth:`Slide.info` summary, and close it."""
    with open_slide(source, mpp=mpp) as slide:
        return slide.info()

"""``open_slide``: pick the right backend for a path or an array, and fail clearly."""

from __future__ import annotations

import os
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


def check_tiff_integrity(path: str) -> None:
    """Raise :class:`SlideReadError` if a TIFF's tiles or strips point past the end of the file.

    This catches truncated downloads and copies up front (reading only the headers),
    instead of failing deep inside a decoder half-way through a slide.
    """
    import tifffile

    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(path) as tif:
            for i, page in enumerate(tif.pages):
                offsets, counts = page.dataoffsets, page.databytecounts
                if len(offsets) == 0:
                    continue
                end = max(int(o) + int(c) for o, c in zip(offsets, counts))
                if end > size:
                    raise SlideReadError(
                        path,
                        f"file is truncated: image {i} needs data up to byte {end:,} but the file "
                        f"has only {size:,} bytes. Copy or download it again.",
                    )
    except SlideReadError:
        raise
    except Exception as exc:  # tifffile raises many types on broken headers
        raise SlideReadError(path, f"corrupt TIFF structure ({type(exc).__name__}: {exc}); the file may be truncated") from None


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

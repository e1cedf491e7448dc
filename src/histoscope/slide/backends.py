"""Slide backends: OpenSlide, tifffile, Pillow and in-memory arrays.

Each backend implements only :meth:`Slide._read` and its metadata; the shared logic is
in :mod:`histoscope.slide.base`. Pixel conversion to HxWx3 uint8 RGB happens here, in
:func:`to_rgb`, for every backend.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..exceptions import SlideReadError, UnsupportedImageError
from .base import WHITE, Slide

__all__ = ["ArraySlide", "OpenSlideSlide", "TiffSlide", "PillowSlide", "to_rgb"]


def to_rgb(arr: np.ndarray, *, path: str | None = None) -> np.ndarray:
    """Convert an image array to HxWx3 uint8 RGB, compositing any alpha onto white.

    Raises
    ------
    UnsupportedImageError
        Grayscale, more than 8 bits per channel, floating point, or an unexpected number of
        channels. The message says what was found and how to convert it.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2)):
        raise UnsupportedImageError(
            path,
            f"image is grayscale (shape {arr.shape}); histoscope works on RGB brightfield "
            "(H&E/IHC) images. Convert it to RGB first if it really is a stained slide.",
        )
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise UnsupportedImageError(
            path, f"expected an RGB image of shape (height, width, 3) or RGBA (..., 4), got shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        if arr.dtype in (np.uint16, np.int16, np.uint32, np.int32):
            raise UnsupportedImageError(
                path,
                f"image has {arr.dtype.itemsize * 8}-bit channels ({arr.dtype}); histoscope expects "
                "8-bit RGB. Rescale it to uint8 first (e.g. skimage.util.img_as_ubyte).",
            )
        raise UnsupportedImageError(
            path, f"image has dtype {arr.dtype}; histoscope expects uint8 RGB (0-255). Convert it first."
        )
    if arr.shape[-1] == 3:
        return arr
    alpha = arr[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(arr[..., :3])
    a = alpha[..., None].astype(np.uint16)
    rgb = (arr[..., :3].astype(np.uint16) * a + WHITE * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def _pad_read(
    level_array: Any, dims: tuple[int, int], lx: int, ly: int, w: int, h: int, *, path: str | None
) -> np.ndarray:
    """Read ``[ly:ly+h, lx:lx+w]`` of an array-like level, padding outside with white."""
    W, H = dims
    x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, W), min(ly + h, H)
    if x0 >= x1 or y0 >= y1:
        return np.full((h, w, 3), WHITE, np.uint8)
    part = to_rgb(np.asarray(level_array[y0:y1, x0:x1]), path=path)
    if (x0, y0, x1, y1) == (lx, ly, lx + w, ly + h):
        return np.ascontiguousarray(part)
    out = np.full((h, w, 3), WHITE, np.uint8)
    out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = part
    return out


class ArraySlide(Slide):
    """An in-memory image seen as a one-level slide (tests, small images, Pillow files)."""

    backend = "array"

    def __init__(
        self,
        array: np.ndarray,
        *,
        mpp: float | tuple[float, float] | None = None,
        path: str | os.PathLike[str] | None = None,
    ):
        super().__init__(path, mpp=mpp)
        if not isinstance(array, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(array).__name__}")
        self._array = to_rgb(array, path=self.path)
        if self._array.shape[0] == 0 or self._array.shape[1] == 0:
            raise UnsupportedImageError(self.path, f"image has zero size (shape {array.shape})")

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        h, w = self._array.shape[:2]
        return ((w, h),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        return _pad_read(self._array, self.dimensions, x0, y0, width, height, path=self.path)


def _check_png_chunks(path: str) -> None:
    """Walk a PNG's chunk headers (seeks only); refuse one whose chunk declares more bytes than the file holds.

    Pillow reads a declared chunk length as it is (a corrupt length of 2^31 becomes a 2 GiB read).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return
        pos = 8
        while pos + 8 <= size:
            head = fh.read(8)
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if pos + 12 + length > size:
                name = kind.decode("latin-1") if kind.isalpha() else kind.hex()
                raise SlideReadError(path, f"PNG is truncated or corrupt: chunk {name!r} at byte {pos:,} declares {length:,} bytes, past the end of the {size:,}-byte file")
            if kind == b"IEND":
                return
            pos += 12 + length
            fh.seek(pos)


#: Most pixels a plain (PNG, JPEG, ...) image may declare when Pillow sets no limit (Pillow's default).
MAX_PLAIN_PIXELS = 89_478_485


class PillowSlide(ArraySlide):
    """PNG / JPEG / BMP / GIF / WebP files read with Pillow (whole image in memory)."""

    backend = "pillow"

    def __init__(self, path: str | os.PathLike[str], *, mpp: float | tuple[float, float] | None = None):
        from PIL import Image, UnidentifiedImageError

        path = os.fspath(path)
        _check_png_chunks(path)
        try:
            with Image.open(path) as img:  # lazy: the header only
                w, h = img.size
                limit = Image.MAX_IMAGE_PIXELS or MAX_PLAIN_PIXELS
                if w * h > limit:  # a plain image is decoded whole: refuse before allocating it
                    raise SlideReadError(
                        path,
                        f"image declares {w:,} x {h:,} = {w * h:,} pixels, more than the {limit:,} a plain image may have "
                        "(it is decoded whole into memory); save it as a tiled pyramidal TIFF instead",
                    )
                img.load()
                mode = img.mode
                if mode in ("P", "PA"):
                    img = img.convert("RGBA")
                elif mode in ("L", "LA", "1"):
                    raise UnsupportedImageError(
                        path,
                        f"image is grayscale (Pillow mode {mode!r}); histoscope works on RGB "
                        "brightfield (H&E/IHC) images.",
                    )
                elif mode.startswith("I;16") or mode in ("I", "F"):
                    raise UnsupportedImageError(
                        path,
                        f"image has more than 8 bits per channel (Pillow mode {mode!r}); "
                        "histoscope expects 8-bit RGB. Convert it to 8-bit RGB first.",
                    )
                elif mode == "CMYK" or mode == "YCbCr":
                    img = img.convert("RGB")
                elif mode not in ("RGB", "RGBA"):
                    raise UnsupportedImageError(path, f"unsupported Pillow image mode {mode!r}; expected RGB")
                array = np.asarray(img)
        except UnidentifiedImageError as exc:
            raise SlideReadError(path, f"Pillow cannot decode this image: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, SlideReadError):
                raise
            raise SlideReadError(path, f"image is corrupt or truncated ({exc})") from None
        except Image.DecompressionBombError as exc:
            raise SlideReadError(
                path, f"image is too large to load as a plain image ({exc}); save it as a tiled pyramidal TIFF"
            ) from None
        except MemoryError:  # a corrupt length field that Pillow believed
            raise SlideReadError(path, "image is corrupt: decoding it asked for more memory than there is") from None
        super().__init__(array, mpp=mpp, path=path)


#: Most pixels a label / macro / thumbnail image may declare (a macro photo is a few megapixels).
MAX_ASSOCIATED_PIXELS = 100_000_000


class OpenSlideSlide(Slide):
    """Slides read with OpenSlide (Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Philips, Ventana, generic tiled TIFF)."""

    backend = "openslide"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mpp: float | tuple[float, float] | None = None,
        accelerate: bool = True,
    ):
        import openslide

        super().__init__(path, mpp=mpp)
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideError as exc:
            raise SlideReadError(self.path, f"OpenSlide cannot read this file: {exc}") from None
        self._error_type = openslide.OpenSlideError
        self._props = dict(self._osr.properties)
        self._assoc: dict[str, np.ndarray] | None = None
        self._dims = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self._downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self._closed = False
        self._tiles = _TileDecoder.for_openslide(self) if accelerate else None

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props

    def _native_mpp(self) -> tuple[float, float] | None:
        p = self._props
        try:
            mx, my = float(p["openslide.mpp-x"]), float(p["openslide.mpp-y"])
            if mx > 0 and my > 0:
                return mx, my
        except (KeyError, ValueError):
            pass
        return _mpp_from_tiff_tags(p.get("tiff.XResolution"), p.get("tiff.YResolution"), p.get("tiff.ResolutionUnit"))

    @property
    def objective_power(self) -> float | None:
        try:
            return float(self._props["openslide.objective-power"])
        except (KeyError, ValueError):
            return None

    @property
    def associated_image_names(self) -> list[str]:
        try:
            return sorted(self._osr.associated_images.keys())  # names only: nothing is decoded
        except self._error_type as exc:  # OpenSlide's errors are sticky: any earlier failure shows here
            raise SlideReadError(self.path, f"OpenSlide cannot list the associated images: {exc}") from None

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        if self._assoc is None:
            assoc = {}
            for name in self.associated_image_names:
                w = int(self._props.get(f"openslide.associated.{name}.width", 0) or 0)
                h = int(self._props.get(f"openslide.associated.{name}.height", 0) or 0)
                if w * h > MAX_ASSOCIATED_PIXELS:  # OpenSlide would allocate w x h x 4 bytes
                    raise SlideReadError(self.path, f"associated image {name!r} declares {w:,} x {h:,} pixels: the header is corrupt")
                try:
                    assoc[name] = to_rgb(np.asarray(self._osr.associated_images[name]), path=self.path)
                except self._error_type as exc:
                    raise SlideReadError(self.path, f"cannot read the associated image {name!r}: {exc}") from None
            self._assoc = assoc
        return self._assoc

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        if self._closed:
            raise SlideReadError(self.path, "the slide has been closed; open it again to read pixels")
        if self._tiles is not None and level in self._tiles.levels:
            ds = self._downsamples[level]
            return self._tiles.read(level, int(x0 // ds) if level else x0, int(y0 // ds) if level else y0, width, height)
        return self._read_openslide(level, x0, y0, width, height)

    def _read_openslide(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        try:
            img = self._osr.read_region((x0, y0), level, (width, height))
        except self._error_type as exc:
            raise SlideReadError(
                self.path, f"OpenSlide failed reading level {level} at ({x0}, {y0}): {exc}. The file may be corrupt."
            ) from None
        return to_rgb(np.asarray(img), path=self.path)

    def close(self) -> None:
        self._closed = True
        if self._tiles is not None:
            self._tiles.close()
        self._osr.close()


class _TileDecoder:
    """Fast path for tiled TIFF-family slides: decode the file's tiles directly.

    OpenSlide spends most of a read outside the codec (compositing into a premultiplied
    ARGB buffer, then converting it). For levels stored as plain tiled RGB pages (Aperio
    SVS, generic tiled TIFF, the synthetic slides) this reads the compressed tiles with
    ``os.pread`` and decodes them with tifffile/imagecodecs (libjpeg-turbo, OpenJPEG),
    outside the GIL, with a small cache of decoded tiles for overlapping reads.

    It is enabled per level only after a self-check: a tile decoded here must equal
    OpenSlide's pixels for the same region exactly; otherwise OpenSlide serves that level.
    """

    CACHE_BYTES = 96 * 2**20

    def __init__(self, path: str, pages: dict[int, Any]):
        self.path = path
        self.pages = pages
        self.levels = set(pages)
        self.fd = os.open(path, os.O_RDONLY)
        self._cache: "OrderedDict[tuple[int, int], np.ndarray]" = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def for_openslide(cls, slide: "OpenSlideSlide") -> "_TileDecoder | None":
        import tifffile

        path = slide.path
        try:
            with open(path, "rb") as fh:  # type: ignore[arg-type]
                if fh.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                    return None
            tif = tifffile.TiffFile(path)
        except Exception:
            return None
        try:
            levels = tif.series[0].levels if tif.series else []
            pages: dict[int, Any] = {}
            for i, lvl in enumerate(levels):
                page = lvl.keyframe
                if i >= slide.level_count or (page.imagewidth, page.imagelength) != slide.level_dimensions[i]:
                    break
                if not page.is_tiled or page.samplesperpixel != 3 or page.bitspersample != 8 or page.planarconfig != 1:
                    continue
                if page.imagedepth != 1 or len(lvl.pages) != 1:
                    continue
                pages[i] = page
            if not pages:
                tif.close()
                return None
            dec = cls(path, pages)  # type: ignore[arg-type]
            dec._tif = tif
            for i in list(pages):
                if not dec._agrees(slide, i):
                    del dec.pages[i]
                    dec.levels.discard(i)
            if not dec.pages:
                dec.close()
                return None
            return dec
        except Exception:
            tif.close()
            return None

    def _agrees(self, slide: "OpenSlideSlide", level: int) -> bool:
        page = self.pages[level]
        tw, th = page.tilewidth, page.tilelength
        W, H = page.imagewidth, page.imagelength
        cols, rows = -(-W // tw), -(-H // th)
        ds = slide._downsamples[level]
        for r, c in ((rows // 2, cols // 2), (0, 0)):
            lx, ly = c * tw, r * th
            w, h = min(tw + 7, W - lx), min(th + 5, H - ly)
            mine = self.read(level, lx, ly, w, h)
            ref = slide._read_openslide(level, int(round(lx * ds)), int(round(ly * ds)), w, h)
            if not np.array_equal(mine, ref):
                return False
        return True

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        key = (level, index)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        page = self.pages[level]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        if count == 0:
            return None  # a tile the scanner never wrote: background
        data = os.pread(self.fd, count, offset)
        if len(data) != count:
            raise SlideReadError(self.path, f"file is truncated: tile {index} of level {level} is incomplete")
        try:
            arr = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as exc:
            raise SlideReadError(self.path, f"cannot decode tile {index} of level {level}: {exc}") from None
        arr = np.asarray(arr).reshape(arr.shape[-3:])
        with self._lock:
            self._cache[key] = arr
            self._cache_bytes += arr.nbytes
            while self._cache_bytes > self.CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return arr

    def read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[ly:ly+h, lx:lx+w]`` of a level, white outside it."""
        page = self.pages[level]
        tw, th = page.tilewidth, page.tilelength
        W, H = page.imagewidth, page.imagelength
        cols = -(-W // tw)
        out = np.full((h, w, 3), WHITE, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, W), min(ly + h, H)
        if x0 >= x1 or y0 >= y1:
            return out
        for r in range(y0 // th, (y1 - 1) // th + 1):
            for c in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._tile(level, r * cols + c)
                if tile is None:
                    continue
                tx0, ty0 = c * tw, r * th
                sx0, sy0 = max(x0, tx0), max(y0, ty0)
                sx1, sy1 = min(x1, tx0 + tw), min(y1, ty0 + th)
                out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = tile[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0, :3]
        return out

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()


def _mpp_from_tiff_tags(xres: Any, yres: Any, unit: Any) -> tuple[float, float] | None:
    """Microns per pixel from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit."""
    try:
        xr, yr = float(xres), float(yres)
    except (TypeError, ValueError):
        return None
    unit_s = str(unit).lower() if unit is not None else ""
    if unit_s in ("centimeter", "3", "resunit.centimeter"):
        um_per_unit = 1e4
    elif unit_s in ("inch", "2", "resunit.inch"):
        um_per_unit = 25400.0
    else:
        return None
    if xr <= 0 or yr <= 0:
        return None
    mx, my = um_per_unit / xr, um_per_unit / yr
    # 72/96 dpi and the like are screen defaults, not scan resolutions
    if mx > 20 or my > 20:
        return None
    return mx, my


class TiffSlide(Slide):
    """Plain, tiled and pyramidal TIFF / OME-TIFF read with tifffile (for files OpenSlide refuses).

    Levels are read through tifffile's zarr view, so only the tiles or strips a region
    touches are decoded.
    """

    backend = "tifffile"

    def __init__(self, path: str | os.PathLike[str], *, mpp: float | tuple[float, float] | None = None):
        import tifffile
        import zarr

        super().__init__(path, mpp=mpp)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            levels = list(series.levels)
            self._axes = series.axes
            page = series.pages[0] if series.pages else self._tif.pages[0]
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise SlideReadError(self.path, f"not a readable TIFF: {exc}") from None
        dtype = np.dtype(series.dtype)
        shape = series.shape
        self._planar = False
        axes = self._axes.upper()
        if axes.endswith("YXS"):
            samples = shape[-1]
        elif axes.endswith("CYX") or axes.endswith("SYX"):
            samples = shape[-3]
            self._planar = True
        elif axes.endswith("YX"):
            samples = 1
        else:
            raise UnsupportedImageError(self.path, f"unsupported TIFF axes {series.axes!r} with shape {shape}")
        if samples not in (3, 4):
            raise UnsupportedImageError(
                self.path,
                f"TIFF has {samples} channel(s) (axes {series.axes}, shape {shape}); histoscope expects RGB "
                "brightfield images" + ("; this one is grayscale" if samples == 1 else ""),
            )
        if dtype != np.uint8:
            raise UnsupportedImageError(
                self.path,
                f"TIFF has {dtype} samples ({dtype.itemsize * 8}-bit); histoscope expects 8-bit RGB. "
                "Convert it to 8-bit first.",
            )
        self._levels = []
        self._dims = []
        lead = len(shape) - 3
        for lvl in levels:
            try:
                z = zarr.open(lvl.aszarr(), mode="r")
            except Exception as exc:  # a corrupt tag (compression, photometric) is found here
                raise SlideReadError(self.path, f"cannot read this TIFF's pixels ({type(exc).__name__}: {exc})") from None
            self._levels.append(z)
            s = lvl.shape
            if self._planar:
                self._dims.append((int(s[-1]), int(s[-2])))
            else:
                self._dims.append((int(s[-2]), int(s[-3])))
        self._lead = (0,) * lead
        if any(w <= 0 or h <= 0 for w, h in self._dims):
            raise SlideReadError(self.path, f"corrupt TIFF: a level has zero size ({self._dims})")
        W0, H0 = self._dims[0]
        self._downsamples = tuple(((W0 / w) + (H0 / h)) / 2.0 for w, h in self._dims)
        self._lock = threading.Lock()
        self._page = page
        self._mpp_native = self._find_mpp()

    def _find_mpp(self) -> tuple[float, float] | None:
        ome = self._tif.ome_metadata
        if ome:
            mx = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
            my = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', ome)
            ux = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
            if mx and my and (ux is None or ux.group(1) in ("µm", "um", "\u00b5m")):
                return float(mx.group(1)), float(my.group(1))
        tags = self._page.tags
        try:
            xr, yr = tags["XResolution"].value, tags["YResolution"].value
            unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
            xr_f = xr[0] / xr[1] if isinstance(xr, tuple) else xr
            yr_f = yr[0] / yr[1] if isinstance(yr, tuple) else yr
            return _mpp_from_tiff_tags(xr_f, yr_f, getattr(unit, "name", unit))
        except (KeyError, ZeroDivisionError, TypeError, IndexError, ValueError):  # absent or malformed tags: unknown
            return None

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._dims)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return {f"tiff.{t.name}": str(t.value)[:200] for t in self._page.tags.values() if t.name not in ("TileOffsets", "TileByteCounts", "StripOffsets", "StripByteCounts")}

    def _native_mpp(self) -> tuple[float, float] | None:
        return self._mpp_native

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = int(x0 // ds), int(y0 // ds)
        z = self._levels[level]
        view = _PlanarView(z, self._lead) if self._planar else _LeadView(z, self._lead)
        try:
            with self._lock:
                return _pad_read(view, self._dims[level], lx, ly, width, height, path=self.path)
        except (SlideReadError, UnsupportedImageError):
            raise
        except Exception as exc:
            raise SlideReadError(
                self.path, f"failed decoding level {level} at ({x0}, {y0}): {exc}. The file may be truncated or corrupt."
            ) from None

    def close(self) -> None:
        self._tif.close()


class _LeadView:
    """Index a zarr level with leading singleton axes dropped (YXS layout)."""

    def __init__(self, z: Any, lead: tuple[int, ...]):
        self.z, self.lead = z, lead

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return np.asarray(self.z[self.lead + key])


class _PlanarView(_LeadView):
    """Index a planar (CYX) zarr level and return YXC."""

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return np.moveaxis(np.asarray(self.z[self.lead + (slice(None),) + key]), 0, -1)

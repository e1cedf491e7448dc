"""The :class:`Slide` interface shared by every whole-slide backend.

A backend only knows how to read a rectangle of one pyramid level (``_read``). Everything
else lives here, once: choosing the level for a requested resolution, resampling, padding
past the slide edge, reading very large regions block by block so that memory stays
bounded, thumbnails, and the checks on locations and sizes.

Conventions
-----------
* ``location`` is always ``(x, y)`` in level-0 pixels; ``size`` is ``(width, height)`` of the
  returned image in output pixels (at the requested level, mpp or downsample).
* Pixels are returned as ``(height, width, 3)`` ``uint8`` RGB.
* A region that extends past the slide edge is padded with white (255, 255, 255), the
  colour of empty glass. A region entirely outside the slide raises :class:`RegionError`.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..exceptions import MppUnavailableError, RegionError

__all__ = ["Slide", "Resolution", "WHITE"]

WHITE = 255
#: Relative difference below which a requested downsample is served from a level without
#: resampling (e.g. 0.5 um/px requested from a 0.499 um/px scan). The tile table records
#: the effective mpp, so nothing is hidden.
DOWNSAMPLE_TOLERANCE = 0.01
#: Largest number of source pixels read in one piece when a region is resampled; larger
#: regions are assembled block by block (bounded memory on gigapixel levels).
MAX_SOURCE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Resolution:
    """Where a read at a given resolution is served from.

    Attributes
    ----------
    level : int
        Pyramid level the pixels are read from (the nearest level at least as fine).
    downsample : float
        Effective downsample of the output relative to level 0.
    resample : bool
        Whether the level's pixels are resampled (False when the level matches within
        ``DOWNSAMPLE_TOLERANCE``).
    """

    level: int
    downsample: float
    resample: bool


def _as_pair(value: Any, name: str, *, integer: bool = True) -> tuple[int, int]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (x, y) / (width, height), got {value!r}") from None
    out = []
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating)):
            raise TypeError(f"{name} must contain numbers, got {value!r}")
        if integer and float(v) != int(v):
            raise ValueError(f"{name} must contain whole numbers of pixels, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def slide_name(path: str | os.PathLike[str]) -> str:
    """A slide file's name without its extension (``.ome.tiff`` counts as one): its report folder's name."""
    base = os.path.basename(os.fspath(path))
    for ext in (".ome.tiff", ".ome.tif"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


class Slide(ABC):
    """A whole-slide image (or an ordinary image seen as a one-level slide).

    Open one with :func:`histoscope.open_slide`. Use it as a context manager, or call
    :meth:`close`.
    """

    #: short name of the backend ("openslide", "tifffile", "pillow", "array")
    backend: str = ""

    def __init__(self, path: str | os.PathLike[str] | None, *, mpp: float | tuple[float, float] | None = None):
        self.path: str | None = None if path is None else os.fspath(path)
        if mpp is not None:
            mx, my = (mpp, mpp) if np.isscalar(mpp) else tuple(mpp)  # type: ignore[misc]
            if not (np.isfinite(mx) and np.isfinite(my) and mx > 0 and my > 0):
                raise ValueError(f"mpp must be positive microns per pixel, got {mpp!r}")
            self._mpp_override: tuple[float, float] | None = (float(mx), float(my))
        else:
            self._mpp_override = None

    # ------------------------------------------------------------------ backend hooks
    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every pyramid level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of every level relative to level 0."""

    @abstractmethod
    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """Read ``width x height`` pixels of ``level`` whose top-left corner is level-0 ``(x0, y0)``.

        Must pad with white where the rectangle leaves the level, and return HxWx3 uint8.
        """

    def _native_mpp(self) -> tuple[float, float] | None:
        return None

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification (e.g. 20.0, 40.0) when the file records it."""
        return None

    @property
    def properties(self) -> Mapping[str, str]:
        """Raw metadata of the file (vendor keys as the backend reports them)."""
        return {}

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """Label, macro and thumbnail images stored in the file, as HxWx3 uint8 RGB."""
        return {}

    @property
    def associated_image_names(self) -> list[str]:
        """Names of the associated images, without decoding them."""
        return sorted(self.associated_images.keys())

    def close(self) -> None:
        """Release the file handle."""

    # ------------------------------------------------------------------ metadata
    @property
    def name(self) -> str:
        """File name without its extension (``"array"`` for an in-memory slide)."""
        return "array" if self.path is None else slide_name(self.path)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel ``(x, y)`` at level 0, or ``None`` when the file does not say.

        An explicit ``mpp=`` given to :func:`open_slide` takes precedence over the file.
        """
        return self._mpp_override or self._native_mpp()

    @property
    def mpp_source(self) -> str:
        """Where :attr:`mpp` comes from: ``"user"``, ``"file"`` or ``"unknown"``."""
        if self._mpp_override:
            return "user"
        return "file" if self._native_mpp() else "unknown"

    def require_mpp(self) -> tuple[float, float]:
        """Return :attr:`mpp`, or raise :class:`MppUnavailableError` saying how to supply it."""
        mpp = self.mpp
        if mpp is None:
            where = self.path or "this in-memory slide"
            raise MppUnavailableError(
                f"{where}: the file does not record its resolution (microns per pixel), so a "
                "physical resolution cannot be used. Pass the scan resolution explicitly: "
                "open_slide(path, mpp=0.25) in Python or --slide-mpp 0.25 on the command line "
                "(0.25 for 40x scans, 0.5 for 20x), or work in pixels with level=/downsample=."
            )
        return mpp

    def info(self) -> dict[str, Any]:
        """A JSON-friendly summary of the slide's metadata."""
        mpp = self.mpp
        return {
            "path": self.path,
            "name": self.name,
            "backend": self.backend,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [round(float(d), 6) for d in self.level_downsamples],
            "mpp": None if mpp is None else [float(mpp[0]), float(mpp[1])],
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "associated_images": self.associated_image_names,
        }

    # ------------------------------------------------------------------ resolution
    def downsample_for_mpp(self, mpp: float) -> float:
        """Downsample relative to level 0 that gives ``mpp`` microns per pixel."""
        if isinstance(mpp, bool) or not isinstance(mpp, (int, float, np.floating, np.integer)):
            raise TypeError(f"mpp must be a number, got {mpp!r}")
        if not (math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
        mx, my = self.require_mpp()
        return float(mpp) / ((mx + my) / 2.0)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as ``downsample``."""
        best = 0
        for i, d in enumerate(self.level_downsamples):  # levels are ordered fine to coarse
            if d <= downsample * (1.0 + DOWNSAMPLE_TOLERANCE):
                best = i
        return best

    def resolve(
        self, *, level: int | None = None, mpp: float | None = None, downsample: float | None = None
    ) -> Resolution:
        """Decide which level serves a read at ``level``, ``mpp`` or ``downsample`` (one of them).

        Raises
        ------
        MppUnavailableError
            ``mpp`` was given but the slide does not know its resolution.
        ValueError
            More than one of the three was given, or a value is out of range.
        """
        given = [k for k, v in (("level", level), ("mpp", mpp), ("downsample", downsample)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of level, mpp or downsample; got {', '.join(given)}")
        if level is not None:
            if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
                raise TypeError(f"level must be an int, got {level!r}")
            if not 0 <= level < self.level_count:
                raise ValueError(
                    f"{self.path or 'slide'}: level {level} does not exist; this slide has levels "
                    f"0..{self.level_count - 1}"
                )
            return Resolution(int(level), float(self.level_downsamples[level]), False)
        if mpp is not None:
            ds = self.downsample_for_mpp(mpp)
            if ds < 1.0 - DOWNSAMPLE_TOLERANCE:
                native = self.require_mpp()
                raise MppUnavailableError(
                    f"{self.path or 'slide'}: {mpp} um/px is finer than the scan itself "
                    f"({native[0]:.4g} um/px at level 0); histoscope does not invent detail by "
                    f"upsampling. Ask for {native[0]:.4g} um/px or coarser."
                )
        elif downsample is not None:
            ds = float(downsample)
            if not (math.isfinite(ds) and ds > 0):
                raise ValueError(f"downsample must be a positive number, got {downsample!r}")
        else:
            return Resolution(0, 1.0, False)
        lvl = self.best_level_for_downsample(ds)
        lds = float(self.level_downsamples[lvl])
        if abs(ds / lds - 1.0) <= DOWNSAMPLE_TOLERANCE:
            return Resolution(lvl, lds, False)
        return Resolution(lvl, ds, True)

    # ------------------------------------------------------------------ reading
    def read_region(
        self,
        location: tuple[int, int],
        size: tuple[int, int],
        *,
        level: int | None = None,
        mpp: float | None = None,
        downsample: float | None = None,
    ) -> np.ndarray:
        """Read a rectangle of the slide as ``(height, width, 3)`` uint8 RGB.

        Parameters
        ----------
        location : (int, int)
            Top-left corner ``(x, y)`` in level-0 pixels.
        size : (int, int)
            ``(width, height)`` of the returned image in output pixels.
        level, mpp, downsample : optional, at most one
            Resolution of the output: a pyramid level, microns per pixel, or a downsample
            factor relative to level 0. Default: level 0. For ``mpp``/``downsample`` the
            nearest level at least as fine is read and resampled (Pillow, antialiased);
            a level within 1% of the request is used as it is.

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape ``(size[1], size[0], 3)``. Parts outside the slide are
            white.

        Raises
        ------
        RegionError
            Non-positive size, or a region entirely outside the slide.
        MppUnavailableError
            ``mpp`` given for a slide without a known resolution, or finer than level 0.
        """
        x, y = _as_pair(location, "location")
        w, h = _as_pair(size, "size")
        if w <= 0 or h <= 0:
            raise RegionError(f"{self.path or 'slide'}: region size must be positive, got (width={w}, height={h})")
        res = self.resolve(level=level, mpp=mpp, downsample=downsample)
        W, H = self.dimensions
        ext_w, ext_h = w * res.downsample, h * res.downsample
        if x >= W or y >= H or x + ext_w <= 0 or y + ext_h <= 0:
            raise RegionError(
                f"{self.path or 'slide'}: region at (x={x}, y={y}) of {w}x{h} px "
                f"(downsample {res.downsample:.4g}) lies entirely outside the slide, whose "
                f"level-0 size is {W}x{H}"
            )
        if not res.resample:
            return self._read_checked(res.level, x, y, w, h)
        return self._read_resampled(res.level, float(x), float(y), w, h, res.downsample)

    def _read_checked(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        if w * h > MAX_SOURCE_PIXELS * 4:
            # assemble very large plain reads in horizontal strips
            out = np.empty((h, w, 3), np.uint8)
            step = max(1, (MAX_SOURCE_PIXELS * 4) // w)
            ds = self.level_downsamples[level]
            for r in range(0, h, step):
                rh = min(step, h - r)
                out[r : r + rh] = self._read(level, x0, int(round(y0 + r * ds)), w, rh)
            return out
        arr = self._read(level, x0, y0, w, h)
        if arr.shape != (h, w, 3) or arr.dtype != np.uint8:  # pragma: no cover - backend contract
            raise RuntimeError(f"backend {self.backend} returned {arr.shape} {arr.dtype} for {w}x{h}")
        return arr

    def _read_resampled(self, level: int, x: float, y: float, w: int, h: int, ds: float) -> np.ndarray:
        lds = float(self.level_downsamples[level])
        scale = ds / lds  # level pixels per output pixel
        src_w, src_h = w * scale, h * scale
        if src_w * src_h > MAX_SOURCE_PIXELS and (w > 1 or h > 1):
            # Split the output into blocks and read each; memory stays bounded on any level.
            out = np.empty((h, w, 3), np.uint8)
            block = max(1, int(math.sqrt(MAX_SOURCE_PIXELS) / scale))
            for by in range(0, h, block):
                for bx in range(0, w, block):
                    bw, bh = min(block, w - bx), min(block, h - by)
                    out[by : by + bh, bx : bx + bw] = self._read_resampled(
                        level, x + bx * ds, y + by * ds, bw, bh, ds
                    )
            return out
        # Source rectangle in level pixels, with a margin for the resampling filter.
        lx, ly = x / lds, y / lds
        margin = 2 + int(math.ceil(scale))
        sx0, sy0 = int(math.floor(lx)) - margin, int(math.floor(ly)) - margin
        sx1, sy1 = int(math.ceil(lx + src_w)) + margin, int(math.ceil(ly + src_h)) + margin
        src = self._read(level, int(round(sx0 * lds)), int(round(sy0 * lds)), sx1 - sx0, sy1 - sy0)
        box = (lx - sx0, ly - sy0, lx - sx0 + src_w, ly - sy0 + src_h)
        img = Image.fromarray(src).resize((w, h), Image.Resampling.BILINEAR, box=box)
        return np.asarray(img)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide scaled so that its longer side is ``max_size`` pixels (HxWx3 uint8).

        Reads the nearest pyramid level and resamples it block by block, so even a
        single-level gigapixel slide never has to fit in memory.
        """
        if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size <= 0:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        W, H = self.dimensions
        ds = max(W / max_size, H / max_size, 1.0)
        return self.read_region((0, 0), self.size_at(ds), downsample=ds)

    def size_at(self, downsample: float) -> tuple[int, int]:
        """``(width, height)`` of the whole slide at ``downsample`` (at least 1 x 1)."""
        W, H = self.dimensions
        return max(1, int(round(W / downsample))), max(1, int(round(H / downsample)))

    # ------------------------------------------------------------------ protocol
    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        W, H = self.dimensions
        mpp = self.mpp
        mpp_s = "unknown" if mpp is None else f"{mpp[0]:.4g}"
        return f"<{type(self).__name__} {self.name!r} {W}x{H} levels={self.level_count} mpp={mpp_s}>"

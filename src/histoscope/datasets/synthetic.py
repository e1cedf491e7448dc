"""Synthetic H&E whole-slide images.

:func:`synthetic_slide` writes a pyramidal, tiled, JPEG-compressed BigTIFF that
OpenSlide opens as ``generic-tiff``.  The content is drawn procedurally: every
pixel of every pyramid level is a deterministic function of its level-0
coordinates and of ``seed`` (hash-based lattice value noise, objects defined per
cell from a hash of the cell index), so tiles can be drawn independently, in any
order, at any downsample, and memory stays bounded whatever the slide size.

Colour is composed physically, in optical-density space, from haematoxylin and
eosin concentrations (Beer-Lambert): ``OD = c_H * h + c_E * e`` and
``RGB = 255 * 10 ** -OD``.

:func:`demo_slide` returns the bundled demo slide (generated once, then cached).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import numbers
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np
import tifffile

from .._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

    import pandas as pd

__all__ = ["SyntheticSlideInfo", "demo_slide", "synthetic_slide"]

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin and eosin,
# normalised to unit length.  ``histoscope.stain`` holds the canonical stain
# matrix; this private copy keeps the generator free of intra-package imports.
_H_OD = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
_E_OD = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])

_GLASS_RGB = np.array([243.0, 241.0, 240.0])  # bright-field background
_LN10 = math.log(10.0)

_THUMB_MAX = 1024  # pyramid stops once the longer side is <= this
_TEX_PERIOD = 512  # period (level-0 px) of the fine periodic textures

# Nuclei are drawn one by one while a level pixel is at most this many microns;
# at coarser levels their expected optical density is drawn instead.
_NUCLEI_MAX_PIXEL_UM = 4.0
_NUC_CELL_UM = 16.0  # nuclei candidates live on a grid of cells of this size
_NUC_PER_CELL = 8  # candidates per cell (upper bound on the local density)
_NUC_BLOCK = 16  # nuclei are generated (and memoised) in blocks of cells this wide
_NUC_CACHE_BLOCKS = 512  # memoised blocks (some tens of MB at most)
_NUC_MARGIN_UM = 5.0  # largest nucleus semi-axis
_MITOSIS_MARGIN_UM = 8.0  # largest distance of a mitotic figure part from its centre

# Nucleus types: (long axis range um, aspect range, haematoxylin range, density /um^2)
_NUC_STROMA = ((6.5, 8.0), (0.28, 0.45), (0.45, 0.70), 1.0 / 420.0)
_NUC_TUMOUR = ((6.0, 8.0), (0.62, 0.95), (0.40, 0.80), 1.0 / 85.0)
_NUC_LYMPH = ((5.0, 5.8), (0.85, 1.00), (0.85, 1.15), 1.0 / 42.0)
_NUC_TYPES = (_NUC_STROMA, _NUC_TUMOUR, _NUC_LYMPH)
_RIM_MEAN = 0.95  # mean of the nuclear rim profile 0.85 + 0.2 * q^2 over an ellipse

# parameters of the bundled demo slide (see demo_slide)
_DEMO: dict[str, Any] = {
    "width": 12000,
    "height": 9000,
    "mpp": 0.25,
    "seed": 0,
    "tile": 256,
    "n_mitoses": 20,
    "tissue_fraction": 0.45,
    "jpeg_quality": 85,
}

# 64-bit hashing (splitmix64 finaliser) for the lattice values and objects.
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_K3 = np.uint64(0x165667B19E3779F9)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S21, _S42, _S40 = np.uint64(21), np.uint64(42), np.uint64(40)
_MASK21 = np.uint64((1 << 21) - 1)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)
class SyntheticSlideInfo:
    """Description of a synthetic slide written by :func:`synthetic_slide`.

    Attributes
    ----------
    path : pathlib.Path
        The slide file.
    width, height : int
        Level-0 size in pixels.
    mpp : float
        Microns per pixel at level 0.
    levels : list of tuple of int
        ``(width, height)`` of every pyramid level, level 0 first.
    mitoses : numpy.ndarray
        ``(N, 2)`` float array of the level-0 ``(x, y)`` centres of the planted
        mitosis-like figures.
    seed : int
        The seed the slide was drawn from.
    """

    path: Path
    width: int
    height: int
    mpp: float
    levels: list[tuple[int, int]]
    mitoses: np.ndarray
    seed: int

    def mitoses_frame(self) -> pd.DataFrame:
        """Return the planted mitoses as a table.

        Returns
        -------
        pandas.DataFrame
            One row per mitosis, columns ``x`` and ``y`` (level-0 pixels).
        """
        import pandas as pd

        m = np.asarray(self.mitoses, dtype=float).reshape(-1, 2)
        return pd.DataFrame({"x": m[:, 0], "y": m[:, 1]})

    def _to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "levels": [list(lv) for lv in self.levels],
            "mitoses": np.asarray(self.mitoses, dtype=float).tolist(),
            "seed": self.seed,
        }

    @classmethod
    def _from_json(cls, d: dict[str, Any], path: Path) -> SyntheticSlideInfo:
        mit = np.asarray(d["mitoses"], dtype=float).reshape(-1, 2)
        return cls(
            path=path,
            width=int(d["width"]),
            height=int(d["height"]),
            mpp=float(d["mpp"]),
            levels=[(int(w), int(h)) for w, h in d["levels"]],
            mitoses=mit,
            seed=int(d["seed"]),
        )


def synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 12000,
    height: int = 9000,
    mpp: float = 0.5,
    tile: int = 256,
    seed: int = 0,
    n_mitoses: int = 20,
    tissue_fraction: float = 0.45,
    jpeg_quality: int = 85,
    verbose: bool = True,
) -> SyntheticSlideInfo:
    """Write a synthetic H&E whole-slide image.

    The file is a pyramidal BigTIFF: every level is a tiled (``tile`` x
    ``tile``), JPEG-compressed RGB page, each half the size of the previous one,
    down to a level whose longer side is at most 1024 px.  Levels are stored as
    successive pages (not SubIFDs), so OpenSlide reads it as ``generic-tiff``;
    level 0 carries the resolution in pixels per centimetre, from which readers
    recover ``mpp``.  Tiles are drawn and written one at a time, so memory stays
    bounded for any slide size.

    The content: glass background, a few irregular tissue pieces covering about
    ``tissue_fraction`` of the slide, fibrous eosinophilic stroma with spindle
    nuclei, nests of densely packed tumour nuclei, lymphoid aggregates, lumina,
    and ``n_mitoses`` dark, ragged mitosis-like figures at known positions.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write the slide.  Its parent directory must exist.  The file is
        written under a temporary name beside it and renamed at the end, so an
        interrupted run never leaves a partial slide under ``path``.
    width, height : int, optional
        Level-0 size in pixels.
    mpp : float, optional
        Microns per pixel at level 0.
    tile : int, optional
        Tile edge in pixels; a positive multiple of 16.
    seed : int, optional
        Non-negative seed.  The same arguments give a byte-identical file.
    n_mitoses : int, optional
        Number of planted mitosis-like figures (>= 0).
    tissue_fraction : float, optional
        Approximate fraction of the slide covered by tissue, in (0, 1).
    jpeg_quality : int, optional
        JPEG quality, 1 to 100.
    verbose : bool, optional
        Show a progress bar over tiles.

    Returns
    -------
    SyntheticSlideInfo
        Path, size, mpp, level sizes, the level-0 centres of the mitoses and
        the seed.

    Raises
    ------
    ValueError
        If an argument has the wrong type or is out of range (the message shows
        the value received), or if the tissue is too small to hold
        ``n_mitoses`` figures.
    FileNotFoundError
        If the parent directory of ``path`` does not exist.
    IsADirectoryError
        If ``path`` is a directory.
    """
    width = _check_int("width", width, minimum=1)
    height = _check_int("height", height, minimum=1)
    tile = _check_int("tile", tile, minimum=16)
    if tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile!r}")
    seed = _check_int("seed", seed, minimum=0)
    n_mitoses = _check_int("n_mitoses", n_mitoses, minimum=0)
    jpeg_quality = _check_int("jpeg_quality", jpeg_quality, minimum=1)
    if jpeg_quality > 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
    mpp = _check_real("mpp", mpp)
    if not mpp > 0:
        raise ValueError(f"mpp must be a finite number > 0, got {mpp!r}")
    tissue_fraction = _check_real("tissue_fraction", tissue_fraction)
    if not 0.0 < tissue_fraction < 1.0:
        raise ValueError(
            f"tissue_fraction must be in the open interval (0, 1), got {tissue_fraction!r}"
        )
    path = Path(os.fspath(path)).expanduser()
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(
            f"parent directory of the slide path does not exist: {str(parent)!r}"
        )
    if path.is_dir():
        raise IsADirectoryError(f"slide path is a directory: {str(path)!r}")

    levels = _level_dims(width, height)
    with _single_threaded_blas():  # also makes the float sums independent of threads
        model = _SlideModel(width, height, mpp, seed, tissue_fraction, n_mitoses)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
        os.close(fd)
        try:
            _write_tiff(tmp, model, levels, tile, jpeg_quality, verbose)
            _publish(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    return SyntheticSlideInfo(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        levels=levels,
        mitoses=model.mitoses.copy(),
        seed=seed,
    )


def demo_slide(
    cache_dir: str | os.PathLike[str] | None = None, *, verbose: bool = True
) -> SyntheticSlideInfo:
    """Return the bundled demo slide, generating it on first use.

    The demo slide is ``synthetic_slide(width=12000, height=9000, mpp=0.25,
    seed=0)`` with the other arguments at their defaults (about 15 s to
    draw).  It is written once
    into ``cache_dir`` under a name that holds the package version and the
    parameters, next to a small JSON sidecar holding the returned information,
    and reused on later calls.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        Cache directory, created if needed.  Default: ``$HISTOSCOPE_CACHE`` if
        set, else ``~/.cache/histoscope``.
    verbose : bool, optional
        Show a progress bar if the slide has to be generated.

    Returns
    -------
    SyntheticSlideInfo
        Information on the cached demo slide.

    Raises
    ------
    OSError
        If the cache directory cannot be created or written.
    """
    if cache_dir is None:
        env = os.environ.get("HISTOSCOPE_CACHE")
        cache_dir = env if env else Path.home() / ".cache" / "histoscope"
    cache = Path(os.fspath(cache_dir)).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    params = dict(_DEMO)
    stem = (
        f"histoscope-{__version__}-demo-{params['width']}x{params['height']}"
        f"-mpp{params['mpp']:g}-seed{params['seed']}-tile{params['tile']}"
        f"-mit{params['n_mitoses']}-tf{params['tissue_fraction']:g}-q{params['jpeg_quality']}"
    )
    slide_path = cache / f"{stem}.tiff"
    sidecar = cache / f"{stem}.json"
    if slide_path.is_file() and sidecar.is_file():
        try:
            d = json.loads(sidecar.read_text(encoding="utf-8"))
            if d.get("params") == params and d.get("version") == __version__:
                return SyntheticSlideInfo._from_json(d["info"], slide_path)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable sidecar: regenerate
    info = synthetic_slide(slide_path, verbose=verbose, **params)
    payload = {"version": __version__, "params": params, "info": info._to_json()}
    fd, tmp = tempfile.mkstemp(prefix=f".{sidecar.name}.", suffix=".part", dir=cache)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
        _publish(tmp, sidecar)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return info


# --------------------------------------------------------------------------- #
# argument checks
# --------------------------------------------------------------------------- #


def _publish(tmp: str, path: Path) -> None:
    """Give a finished temporary file the usual permissions and its final name."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


# --------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run OpenBLAS single-threaded for the duration (best effort, Linux only).

    Each tile needs a few small matrix products that gain nothing from
    threads, while OpenBLAS workers would spin on every other core.
    """
    restore = []
    try:
        if sys.platform.startswith("linux"):
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
                mapped = {ln.split(maxsplit=5)[-1].strip() for ln in fh}
            libs = sorted(p for p in mapped if "openblas" in os.path.basename(p).lower())
            names = [(p, s) for p in ("scipy_openblas", "openblas") for s in ("64_", "")]
            for path in libs:
                lib = ctypes.CDLL(path)
                for prefix, suffix in names:
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        get.restype = ctypes.c_int
                        put.argtypes = [ctypes.c_int]
                        restore.append((put, int(get())))
                        put(1)
                        break
    except (OSError, ValueError, AttributeError):
        pass
    try:
        yield
    finally:
        for put, n in restore:
            put(n)


def _level_dims(width: int, height: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while max(dims[-1]) > _THUMB_MAX:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


def _write_tiff(
    path: str,
    model: _SlideModel,
    levels: Sequence[tuple[int, int]],
    tile: int,
    quality: int,
    verbose: bool,
) -> None:
    from tqdm.auto import tqdm

    width, height = levels[0]
    counts = [(-(-w // tile)) * (-(-h // tile)) for w, h in levels]
    # what tifffile itself would call for compression="jpeg" on RGB data
    jpeg_args = {
        "level": quality,
        "subsampling": (2, 2),
        "colorspace": "RGB",
        "outcolorspace": "YCBCR",
    }
    bar = tqdm(total=sum(counts), unit="tile", desc="synthetic slide", disable=not verbose)
    # glibc hands freed large blocks straight back to the OS, so every per-tile
    # temporary would page-fault fresh memory; freeing one large block raises
    # its dynamic mmap threshold and the temporaries get recycled instead.
    warm = np.empty(16 << 20, np.uint8)
    del warm
    try:
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            for k, (w, h) in enumerate(levels):
                ds = 1 << k

                def tiles(w: int = w, h: int = h, ds: int = ds) -> Iterator[bytes]:
                    cache: dict[tuple[int, int, int], bytes] = {}
                    for ty in range(0, h, tile):
                        for tx in range(0, w, tile):
                            arr = model.render_tile(tx * ds, ty * ds, tile, tile, ds)
                            if arr is None:  # glass only: reuse the encoded tile
                                key = model.glass_key(tx * ds, ty * ds, ds)
                                data = cache.get(key)
                                if data is None:
                                    glass = model.glass(tx * ds, ty * ds, tile, tile, ds)
                                    data = bytes(imagecodecs.jpeg_encode(glass, **jpeg_args))
                                    cache[key] = data
                            else:
                                data = bytes(imagecodecs.jpeg_encode(arr, **jpeg_args))
                            bar.update(1)
                            yield data

                common: dict[str, Any] = {
                    "shape": (h, w, 3),
                    "dtype": "uint8",
                    "photometric": "rgb",
                    "tile": (tile, tile),
                    "compression": "jpeg",
                    "compressionargs": {"level": quality},
                    "subsampling": (2, 2),
                    "resolution": (1e4 / model.mpp * w / width, 1e4 / model.mpp * h / height),
                    "resolutionunit": "CENTIMETER",
                    "metadata": None,
                }
                if k == 0:
                    desc = (
                        f"histoscope synthetic H&E slide |seed={model.seed}"
                        f"|mpp={model.mpp:g}|version={__version__}"
                    )
                    tw.write(tiles(), description=desc, software="histoscope", **common)
                else:
                    tw.write(tiles(), subfiletype=1, software=False, **common)
    finally:
        bar.close()


# --------------------------------------------------------------------------- #
# hashing and value noise
# --------------------------------------------------------------------------- #


def _mix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _S30)
    h = h * _M1
    h = h ^ (h >> _S27)
    h = h * _M2
    return h ^ (h >> _S31)


def _hash2(ix: np.ndarray, iy: np.ndarray, salt: np.uint64) -> np.ndarray:
    a = np.asarray(ix, dtype=np.int64).astype(np.uint64) * _K1
    b = np.asarray(iy, dtype=np.int64).astype(np.uint64) * _K2
    return _mix64((a ^ b) ^ salt)


def _hash3(ix: np.ndarray, iy: np.ndarray, k: np.ndarray, salt: np.uint64) -> np.ndarray:
    h = _hash2(ix, iy, salt)
    return _mix64(h + np.asarray(k, dtype=np.int64).astype(np.uint64) * _K3)


def _unit(h: np.ndarray, shift: np.uint64 = _S40) -> np.ndarray:
    """24 bits of ``h`` (from bit ``shift``) as float32 in [0, 1)."""
    return ((h >> shift) & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _fade(cell: float, ds: float) -> float:
    """Weight of a noise octave of lattice spacing ``cell`` drawn at downsample ``ds``."""
    return min(max(cell / ds - 1.0, 0.0), 1.0)


# An octave: (salt, lattice spacing in level-0 px, amplitude)
_Spec = tuple[np.uint64, float, float]


def _axis(coords: np.ndarray, cell: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = coords / cell
    i0 = np.floor(u)
    s = _smooth(u - i0).astype(np.float32)
    return i0.astype(np.int64), s


def _noise_fields(
    fields: Sequence[Sequence[_Spec]], xs: np.ndarray, ys: np.ndarray, ds: float
) -> list[np.ndarray]:
    """Several fBm value-noise fields on the grid ``ys x xs`` (increasing level-0 coordinates).

    All octaves of all fields are evaluated together: lattice values are
    interpolated along x on the small lattice, then along y (and summed over
    the octaves of a field) by one matrix product per field.
    """
    ny, nx = len(ys), len(xs)
    octs = [
        (fi, salt, cell, amp * f)
        for fi, specs in enumerate(fields)
        for salt, cell, amp in specs
        if (f := _fade(cell, ds)) > 0.0
    ]
    if not octs:
        return [np.zeros((ny, nx), np.float32) for _ in fields]
    k = len(octs)
    cells = np.array([o[2] for o in octs])
    ix, sx = _axis(xs[None, :], cells[:, None])
    iy, sy = _axis(ys[None, :], cells[:, None])
    i0, j0 = ix[:, :1], iy[:, :1]
    ci, cj = ix - i0, iy - j0
    ni, nj = int(ci[:, -1].max()) + 2, int(cj[:, -1].max()) + 2
    salts = np.array([o[1] for o in octs], dtype=np.uint64)[:, None, None]
    amps = np.array([o[3] for o in octs], dtype=np.float32)[:, None, None]
    lat = _hash2(
        i0[:, :, None] + np.arange(ni)[None, None, :],
        j0[:, :, None] + np.arange(nj)[None, :, None],
        salts,
    )
    lat = (_unit(lat) * np.float32(2.0) - np.float32(1.0)) * amps  # (k, nj, ni)
    kk = np.arange(k)[:, None]
    wx = np.zeros((k, ni, nx), np.float32)
    cols = np.arange(nx)[None, :]
    wx[kk, ci, cols] = 1.0 - sx
    wx[kk, ci + 1, cols] = sx
    b = np.matmul(lat, wx).reshape(k * nj, nx)  # x-interpolated lattice rows
    wy = np.zeros((ny, k, nj), np.float32)
    rows = np.arange(ny)[None, :]
    wy[rows, kk, cj] = 1.0 - sy
    wy[rows, kk, cj + 1] = sy
    wy = wy.reshape(ny, k * nj)
    fidx = [o[0] for o in octs]
    out = []
    for fi in range(len(fields)):
        if fi not in fidx:
            out.append(np.zeros((ny, nx), np.float32))
            continue
        lo = fidx.index(fi) * nj
        hi = (len(fidx) - fidx[::-1].index(fi)) * nj
        out.append(wy[:, lo:hi] @ b[lo:hi])
    return out


def _noise_grid(specs: Sequence[_Spec], xs: np.ndarray, ys: np.ndarray, ds: float) -> np.ndarray:
    """One fBm field on a grid (see :func:`_noise_fields`)."""
    return _noise_fields([specs], xs, ys, ds)[0]


def _noise_points(specs: Sequence[_Spec], x: np.ndarray, y: np.ndarray, ds: float) -> np.ndarray:
    """The same fBm as :func:`_noise_grid`, at arbitrary points."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.zeros(x.shape, np.float32)
    for salt, cell, amp in specs:
        f = _fade(cell, ds)
        if f <= 0.0:
            continue
        ix, sx = _axis(x, cell)
        iy, sy = _axis(y, cell)

        def lat(i: np.ndarray, j: np.ndarray, salt: np.uint64 = salt) -> np.ndarray:
            return _unit(_hash2(i, j, salt)) * np.float32(2.0) - np.float32(1.0)

        top = lat(ix, iy) * (1.0 - sx) + lat(ix + 1, iy) * sx
        bot = lat(ix, iy + 1) * (1.0 - sx) + lat(ix + 1, iy + 1) * sx
        out += np.float32(amp * f) * (top * (1.0 - sy) + bot * sy)
    return out


def _bound(specs: Sequence[_Spec], ds: float) -> float:
    """Largest absolute value an fBm field can take."""
    return sum(a * _fade(c, ds) for _, c, a in specs)


def _lerp_matrix(coords: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Bilinear-interpolation weights (len(coords), len(grid)) on a regular grid."""
    g = grid[1] - grid[0]
    p = (coords - grid[0]) / g
    i = np.clip(np.floor(p).astype(np.int64), 0, len(grid) - 2)
    t = (p - i).astype(np.float32)
    w = np.zeros((len(coords), len(grid)), np.float32)
    r = np.arange(len(coords))
    w[r, i] = 1.0 - t
    w[r, i + 1] = t
    return w


def _clip01(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0, out=a)


# --------------------------------------------------------------------------- #
# the procedural slide
# --------------------------------------------------------------------------- #


class _SlideModel:
    """Deterministic procedural H&E slide; draws any region at any downsample.

    Coordinates are level-0 pixels; ``render(x0, y0, w, h, ds)`` returns the
    ``h x w`` RGB image whose pixel ``(i, j)`` covers level-0 pixels
    ``[x0 + j*ds, x0 + (j+1)*ds) x [y0 + i*ds, y0 + (i+1)*ds)``.  Every value is
    a function of level-0 coordinates and the seed only, so regions can be drawn
    in any order and adjacent tiles (and levels) agree.
    """

    def __init__(
        self, width: int, height: int, mpp: float, seed: int, tissue_fraction: float, n_mitoses: int
    ) -> None:
        self.width, self.height, self.mpp, self.seed = width, height, mpp, seed
        ss = np.random.SeedSequence(seed)
        s_salt, s_tex, s_mit, s_misc = ss.spawn(4)
        salts = iter(np.random.default_rng(s_salt).integers(0, 2**63, size=64, dtype=np.uint64))
        um = 1.0 / mpp  # level-0 px per micron

        def spec(*octaves: tuple[float, float]) -> list[_Spec]:
            return [(next(salts), float(c), float(a)) for c, a in octaves]

        size = float(max(width, height))
        self.size = size
        misc = np.random.default_rng(s_misc)

        # Tissue: a few elliptical gaussian pieces plus slide-scale noise,
        # thresholded; the outline is roughened by absolute-scale noise.
        self.pieces = self._make_pieces(misc)
        self.t_specs = spec(
            (size / 2.5, 0.55), (size / 5, 0.28), (size / 10, 0.14), (size / 20, 0.07)
        )
        rag = [(250.0, 50.0), (70.0, 16.0), (20.0, 4.0)]  # (cell um, displacement um)
        total = sum(a for _, a in rag) * um
        scale = min(1.0, 0.03 * size / total)
        self.rag_specs = spec(*[(c * um, a * um * scale) for c, a in rag])
        # Histology: tumour zones with nests, lymphoid aggregates, lumina, stain
        # variation and collagen warping; absolute (micron) scales.
        self.zone_specs = spec((1800 * um, 1.0), (800 * um, 0.5))
        self.nest_specs = spec((110 * um, 1.0), (45 * um, 0.45), (18 * um, 0.15))
        self.lymph_specs = spec((450 * um, 1.0), (150 * um, 0.45))
        self.lumen_specs = spec((220 * um, 1.0), (70 * um, 0.45), (22 * um, 0.12))
        self.stain_specs = spec((500 * um, 1.0), (130 * um, 0.5))
        self.eos_specs = spec((60 * um, 1.0), (20 * um, 0.5))
        self.fib_lambda = 7.0 * um  # collagen banding wavelength (px)
        kf = 2.0 * np.pi / self.fib_lambda
        # phase warps (radians) of the two collagen families, and the extra
        # phase jitter of their second harmonic
        self.warp_specs = (
            spec((60 * um, 12.0 * um * kf), (18 * um, 3.0 * um * kf)),
            spec((60 * um, 12.0 * um * kf), (18 * um, 3.0 * um * kf)),
        )
        self.jit_specs = spec((60 * um, 6.0 * um * kf), (18 * um, 1.5 * um * kf))
        self.blend_specs = spec((350 * um, 1.0))
        self.nuc_salts = (next(salts), next(salts), next(salts))

        self.fib_theta = np.empty(2)
        self.fib_theta[0] = misc.uniform(0, np.pi)
        self.fib_theta[1] = self.fib_theta[0] + misc.uniform(0.3, 0.7) * np.pi
        self.edge_w = max(1.5 * um, 1.0)  # tissue edge blur (px)

        # tissue threshold from a coarse map of the whole slide
        nx = 256
        ny = max(8, round(nx * height / width))
        gx = (np.arange(nx) + 0.5) * (width / nx)
        gy = (np.arange(ny) + 0.5) * (height / ny)
        tmap = self._tissue_coarse(gx, gy, 1.0, _noise_grid(self.t_specs, gx, gy, 1.0))
        tmap = tmap.astype(np.float64)
        self.thr = float(np.quantile(tmap, 1.0 - tissue_fraction))
        gyy, gxx = np.gradient(tmap, gy, gx)
        grad = np.hypot(gxx, gyy)
        band = np.abs(tmap - self.thr)
        sel = band <= np.quantile(band, 0.05)
        self.grad = max(float(np.median(grad[sel])), 1e-9)

        self.tex = _make_textures(np.random.default_rng(s_tex), mpp)
        self._tex_pyr: dict[int, np.ndarray] = {1: self.tex}
        self._tex_tiled: dict[int, np.ndarray] = {}
        self._nuc_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

        self._nuc_mass = []
        for (l0, l1), (r0, r1), (c0, c1), _rho in _NUC_TYPES:
            ea2 = (l0 * l0 + l0 * l1 + l1 * l1) / 12.0 / 4.0  # E[(L/2)^2], um^2
            area = math.pi * ea2 * (r0 + r1) / 2.0
            self._nuc_mass.append((area, area * (c0 + c1) / 2.0 * _RIM_MEAN))

        self._init_mitoses(np.random.default_rng(s_mit), n_mitoses)

    # ---------------------------------------------------------------- tissue
    def _make_pieces(self, rng: np.random.Generator) -> np.ndarray:
        """Rows (cx, cy, A, B, C, inv_min_axis): exp(-(A dx^2 + B dx dy + C dy^2))."""
        n = int(rng.integers(2, 5))
        centres: list[tuple[float, float]] = []
        rows = []
        for _ in range(n):
            for _try in range(50):
                cx = rng.uniform(0.28, 0.72) * self.width
                cy = rng.uniform(0.28, 0.72) * self.height
                if all(math.hypot(cx - a, cy - b) > 0.25 * self.size for a, b in centres):
                    break
            centres.append((cx, cy))
            ra = rng.uniform(0.16, 0.30) * self.size
            rb = ra * rng.uniform(0.4, 0.85)
            phi = rng.uniform(0, np.pi)
            c, s = math.cos(phi), math.sin(phi)
            a_, c_ = 1.0 / (ra * ra), 1.0 / (rb * rb)
            qa = a_ * c * c + c_ * s * s
            qb = 2.0 * (a_ - c_) * c * s
            qc = a_ * s * s + c_ * c * c
            rows.append((cx, cy, qa, qb, qc, 1.0 / rb))
        return np.array(rows)

    def _penalty(self, e: np.ndarray) -> np.ndarray:
        m = np.float32(0.08 * self.size)
        p = _clip01((m - e.astype(np.float32)) / m)
        return np.float32(2.5) * p * p

    def _tissue_coarse(
        self, xs: np.ndarray, ys: np.ndarray, ds: float, noise: np.ndarray
    ) -> np.ndarray:
        """Smooth tissue field on a grid (``noise`` = fBm of ``t_specs`` on that grid)."""
        q = None
        for cx, cy, a, b, c, _ in self.pieces:
            dx = (xs - cx).astype(np.float32)
            dy = (ys - cy).astype(np.float32)
            qi = np.multiply.outer(dy * np.float32(b), dx)
            qi += (np.float32(a) * dx * dx)[None, :]
            qi += (np.float32(c) * dy * dy)[:, None]
            q = qi if q is None else np.minimum(q, qi, out=q)
        t = np.exp(-q, out=q)
        t += noise
        ex = np.minimum(xs, self.width - xs)
        ey = np.minimum(ys, self.height - ys)
        t -= self._penalty(np.minimum(ey[:, None], ex[None, :]))
        return t

    def _anchor_step(self, ds: float) -> float:
        cmin = min(c for _, c, _ in self.t_specs)
        return max(1.0, min(16.0 * ds, cmin / 8.0))

    def _tissue_anchor(
        self, xs: np.ndarray, ys: np.ndarray, ds: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Smooth tissue field on the anchor grid (multiples of a step) around a grid."""
        g = self._anchor_step(ds)
        gx = np.arange(math.floor(xs[0] / g), math.floor(xs[-1] / g) + 2) * g
        gy = np.arange(math.floor(ys[0] / g), math.floor(ys[-1] / g) + 2) * g
        return gx, gy, self._tissue_coarse(gx, gy, ds, _noise_grid(self.t_specs, gx, gy, ds))

    def _tissue_smooth(self, xs: np.ndarray, ys: np.ndarray, ds: float) -> np.ndarray:
        """Smooth tissue field on a grid, bilinear from the anchor grid (cheap, tile-consistent)."""
        gx, gy, tc = self._tissue_anchor(xs, ys, ds)
        return _lerp_matrix(ys, gy) @ tc @ _lerp_matrix(xs, gx).T

    def _tissue_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tissue field (with the ragged outline) at points (analytic, not interpolated)."""
        q = np.full(x.shape, np.inf)
        for cx, cy, a, b, c, _ in self.pieces:
            dx, dy = x - cx, y - cy
            q = np.minimum(q, a * dx * dx + b * dx * dy + c * dy * dy)
        e = np.minimum(np.minimum(x, self.width - x), np.minimum(y, self.height - y))
        t = np.exp(-q) + _noise_points(self.t_specs, x, y, 1.0) - self._penalty(e)
        return t + self.grad * _noise_points(self.rag_specs, x, y, 1.0)

    def _regions(
        self, zone: np.ndarray, nest: np.ndarray, lymph: np.ndarray, lumen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tumour-nest weight, lymphoid weight and lumen (white space) weight."""
        f32 = np.float32
        zw = _clip01(zone / f32(0.12) + f32(0.5))
        tw = zw * _clip01(nest / f32(0.06) + f32(0.5))
        lw = _clip01((lymph - f32(0.5)) / f32(0.08)) * (f32(1.0) - zw)
        lu = _clip01((lumen - f32(0.7)) / f32(0.05))
        return tw, lw, lu

    def _density_grid(self, xs: np.ndarray, ys: np.ndarray, ds: float) -> list[np.ndarray]:
        """Nucleus densities (per um^2) of the three types on a grid."""
        f32 = np.float32
        tn, rag, zone, nest, lymph, lumen = _noise_fields(
            [
                self.t_specs, self.rag_specs[:2], self.zone_specs,
                self.nest_specs, self.lymph_specs, self.lumen_specs,
            ],
            xs, ys, ds,
        )
        t = self._tissue_coarse(xs, ys, ds, tn) + f32(self.grad) * rag
        inside = _clip01((t - f32(self.thr)) / f32(self.grad * 4.0 / self.mpp) + f32(0.5))
        tw, lw, lu = self._regions(zone, nest, lymph, lumen)
        ok = inside * (f32(1.0) - lu)
        lw *= f32(1.0) - tw
        sw = _clip01(f32(1.0) - tw - lw)
        return [
            ok * sw * f32(_NUC_STROMA[3]),
            ok * tw * f32(_NUC_TUMOUR[3]),
            ok * lw * f32(_NUC_LYMPH[3]),
        ]

    # ---------------------------------------------------------------- textures
    def _texture(self, ds: int) -> np.ndarray:
        t = self._tex_pyr.get(ds)
        if t is None:
            prev = self._texture(ds // 2)
            c, p, _ = prev.shape
            t = prev.reshape(c, p // 2, 2, p // 2, 2).mean(axis=(2, 4)) if p >= 2 else prev
            self._tex_pyr[ds] = t
        return t

    def _tex_sample(self, ch: int, x0: float, y0: float, w: int, h: int, ds: int) -> np.ndarray:
        """Periodic texture channel ``ch`` over a region (anchored to level-0 coordinates)."""
        t = self._texture(ds)
        p = t.shape[1]
        need = p + max(w, h)
        tiled = self._tex_tiled.get(ds)
        if tiled is None or tiled.shape[1] < need:
            reps = -(-need // p)
            tiled = np.tile(t, (1, reps, reps))
            self._tex_tiled[ds] = tiled
        r0 = int(y0 // ds) % p
        c0 = int(x0 // ds) % p
        return tiled[ch, r0 : r0 + h, c0 : c0 + w]

    def glass_key(self, x0: float, y0: float, ds: int) -> tuple[int, int, int]:
        """Key of the glass pattern at a region origin (same key, same glass tile)."""
        p = self._texture(ds).shape[1]
        return (int(x0 // ds) % p, int(y0 // ds) % p, ds)

    def glass(self, x0: float, y0: float, w: int, h: int, ds: int) -> np.ndarray:
        """The glass-only (no tissue) image of a region."""
        noise = self._tex_sample(3, x0, y0, w, h, ds) * np.float32(0.6)
        out = np.empty((h, w, 3), np.uint8)
        for ch in range(3):
            out[:, :, ch] = np.rint(np.clip(noise + np.float32(_GLASS_RGB[ch]), 0, 255))
        return out

    # ---------------------------------------------------------------- mitoses
    def _init_mitoses(self, rng: np.random.Generator, n: int) -> None:
        um = 1.0 / self.mpp
        centres: list[tuple[float, float]] = []
        if n > 0:
            margin = (_MITOSIS_MARGIN_UM + 20.0) * um
            need_inside = self.grad * 15.0 * um
            min_dist2 = (40.0 * um) ** 2
            lo_x, hi_x = margin, self.width - margin
            lo_y, hi_y = margin, self.height - margin
            if hi_x > lo_x and hi_y > lo_y:
                for _ in range(200):
                    x = rng.uniform(lo_x, hi_x, 2048)
                    y = rng.uniform(lo_y, hi_y, 2048)
                    keep = rng.uniform(size=2048)
                    ok = self._tissue_points(x, y) - self.thr >= need_inside
                    zone = _noise_points(self.zone_specs, x, y, 1.0)
                    nest = _noise_points(self.nest_specs, x, y, 1.0)
                    lymph = _noise_points(self.lymph_specs, x, y, 1.0)
                    lumen = _noise_points(self.lumen_specs, x, y, 1.0)
                    tw, _lw, _lu = self._regions(zone, nest, lymph, lumen)
                    ok &= lumen < 0.5
                    ok &= keep < np.where(tw > 0.9, 1.0, 0.01)  # mostly in tumour nests
                    for xi, yi in zip(x[ok], y[ok], strict=True):
                        if all((xi - a) ** 2 + (yi - b) ** 2 >= min_dist2 for a, b in centres):
                            centres.append((float(xi), float(yi)))
                            if len(centres) == n:
                                break
                    if len(centres) == n:
                        break
            if len(centres) < n:
                raise ValueError(
                    f"could not place n_mitoses={n} mitotic figures inside the tissue "
                    f"(placed {len(centres)}); use a larger slide, a larger "
                    f"tissue_fraction or fewer mitoses"
                )
        self.mitoses = np.array(centres, dtype=np.float64).reshape(-1, 2)
        # parts and halos: rows x, y, a, b, theta, c_H (level-0 px)
        parts: list[tuple[float, ...]] = []
        halos: list[tuple[float, ...]] = []
        for cx, cy in self.mitoses:
            extent = rng.uniform(9.0, 12.0)  # um
            half = extent / 2.0
            phi = rng.uniform(0, np.pi)
            c, s = math.cos(phi), math.sin(phi)
            if rng.uniform() < 0.6:
                # metaphase plate: dark bar with chromosome arms sticking out
                core_b = rng.uniform(1.7, 2.3)
                parts.append((cx, cy, (half - 0.5) * um, core_b * um, phi, rng.uniform(1.3, 1.7)))
                for _ in range(int(rng.integers(14, 22))):
                    t = rng.uniform(-half + 0.8, half - 0.8)
                    o = rng.normal(0.0, 1.0)
                    px, py = cx + (t * c - o * s) * um, cy + (t * s + o * c) * um
                    parts.append((
                        px, py, rng.uniform(1.4, 2.4) * um, rng.uniform(0.4, 0.65) * um,
                        phi + np.pi / 2 + rng.normal(0.0, 0.5), rng.uniform(1.3, 2.1),
                    ))
            else:
                # prometaphase clump: irregular knot with radiating arms
                for _ in range(int(rng.integers(3, 6))):
                    r = rng.uniform(0.0, half - 2.8)
                    a = rng.uniform(0, 2 * np.pi)
                    parts.append((
                        cx + r * math.cos(a) * um, cy + r * math.sin(a) * um,
                        rng.uniform(2.0, 3.0) * um, rng.uniform(1.6, 2.4) * um,
                        rng.uniform(0, np.pi), rng.uniform(1.2, 1.5),
                    ))
                for _ in range(int(rng.integers(14, 22))):
                    a = rng.uniform(0, 2 * np.pi)
                    r = rng.uniform(half - 3.0, half - 1.2)
                    parts.append((
                        cx + r * math.cos(a) * um, cy + r * math.sin(a) * um,
                        rng.uniform(1.1, 1.8) * um, rng.uniform(0.4, 0.65) * um,
                        a + rng.normal(0.0, 0.4), rng.uniform(1.3, 2.1),
                    ))
            hr = (half + 2.5) * um
            halos.append((cx, cy, hr, hr * rng.uniform(0.75, 1.0), phi, 1.0))
        self._mit_parts = np.array(parts, dtype=np.float64).reshape(-1, 6)
        self._mit_halos = np.array(halos, dtype=np.float64).reshape(-1, 6)

    # ---------------------------------------------------------------- nuclei
    def _nuclei(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Nuclei centred in ``[x0, x1) x [y0, y1)``: rows x, y, a, b, theta, c_H."""
        block = _NUC_CELL_UM / self.mpp * _NUC_BLOCK
        parts = [
            self._nuclei_block(bx, by)
            for by in range(math.floor(y0 / block), math.floor(y1 / block) + 1)
            for bx in range(math.floor(x0 / block), math.floor(x1 / block) + 1)
        ]
        allv = np.concatenate(parts) if len(parts) > 1 else parts[0]
        x, y = allv[:, 0], allv[:, 1]
        return allv[(x >= x0) & (x < x1) & (y >= y0) & (y < y1)]

    def _nuclei_block(self, bx: int, by: int) -> np.ndarray:
        """All nuclei of a block of cells (memoised, least recently used first out)."""
        key = (bx, by)
        cache = self._nuc_cache
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
        out = self._nuclei_cells(bx * _NUC_BLOCK, by * _NUC_BLOCK, _NUC_BLOCK, _NUC_BLOCK)
        cache[key] = out
        if len(cache) > _NUC_CACHE_BLOCKS:
            cache.popitem(last=False)
        return out

    def _nuclei_cells(self, cx0: int, cy0: int, ncx: int, ncy: int) -> np.ndarray:
        """Nuclei of cells ``[cx0, cx0 + ncx) x [cy0, cy0 + ncy)``: rows x, y, a, b, theta, c_H.

        Candidates are drawn per cell from a hash of the cell index and
        thinned by the local density (an inhomogeneous Poisson-like process).
        """
        um = 1.0 / self.mpp
        cell = _NUC_CELL_UM * um
        x0, y0 = cx0 * cell, cy0 * cell
        x1, y1 = (cx0 + ncx) * cell, (cy0 + ncy) * cell
        # densities at the cell corners, interpolated bilinearly inside each cell
        xs = np.arange(cx0, cx0 + ncx + 1) * cell
        ys = np.arange(cy0, cy0 + ncy + 1) * cell
        dens = self._density_grid(xs, ys, cell / 2.0)
        blend = _noise_grid(self.blend_specs, xs, ys, cell / 2.0)
        kper = _NUC_PER_CELL
        ci = np.repeat(np.tile(np.arange(ncx), ncy), kper)
        cj = np.repeat(np.repeat(np.arange(ncy), ncx), kper)
        kk = np.tile(np.arange(kper), ncx * ncy)
        h = _hash3(ci + cx0, cj + cy0, kk, self.nuc_salts[0])
        inv21 = np.float32(1.0 / (1 << 21))
        u = (h & _MASK21).astype(np.float32) * inv21
        v = ((h >> _S21) & _MASK21).astype(np.float32) * inv21
        acc = (h >> _S42).astype(np.float32) * np.float32(1.0 / (1 << 22))
        x = (ci + cx0 + u) * cell
        y = (cj + cy0 + v) * cell

        def interp(g: np.ndarray) -> np.ndarray:
            return (g[cj, ci] * (1 - u) + g[cj, ci + 1] * u) * (1 - v) + (
                g[cj + 1, ci] * (1 - u) + g[cj + 1, ci + 1] * u
            ) * v

        rho_max = kper / (_NUC_CELL_UM * _NUC_CELL_UM)
        dd = [interp(d) for d in dens]
        total = dd[0] + dd[1] + dd[2]
        keep = acc * np.float32(rho_max) < total
        if self.mitoses.size:
            pad = 10 * um
            m = self.mitoses
            near = (m[:, 0] > x0 - pad) & (m[:, 0] < x1 + pad)
            near &= (m[:, 1] > y0 - pad) & (m[:, 1] < y1 + pad)
            for mx, my in m[near]:
                keep &= (x - mx) ** 2 + (y - my) ** 2 > (7.0 * um) ** 2
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return np.zeros((0, 6))
        x, y, total = x[idx], y[idx], total[idx]
        s_d, t_d = dd[0][idx], dd[1][idx]
        bl = interp(blend)[idx]
        h2 = _hash3(ci[idx] + cx0, cj[idx] + cy0, kk[idx], self.nuc_salts[1])
        h3 = _hash3(ci[idx] + cx0, cj[idx] + cy0, kk[idx], self.nuc_salts[2])
        r_type = (h2 & _MASK21).astype(np.float32) * inv21 * total
        r_len = ((h2 >> _S21) & _MASK21).astype(np.float32) * inv21
        r_asp = (h2 >> _S42).astype(np.float32) * np.float32(1.0 / (1 << 22))
        r_dark = (h3 & _MASK21).astype(np.float32) * inv21
        r_ang = ((h3 >> _S21) & _MASK21).astype(np.float32) * inv21
        typ = np.where(r_type < s_d, 0, np.where(r_type < s_d + t_d, 1, 2))
        lengths = np.array([t[0] for t in _NUC_TYPES])[typ]
        aspects = np.array([t[1] for t in _NUC_TYPES])[typ]
        darks = np.array([t[2] for t in _NUC_TYPES])[typ]
        out = np.empty((idx.size, 6))
        out[:, 0], out[:, 1] = x, y
        a = (lengths[:, 0] + r_len * (lengths[:, 1] - lengths[:, 0])) * 0.5 * um
        out[:, 2] = a
        out[:, 3] = a * (aspects[:, 0] + r_asp * (aspects[:, 1] - aspects[:, 0]))
        # spindle (stromal) nuclei lie along the local collagen, others at random
        fib_dir = np.where(bl < 0, self.fib_theta[0], self.fib_theta[1]) + (r_ang - 0.5) * 0.6
        out[:, 4] = np.where(typ == 0, fib_dir, r_ang * np.pi)
        out[:, 5] = darks[:, 0] + r_dark * (darks[:, 1] - darks[:, 0])
        return out

    # ---------------------------------------------------------------- drawing
    def _splat(
        self, objs: np.ndarray, x0: float, y0: float, w: int, h: int, ds: int, rim: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw soft, area-preserving ellipses: (sum of c_H * coverage, sum of coverage).

        ``objs`` rows are x, y, a, b, theta, c_H in level-0 units (``a >= b``).
        """
        if objs.shape[0] == 0:
            return np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
        soft = max(1.2, float(ds))  # width of the anti-aliased edge, level-0 px
        r_all = int(math.ceil((objs[:, 2].max() + 0.5 * soft) / ds + 0.5))
        # accumulate on a padded canvas so that no patch pixel needs a bounds check
        pw, ph_ = w + 2 * r_all, h + 2 * r_all
        acc_h = np.zeros(pw * ph_, np.float64)
        acc_c = np.zeros(pw * ph_, np.float64)
        inside = (
            (objs[:, 0] + objs[:, 2] + soft > x0) & (objs[:, 0] - objs[:, 2] - soft < x0 + w * ds)
            & (objs[:, 1] + objs[:, 2] + soft > y0) & (objs[:, 1] - objs[:, 2] - soft < y0 + h * ds)
        )
        objs = objs[inside]
        chunk = max(1, 300_000 // (2 * r_all + 1) ** 2)
        for s0 in range(0, objs.shape[0], chunk):
            o = objs[s0 : s0 + chunk]
            px = (o[:, 0] - x0) / ds - 0.5
            py = (o[:, 1] - y0) / ds - 0.5
            r = int(math.ceil((o[:, 2].max() + 0.5 * soft) / ds + 0.5))
            off = np.arange(-r, r + 1)
            ix = np.rint(px).astype(np.int64)[:, None] + off[None, :]
            iy = np.rint(py).astype(np.int64)[:, None] + off[None, :]
            dx = ((ix - px[:, None]) * ds).astype(np.float32)[:, None, :]
            dy = ((iy - py[:, None]) * ds).astype(np.float32)[:, :, None]
            c = np.cos(o[:, 4]).astype(np.float32)[:, None, None]
            s = np.sin(o[:, 4]).astype(np.float32)[:, None, None]
            ia = (1.0 / o[:, 2]).astype(np.float32)[:, None, None]
            ib = (1.0 / o[:, 3]).astype(np.float32)[:, None, None]
            uu = dx * (c * ia) + dy * (s * ia)
            vv = dy * (c * ib) - dx * (s * ib)
            q2 = uu * uu + vv * vv
            # first-order signed distance to the outline, then pixel coverage
            g = np.sqrt((uu * ia) ** 2 + (vv * ib) ** 2)
            g *= np.float32(2.0 * soft)
            g += np.float32(1e-6)
            cov = q2 - np.float32(1.0)
            cov /= g
            cov = _clip01(np.float32(0.5) - cov)
            tot = cov.sum(axis=(1, 2), dtype=np.float64)
            area = np.pi * o[:, 2] * o[:, 3] / (ds * ds)
            scale = np.where(tot > 0, area / np.maximum(tot, 1e-12), 0.0).astype(np.float32)
            cov *= scale[:, None, None]
            wh = cov * o[:, 5].astype(np.float32)[:, None, None]
            if rim:  # chromatin condensed under the nuclear membrane
                np.minimum(q2, np.float32(1.2), out=q2)
                q2 *= np.float32(0.2)
                q2 += np.float32(0.85)
                wh *= q2
            flat = ((iy + r_all) * pw)[:, :, None] + (ix + r_all)[:, None, :]
            flat = flat.ravel()
            ok = (flat >= 0) & (flat < pw * ph_)
            if not ok.all():  # (only for objects far outside the region)
                flat, whf, covf = flat[ok], wh.ravel()[ok], cov.ravel()[ok]
            else:
                whf, covf = wh.ravel(), cov.ravel()
            acc_h += np.bincount(flat, weights=whf, minlength=pw * ph_)
            acc_c += np.bincount(flat, weights=covf, minlength=pw * ph_)
        sl = (slice(r_all, r_all + h), slice(r_all, r_all + w))
        return (
            acc_h.reshape(ph_, pw)[sl].astype(np.float32),
            acc_c.reshape(ph_, pw)[sl].astype(np.float32),
        )

    @staticmethod
    def _parts_in(parts: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        if parts.shape[0] == 0:
            return parts
        r = parts[:, 2]
        sel = (parts[:, 0] + r > x0) & (parts[:, 0] - r < x1)
        sel &= (parts[:, 1] + r > y0) & (parts[:, 1] - r < y1)
        return parts[sel]

    def _coverage(self, x0: float, y0: float, w: int, h: int, ds: int) -> int:
        """0 if the region certainly holds no tissue, 2 if it is certainly all
        tissue, else 1.

        The smooth tissue field of a region is interpolated from its anchor
        values, so it lies between their extremes; the ragged outline and the
        anti-aliased edge add bounded terms.
        """
        xs = x0 + (np.array([0, w - 1]) + 0.5) * ds
        ys = y0 + (np.array([0, h - 1]) + 0.5) * ds
        _, _, tc = self._tissue_anchor(xs, ys, ds)
        off = self.grad * (_bound(self.rag_specs, ds) + 0.5 * max(self.edge_w, float(ds))) + 1e-3
        if float(tc.max()) + off < self.thr:
            return 0
        if float(tc.min()) - off > self.thr:
            return 2
        return 1

    def render_tile(self, x0: float, y0: float, w: int, h: int, ds: int) -> np.ndarray | None:
        """Render a region, or return None if it is glass only (see :meth:`glass`)."""
        cov = self._coverage(x0, y0, w, h, ds)
        if cov == 0:
            return None
        return self.render(x0, y0, w, h, ds, _all_tissue=cov == 2)

    def render(
        self, x0: float, y0: float, w: int, h: int, ds: int, *, _all_tissue: bool = False
    ) -> np.ndarray:
        """Render the ``h x w`` RGB region at downsample ``ds`` (a power of two)."""
        f32 = np.float32
        ds = int(ds)
        xs = x0 + (np.arange(w) + 0.5) * ds
        ys = y0 + (np.arange(h) + 0.5) * ds
        um = 1.0 / self.mpp
        lam = self.fib_lambda
        fib_w = min(max((lam / ds - 2.0) / 2.0, 0.0), 1.0)
        fields = [
            [] if _all_tissue else self.rag_specs, self.zone_specs, self.nest_specs,
            self.lymph_specs, self.lumen_specs, self.stain_specs, self.eos_specs, self.blend_specs,
        ]
        if fib_w > 0:
            fields += [*self.warp_specs, self.jit_specs]
        nz = _noise_fields(fields, xs, ys, ds)
        rag, zone, nest, lymph, lumen, stain, eos, blend = nz[:8]

        if _all_tissue:
            tissue = None
        else:
            t = self._tissue_smooth(xs, ys, ds)
            t += f32(self.grad) * rag
            ew = max(self.edge_w, float(ds))
            tissue = _clip01((t - f32(self.thr)) / f32(self.grad * ew) + f32(0.5))
            if not tissue.any():
                return self.glass(x0, y0, w, h, ds)

        tw, lw, lu = self._regions(zone, nest, lymph, lumen)
        if lu.any():
            tissue = f32(1.0) - lu if tissue is None else tissue * (f32(1.0) - lu)
        if not lw.any():
            lw = None
            sw = f32(1.0) - tw
        else:
            lw *= f32(1.0) - tw
            sw = _clip01(f32(1.0) - tw - lw)
        stain = f32(1.0) + f32(0.12) * stain
        eos = f32(1.0) + f32(0.15) * eos
        bl = _clip01(blend / f32(0.08) + f32(0.5))

        # collagen: two families of wavy bands (domain-warped quasi-periodic
        # stripes), blended by a slowly varying weight
        fmean = f32(0.6875)
        if fib_w > 0:
            fams = [i for i, used in enumerate((bl.min() < 1.0, bl.max() > 0.0)) if used]
            k = 2.0 * np.pi / lam
            cleft = None
            for i in fams:
                th = self.fib_theta[i]
                c, s = math.cos(th), math.sin(th)
                warp = nz[8 + i]
                st = None
                for kf, wt, jit in ((k, 0.62, False), (1.618 * k, 0.38, True)):
                    # phase of the pixel-centre grid, reduced modulo 2 pi in float64
                    ph = np.add.outer(
                        np.mod(ys * (s * kf), 2 * np.pi).astype(f32),
                        np.mod(xs * (c * kf), 2 * np.pi).astype(f32),
                    )
                    if jit:
                        ph += warp * f32(1.618)
                        ph += nz[10]
                    else:
                        ph += warp
                    term = np.sin(ph, out=ph)
                    term *= f32(wt)
                    st = term if st is None else st.__iadd__(term)
                f = _clip01(f32(0.5) - f32(0.6) * st)
                f3 = f * f
                f3 *= f  # clefts between collagen bundles
                if len(fams) == 2:
                    f3 *= bl if i == 1 else (f32(1.0) - bl)
                cleft = f3 if cleft is None else cleft.__iadd__(f3)
            brk = self._tex_sample(2, x0, y0, w, h, ds)
            cleft *= _clip01(f32(0.55) + f32(0.6) * brk)  # interrupted clefts
            fb = f32(1.0) - cleft
            fb *= f32(0.9) + f32(0.12) * brk
            fibre = fmean + f32(fib_w) * (fb - fmean)
        else:
            fibre = np.full((h, w), fmean)
        fib_mod = f32(1.0) + f32(1.1) * (fibre - fmean)

        mottle = f32(1.0) + f32(0.18) * self._tex_sample(1, x0, y0, w, h, ds)
        c_e = sw * f32(0.22)
        c_e *= eos
        c_e *= fib_mod
        c_h = sw * f32(0.035)
        if tw.any():
            c_e += tw * f32(0.14) * mottle
            c_h += tw * f32(0.10) * mottle
        if lw is not None:
            c_e += lw * f32(0.17) * mottle
            c_h += lw * f32(0.08)

        # nuclei: one by one at fine levels, their expected density at coarse ones
        x1, y1 = x0 + w * ds, y0 + h * ds
        if ds * self.mpp <= _NUCLEI_MAX_PIXEL_UM:
            margin = _NUC_MARGIN_UM * um + 2 * ds
            nuc = self._nuclei(x0 - margin, y0 - margin, x1 + margin, y1 + margin)
            n_h, n_c = self._splat(nuc, x0, y0, w, h, ds, rim=True)
            n_h *= f32(1.0) + f32(0.3) * self._tex_sample(0, x0, y0, w, h, ds)
        else:
            n_h = np.zeros((h, w), f32)
            n_c = np.zeros((h, w), f32)
            for d, (area, mass) in zip(self._density_grid(xs, ys, ds), self._nuc_mass, strict=True):
                n_h += d * f32(mass)
                n_c += d * f32(area)
        # mitotic figures, with a pale halo of cleared cytoplasm
        mit = self._parts_in(self._mit_parts, x0, y0, x1, y1)
        if mit.shape[0]:
            m_h, _ = self._splat(mit, x0, y0, w, h, ds, rim=False)
            n_h += m_h
            halo = self._parts_in(self._mit_halos, x0, y0, x1, y1)
            _, hc = self._splat(halo, x0, y0, w, h, ds, rim=False)
            c_e *= f32(1.0) - f32(0.45) * np.minimum(hc, f32(1.0))
        c_e *= f32(1.0) - f32(0.6) * np.minimum(n_c, f32(1.0))
        c_h += n_h
        k_all = stain if tissue is None else tissue * stain
        c_h *= k_all
        c_e *= k_all

        # Beer-Lambert: RGB = I0 * 10^-OD, plus faint glass noise
        glass_n = self._tex_sample(3, x0, y0, w, h, ds) * f32(0.6)
        glass_n += f32(0.5)  # rounding
        out = np.empty((h, w, 3), np.uint8)
        c_h *= f32(-_LN10)
        c_e *= f32(-_LN10)
        for ch in range(3):
            od = c_h * f32(_H_OD[ch])
            od += c_e * f32(_E_OD[ch])
            val = np.exp(od, out=od)
            val *= f32(_GLASS_RGB[ch])
            val += glass_n
            np.maximum(val, f32(0.0), out=val)
            out[:, :, ch] = val
        return out


def _make_textures(rng: np.random.Generator, mpp: float) -> np.ndarray:
    """Periodic smooth noise textures (zero mean, unit std), ``_TEX_PERIOD`` px square.

    Channels: 0 chromatin, 1 cytoplasm mottling, 2 collagen breaks, 3 glass.
    """
    p = _TEX_PERIOD
    sig_px = [0.6 / mpp, 1.2 / mpp, 2.5 / mpp, 0.7]
    white = rng.standard_normal((len(sig_px), p, p))
    f = np.fft.fftfreq(p)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    out = np.empty((len(sig_px), p, p), np.float32)
    for i, s in enumerate(sig_px):
        s = min(max(s, 0.3), p / 8.0)
        g = np.exp(-2.0 * (np.pi * s) ** 2 * f2)
        t = np.fft.ifft2(np.fft.fft2(white[i]) * g).real
        t -= t.mean()
        t /= max(t.std(), 1e-12)
        out[i] = t
    return out

"""The one tiling grid of histoscope, and random sampling inside tissue.

Every caller that needs tiles (the ``tile`` command, the analysis report, training
datasets, dense inference, compression) gets their coordinates from :func:`tile_grid`
or :func:`sample_tiles`, both of which return a tile table: a :class:`pandas.DataFrame`
with one row per tile and the columns

========== ==================================================================
x, y       top-left corner in level-0 pixels (int)
w0, h0     footprint in level-0 pixels (int)
size       side of the tile in output pixels
mpp        effective microns per output pixel (NaN when the slide's is unknown)
downsample effective downsample relative to level 0
level      pyramid level the pixels are read from
tissue     fraction of the tile inside the tissue mask (NaN without a mask)
annotation fraction inside the annotation mask (only when one is given)
========== ==================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from ..slide.base import Slide
from ..slide.mask import Mask

__all__ = ["TileSpec", "grid_positions", "tile_grid", "sample_tiles", "TILE_COLUMNS"]

TILE_COLUMNS = ("x", "y", "w0", "h0", "size", "mpp", "downsample", "level", "tissue")


@dataclass(frozen=True)
class TileSpec:
    """How tiles are cut: ``size`` output pixels at ``mpp`` (or ``level``/``downsample``), with a stride.

    Give at most one of ``stride`` (output pixels) and ``overlap`` (fraction of the tile
    shared by neighbours: overlap 0.3 means stride = 0.7 * size, as in the sliding-window
    algorithm of Kim et al.). Default: no overlap.
    """

    size: int = 256
    mpp: float | None = 0.5
    level: int | None = None
    downsample: float | None = None
    stride: float | None = None
    overlap: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size <= 0:
            raise ValueError(f"tile size must be a positive int, got {self.size!r}")
        if sum(v is not None for v in (self.mpp, self.level, self.downsample)) > 1:
            raise ValueError(
                f"give only one of mpp, level or downsample (got mpp={self.mpp}, level={self.level}, "
                f"downsample={self.downsample})"
            )
        if self.stride is not None and self.overlap is not None:
            raise ValueError(f"give stride or overlap, not both (got stride={self.stride}, overlap={self.overlap})")
        if self.stride is not None and not (self.stride > 0):
            raise ValueError(f"stride must be positive, got {self.stride!r}")
        if self.overlap is not None and not (0 <= self.overlap < 1):
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if self.mpp is not None and not (self.mpp > 0):
            raise ValueError(f"mpp must be positive, got {self.mpp!r}")

    @property
    def stride_px(self) -> float:
        """Stride in output pixels."""
        if self.stride is not None:
            return float(self.stride)
        if self.overlap is not None:
            return self.size * (1.0 - self.overlap)
        return float(self.size)


def grid_positions(start: float, stop: float, extent: float, stride: float, *, edge: Literal["drop", "pad"]) -> np.ndarray:
    """1-D tile starts ``start + i * stride`` (rounded to whole pixels) covering ``[start, stop)``.

    With ``edge="drop"`` only tiles that fit entirely are kept; with ``edge="pad"`` tiles
    continue until the interval is covered (the last ones reach past ``stop``).
    """
    length = stop - start
    if length <= 0:
        return np.zeros(0, np.int64)
    if edge == "drop":
        n = int(math.floor((length - extent) / stride + 1e-9)) + 1 if length >= extent - 1e-9 else 0
    else:
        n = max(1, int(math.ceil((length - extent) / stride - 1e-9)) + 1) if length > extent else 1
    return np.round(start + np.arange(n) * stride).astype(np.int64)


def tile_grid(
    slide: Slide,
    spec: TileSpec | None = None,
    *,
    region: tuple[int, int, int, int] | None = None,
    tissue: Mask | None = None,
    min_tissue: float = 0.0,
    annotation: Mask | None = None,
    min_annotation: float = 0.0,
    edge: Literal["drop", "pad"] = "drop",
) -> pd.DataFrame:
    """Regular grid of tiles over a slide (or a level-0 ``region``), optionally filtered by masks.

    Parameters
    ----------
    slide : Slide
    spec : TileSpec
        Tile size, resolution and stride (default: 256 px at 0.5 um/px, no overlap).
    region : (x, y, width, height), optional
        Level-0 rectangle to cover; default the whole slide.
    tissue, min_tissue
        Keep tiles whose tissue fraction is at least ``min_tissue`` (the fraction is
        recorded in the ``tissue`` column whenever a mask is given).
    annotation, min_annotation
        Keep tiles at least ``min_annotation`` inside a user annotation mask (e.g. 0.5 for
        "at least 50% annotated region").
    edge : {"drop", "pad"}
        Drop tiles that would reach past the region's edge, or keep them (their pixels
        outside the slide read as white).

    Returns
    -------
    pandas.DataFrame
        The tile table (see the module docstring), in row-major order.
    """
    spec = spec or TileSpec()
    if edge not in ("drop", "pad"):
        raise ValueError(f"edge must be 'drop' or 'pad', got {edge!r}")
    res = slide.resolve(level=spec.level, mpp=spec.mpp, downsample=spec.downsample)
    W, H = slide.dimensions
    if region is None:
        rx, ry, rw, rh = 0, 0, W, H
    else:
        rx, ry, rw, rh = (int(v) for v in region)
        if rw <= 0 or rh <= 0:
            raise ValueError(f"region width and height must be positive, got {region!r}")
    extent = spec.size * res.downsample
    stride0 = spec.stride_px * res.downsample
    xs = grid_positions(rx, rx + rw, extent, stride0, edge=edge)
    ys = grid_positions(ry, ry + rh, extent, stride0, edge=edge)
    gx, gy = np.meshgrid(xs, ys)
    return _table(slide, res, spec.size, gx.ravel(), gy.ravel(), tissue, min_tissue, annotation, min_annotation)


def sample_tiles(
    slide: Slide,
    n: int,
    spec: TileSpec | None = None,
    *,
    tissue: Mask,
    min_tissue: float = 0.5,
    annotation: Mask | None = None,
    min_annotation: float = 0.0,
    rng: int | np.random.Generator | None = None,
    max_tries: int = 50,
) -> pd.DataFrame:
    """``n`` randomly placed tiles whose centres fall in tissue and that pass the coverage filters.

    Centres are drawn uniformly over the mask's inside pixels (jittered within the pixel),
    then filtered like :func:`tile_grid`. Fewer than ``n`` tiles are returned only if
    ``max_tries`` rounds of sampling cannot find enough.

    Parameters
    ----------
    rng : int or numpy.random.Generator, optional
        Seed or generator; the same seed gives the same tiles.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    spec = spec or TileSpec()
    rng = np.random.default_rng(rng)
    res = slide.resolve(level=spec.level, mpp=spec.mpp, downsample=spec.downsample)
    extent = spec.size * res.downsample
    source = annotation if annotation is not None else tissue
    iy, ix = np.nonzero(source.array)
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in TILE_COLUMNS})
    if n == 0 or iy.size == 0:
        return empty
    sx, sy = source.downsample
    kept: list[pd.DataFrame] = []
    total = 0
    for _ in range(max_tries):
        k = max(2 * (n - total), 16)
        pick = rng.integers(0, iy.size, size=k)
        cx = (ix[pick] + rng.random(k)) * sx
        cy = (iy[pick] + rng.random(k)) * sy
        x = np.round(cx - extent / 2).astype(np.int64)
        y = np.round(cy - extent / 2).astype(np.int64)
        W, H = slide.dimensions
        ok = (x >= 0) & (y >= 0) & (x + extent <= W + 1e-6) & (y + extent <= H + 1e-6)
        t = _table(slide, res, spec.size, x[ok], y[ok], tissue, min_tissue, annotation, min_annotation)
        kept.append(t)
        total += len(t)
        if total >= n:
            break
    out = pd.concat(kept, ignore_index=True).iloc[:n].reset_index(drop=True)
    return out


def _table(
    slide: Slide,
    res,
    size: int,
    x: np.ndarray,
    y: np.ndarray,
    tissue: Mask | None,
    min_tissue: float,
    annotation: Mask | None,
    min_annotation: float,
) -> pd.DataFrame:
    extent = size * res.downsample
    w0 = np.full(x.shape, int(round(extent)), np.int64)
    mpp = slide.mpp
    eff_mpp = float(np.mean(mpp) * res.downsample) if mpp is not None else float("nan")
    cols: dict[str, np.ndarray] = {
        "x": x.astype(np.int64),
        "y": y.astype(np.int64),
        "w0": w0,
        "h0": w0.copy(),
        "size": np.full(x.shape, size, np.int64),
        "mpp": np.full(x.shape, eff_mpp),
        "downsample": np.full(x.shape, res.downsample),
        "level": np.full(x.shape, res.level, np.int64),
    }
    keep = np.ones(x.shape, bool)
    if tissue is not None:
        _check_mask(tissue, slide, "tissue")
        cols["tissue"] = tissue.coverage(x, y, extent, extent) if x.size else np.zeros(0)
        keep &= cols["tissue"] >= min_tissue
    else:
        if min_tissue > 0:
            raise ValueError("min_tissue > 0 needs a tissue mask (tissue=tissue_mask(slide))")
        cols["tissue"] = np.full(x.shape, np.nan)
    if annotation is not None:
        _check_mask(annotation, slide, "annotation")
        cols["annotation"] = annotation.coverage(x, y, extent, extent) if x.size else np.zeros(0)
        keep &= cols["annotation"] >= min_annotation
    df = pd.DataFrame(cols)
    return df.loc[keep].reset_index(drop=True)


def _check_mask(mask: Mask, slide: Slide, what: str) -> None:
    from ..exceptions import MaskError

    if tuple(mask.slide_dimensions) != tuple(slide.dimensions):
        raise MaskError(
            f"the {what} mask was made for a slide of {mask.slide_dimensions[0]}x{mask.slide_dimensions[1]} px, "
            f"but {slide.path or slide.name} is {slide.dimensions[0]}x{slide.dimensions[1]} px"
        )

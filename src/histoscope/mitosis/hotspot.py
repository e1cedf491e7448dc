"""Mitotic hotspot over a whole slide, proliferation grade, and mitotic count per 10 HPF.

Detections (mitosis centres in level-0 pixels) are binned into a coarse grid of square cells
of ``grid_um`` microns. A disk of the requested area is "slid" over the slide by convolving
the count grid with a disk kernel (FFT convolution, no Python loop over positions), which gives
the number of detections inside the disk centred at every grid cell. The positions are the
centres of the grid cells; a position is over tissue when at least half of its cell is tissue.

Discretisation
--------------
A detection is counted at a position when the centre of *its* grid cell lies within the disk
radius of the position (the centre of the position's cell). A detection can be up to
``grid_um / sqrt(2)`` away from its cell centre, so counts can differ from an exact
point-in-circle count only for detections in a band of that half-width around the circle.
With the default 50 um cells and the 2 mm^2 hotspot (radius 798 um) the band is +-35 um, and
the grid of a 25 x 20 mm slide is 500 x 400 cells (milliseconds). Smaller cells follow the
continuous definition more closely at a quadratic cost in memory and time.

References
----------
.. [1] D. Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as
       a reference to train distilled stain-invariant convolutional networks", IEEE Trans. Med.
       Imaging 37(9), 2126-2136, 2018. doi:10.1109/TMI.2018.2820199 (hotspot: 2 mm^2 circle slid
       over the slide, 95th percentile of the counts; grade by thresholds theta1 / theta2).
.. [2] A. Rao, "MITOS-RCNN: a novel approach to mitotic figure detection in breast cancer
       histopathology images using region based convolutional neural networks", 2018,
       arXiv:1807.01788 (mitotic count per 10 HPF: low 0-9, moderate 10-19, severe > 19).
.. [3] C. W. Elston and I. O. Ellis, "Pathological prognostic factors in breast cancer. I. The
       value of histological grade in breast cancer", Histopathology 19(5), 403-410, 1991
       (mitotic counts per 10 HPF; cut-offs depend on the field area).
.. [4] M. Veta et al., "Predicting breast tumor proliferation from whole-slide images: the
       TUPAC16 challenge", Medical Image Analysis 54, 111-121, 2019 (10 consecutive HPF, about
       2 mm^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Literal, overload

import numpy as np

from ..exceptions import MaskError
from ..slide.mask import Mask

__all__ = [
    "Hotspot",
    "MitoticCount",
    "MitoticCategory",
    "hotspot",
    "disk_kernel",
    "grade_from_count",
    "mitotic_count_per_10hpf",
    "mitotic_category",
    "HOTSPOT_AREA_MM2",
    "HOTSPOT_PERCENTILE",
    "HPF_AREA_MM2",
    "DEFAULT_GRID_UM",
    "GRADE_THETA1",
    "GRADE_THETA2",
]

#: Area of the hotspot disk in mm^2 (Tellez et al. 2018 [1]_).
HOTSPOT_AREA_MM2 = 2.0
#: Percentile of the counts over tissue that is reported as the hotspot count ([1]_).
HOTSPOT_PERCENTILE = 95.0
#: Area of one high-power field in mm^2: a 40x field of 0.5 mm diameter (pi * 0.25^2 = 0.196).
#: Ten of them (1.96 mm^2) match the 2 mm^2 hotspot of [1]_ and the "10 HPF, about 2 mm^2" of
#: TUPAC16 [4]_. Microscopes differ (0.152-0.312 mm^2 per field are common; Elston and Ellis
#: [3]_ tabulate cut-offs per field diameter), so pass the field area your counts refer to.
HPF_AREA_MM2 = math.pi * 0.25**2
#: Default grid cell size in microns: see the module notes on the accuracy / cost trade-off.
DEFAULT_GRID_UM = 50.0
#: Default grade thresholds on the hotspot count. [1]_ fits theta1 / theta2 on training data;
#: these are starting values, to be refitted on the cohort at hand.
GRADE_THETA1 = 6.0
GRADE_THETA2 = 20.0

#: Largest count grid built (cells); beyond it ``grid_um`` is too fine for the slide.
_MAX_GRID_CELLS = 16_000_000
#: Slack on the aspect-ratio check of a tissue mask (relative), on top of one mask pixel of rounding.
_ASPECT_TOLERANCE = 0.02

MitoticCategory = Literal["low", "moderate", "severe"]
_CATEGORIES = np.array(["low", "moderate", "severe"])


@dataclass(frozen=True, eq=False)
class Hotspot:
    """Result of :func:`hotspot`.

    Attributes
    ----------
    count : float
        The hotspot count: the ``percentile``-th percentile (numpy's default linear
        interpolation) of ``count_map`` over tissue positions. Tellez et al. [1]_ use it as
        the proliferation score.
    max_count : int
        Largest number of detections in the disk at any tissue position.
    centre_xy : (float, float)
        Level-0 ``(x, y)`` of the position with ``max_count`` (a grid cell centre, clipped to
        the slide). Ties go to the tied position nearest the centroid of all tied positions.
    radius_px : float
        Disk radius in level-0 pixels.
    count_map : numpy.ndarray
        ``(rows, cols)`` float array: detections in the disk centred at each grid cell
        (integer-valued). Cell ``(i, j)`` is centred at level-0 ``((j + 0.5) * cell_px,
        (i + 0.5) * cell_px)``. Values outside tissue are kept; use ``tissue`` to mask them.
    grid_um : float
        Side of a grid cell in microns.
    positions_over_tissue : int
        Number of grid positions over tissue (the sample the percentile is taken from).
    tissue : numpy.ndarray
        ``(rows, cols)`` bool array: positions over tissue.
    percentile : float
        Percentile used for ``count``.
    area_mm2 : float
        Nominal disk area.
    effective_area_mm2 : float
        Area of the discretised disk (number of kernel cells times the cell area).
    mpp : float
        Level-0 microns per pixel the grid was built for.
    """

    count: float
    max_count: int
    centre_xy: tuple[float, float]
    radius_px: float
    count_map: np.ndarray
    grid_um: float
    positions_over_tissue: int
    tissue: np.ndarray
    percentile: float
    area_mm2: float
    effective_area_mm2: float
    mpp: float

    @property
    def cell_px(self) -> float:
        """Side of a grid cell in level-0 pixels."""
        return self.grid_um / self.mpp

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 ``(x, y)`` of the grid cell centres: 1-D arrays over columns and rows."""
        rows, cols = self.count_map.shape
        return (np.arange(cols) + 0.5) * self.cell_px, (np.arange(rows) + 0.5) * self.cell_px


@dataclass(frozen=True, eq=False)
class MitoticCount:
    """Result of :func:`mitotic_count_per_10hpf`.

    Attributes
    ----------
    count : int
        Detections in the densest disk of area ``n_fields * hpf_area_mm2`` centred over tissue.
    category : {"low", "moderate", "severe"}
        :func:`mitotic_category` of ``count``.
    centre_xy : (float, float)
        Level-0 centre of that disk.
    radius_px : float
        Its radius in level-0 pixels.
    area_mm2 : float
        Its area (``n_fields * hpf_area_mm2``).
    hpf_area_mm2 : float
        Area of one high-power field.
    hotspot : Hotspot
        The full sliding-disk result the maximum was taken from.
    """

    count: int
    category: MitoticCategory
    centre_xy: tuple[float, float]
    radius_px: float
    area_mm2: float
    hpf_area_mm2: float
    hotspot: Hotspot


# ---------------------------------------------------------------------------- validation
def _positive_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _check_mpp(mpp: object) -> float:
    """A float mpp, or an ``(x, y)`` pair such as ``Slide.mpp`` with (nearly) square pixels."""
    if isinstance(mpp, np.ndarray) and mpp.ndim == 0:
        mpp = mpp.item()
    if isinstance(mpp, (tuple, list, np.ndarray)):
        vals = np.asarray(mpp, dtype=np.float64).ravel()
        if vals.size != 2:
            raise ValueError(f"mpp must be a float or an (x, y) pair, got {mpp!r}")
        mx, my = (_positive_real(float(v), "mpp") for v in vals)
        if abs(mx / my - 1) > 0.01:
            raise ValueError(
                f"mpp {mpp!r} describes non-square pixels ({mx:g} x {my:g} um); the hotspot grid "
                "needs square pixels: resample the detections or pass one mpp"
            )
        return (mx + my) / 2
    return _positive_real(mpp, "mpp")


def _check_slide_shape(slide_shape: object) -> tuple[int, int]:
    try:
        h, w = slide_shape  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"slide_shape must be (height, width) in level-0 pixels, got {slide_shape!r}") from None
    out = []
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"slide_shape must be two positive integers (height, width), got {slide_shape!r}")
        out.append(int(v))
    return out[0], out[1]


def _check_detections(detections_xy: object, height: int, width: int) -> np.ndarray:
    """``(N, 2)`` float64 level-0 ``(x, y)``; every point must lie on the slide."""
    try:
        xy = np.asarray(detections_xy, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"detections_xy must be an (N, 2) array of level-0 (x, y), got {type(detections_xy).__name__}"
        ) from None
    if xy.size == 0:
        return np.zeros((0, 2), np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"detections_xy must have shape (N, 2) of level-0 (x, y), got shape {xy.shape}")
    if not np.all(np.isfinite(xy)):
        raise ValueError(f"detections_xy has {int((~np.isfinite(xy)).any(axis=1).sum())} rows with NaN or inf")
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.any():
        first = xy[np.argmax(outside)]
        raise ValueError(
            f"{int(outside.sum())} of {len(xy)} detections lie outside the slide of width x height = "
            f"{width} x {height} level-0 px (first: x={first[0]:g}, y={first[1]:g}); are the "
            "coordinates level-0 (x, y), and is slide_shape (height, width)?"
        )
    return xy


def _validate_count(count: object, name: str = "count") -> np.ndarray:
    arr = np.asarray(count)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be a number or an array of numbers, got {arr.dtype} {count!r}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {count!r}")
    return arr


# ---------------------------------------------------------------------------- grid helpers
def disk_kernel(radius_cells: float) -> np.ndarray:
    """Disk of grid cells whose centres lie within ``radius_cells`` of the centre cell's centre.

    Parameters
    ----------
    radius_cells : float
        Radius in grid cells (> 0).

    Returns
    -------
    numpy.ndarray
        ``(2R + 1, 2R + 1)`` float64 array of 0 / 1 with ``R = floor(radius_cells)``.

    Examples
    --------
    >>> disk_kernel(1.0).astype(int)
    array([[0, 1, 0],
           [1, 1, 1],
           [0, 1, 0]])
    """
    r = _positive_real(radius_cells, "radius_cells")
    R = int(math.floor(r))
    d = np.arange(-R, R + 1)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= r * r + 1e-9).astype(np.float64)


def _n_cells(extent_px: int, cell_px: float) -> int:
    return max(1, int(math.ceil(extent_px / cell_px - 1e-9)))


def _tissue_on_grid(
    tissue_mask: Mask | np.ndarray | None, height: int, width: int, cell_px: float, shape: tuple[int, int]
) -> np.ndarray:
    """Grid cells at least half covered by tissue (area-weighted, through :meth:`Mask.coverage`)."""
    if tissue_mask is None:
        return np.ones(shape, bool)
    if isinstance(tissue_mask, Mask):
        if tuple(tissue_mask.slide_dimensions) != (width, height):
            W, H = tissue_mask.slide_dimensions
            raise MaskError(
                f"the tissue mask was made for a slide of width x height = {W} x {H} px, "
                f"but slide_shape is (height, width) = ({height}, {width})"
            )
        mask = tissue_mask
    elif isinstance(tissue_mask, np.ndarray):
        arr = tissue_mask
        if arr.ndim != 2 or arr.size == 0:
            raise MaskError(f"tissue_mask must be a non-empty 2-D array, got shape {arr.shape}")
        if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
            raise TypeError(f"tissue_mask must be a bool or numeric array, got dtype {arr.dtype}")
        h, w = arr.shape
        tolerance = _ASPECT_TOLERANCE + 1.0 / w + 1.0 / h  # one mask pixel of rounding
        if abs((w / h) / (width / height) - 1) > tolerance:
            raise MaskError(
                f"tissue_mask of shape {arr.shape} (aspect w/h {w / h:.4f}) does not match the slide of "
                f"(height, width) = ({height}, {width}) (aspect {width / height:.4f}); a mask must cover "
                "the whole slide"
            )
        mask = Mask(arr != 0, (width, height))
    else:
        raise TypeError(
            f"tissue_mask must be a histoscope Mask, a 2-D numpy array or None, got {type(tissue_mask).__name__}"
        )
    rows, cols = shape
    x0 = np.arange(cols) * cell_px
    y0 = np.arange(rows) * cell_px
    w = np.minimum(cell_px, width - x0)  # the last row / column may stick out of the slide
    h = np.minimum(cell_px, height - y0)
    cover = mask.coverage(x0[None, :], y0[:, None], w[None, :], h[:, None])
    return cover >= 0.5


def _argmax_over(values: np.ndarray, where: np.ndarray) -> tuple[int, int]:
    """Row, column of the maximum of ``values`` over ``where``; ties: nearest their centroid."""
    best = values[where].max()
    rr, cc = np.nonzero(where & (values == best))
    k = int(np.argmin((rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2))
    return int(rr[k]), int(cc[k])


# ---------------------------------------------------------------------------- public API
def hotspot(
    detections_xy: np.ndarray,
    *,
    slide_shape: tuple[int, int],
    mpp: float | tuple[float, float],
    tissue_mask: Mask | np.ndarray | None = None,
    area_mm2: float = HOTSPOT_AREA_MM2,
    grid_um: float = DEFAULT_GRID_UM,
    percentile: float = HOTSPOT_PERCENTILE,
) -> Hotspot:
    """Mitotic hotspot: counts of detections in a disk slid over the tissue of a slide.

    Implements the hotspot of Tellez et al. [1]_: a circle of ``area_mm2`` (2 mm^2) is slid
    over the slide, the detections inside are counted at every position over tissue, and the
    ``percentile``-th percentile (95th) of these counts is the hotspot count. The maximum and
    its position are reported too. The sliding is a convolution of the per-cell detection
    counts with a disk kernel on a grid of ``grid_um`` cells (see the module notes on the
    discretisation).

    Parameters
    ----------
    detections_xy : array-like, shape (N, 2)
        Mitosis detections as level-0 ``(x, y)`` pixels (column, row). ``N`` may be 0.
    slide_shape : (int, int)
        ``(height, width)`` of level 0 in pixels (numpy order; ``Slide.dimensions`` is
        ``(width, height)``, so pass ``slide.dimensions[::-1]``).
    mpp : float or (float, float)
        Level-0 microns per pixel. An ``(x, y)`` pair such as ``Slide.mpp`` is accepted when
        the pixels are square (within 1%).
    tissue_mask : Mask or numpy.ndarray, optional
        Tissue over the whole slide at any lower resolution with the slide's aspect ratio
        (bool; for numeric arrays nonzero is tissue), or a :class:`~histoscope.slide.Mask`.
        A grid position is over tissue when at least half of its cell is tissue (area-weighted).
        Without a mask every position counts, and background dilutes the percentile.
        Detections outside tissue are still counted by the disks that reach them.
    area_mm2 : float
        Disk area in mm^2 (default 2.0, [1]_).
    grid_um : float
        Grid cell side in microns (default 50): positions are spaced by ``grid_um`` and
        detections are located to their cell centre. Must be smaller than the disk radius.
    percentile : float
        Percentile in [0, 100] of the counts over tissue reported as ``count`` (default 95).

    Returns
    -------
    Hotspot
        ``count`` (the percentile), ``max_count``, ``centre_xy``, ``radius_px``,
        ``count_map``, ``tissue``, ``positions_over_tissue`` and the settings used.

    Raises
    ------
    TypeError
        A non-numeric ``mpp``, ``area_mm2`` or ``grid_um``; a mask of the wrong type.
    ValueError
        Non-positive ``mpp`` / ``area_mm2`` / ``grid_um``; ``percentile`` outside [0, 100];
        detections not of shape (N, 2), not finite, or outside ``[0, width] x [0, height]``
        (they are rejected, not clipped: out-of-slide points mean mixed-up coordinates);
        ``grid_um`` not smaller than the disk radius, or so small that the grid exceeds
        16 million cells.
    MaskError
        The mask's aspect ratio (or a :class:`Mask`'s slide size) does not match the slide,
        or no grid position is over tissue (a subclass of ``ValueError``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.normal((20_000, 12_000), 800, size=(40, 2))  # a cluster, 0.25 um/px
    >>> hs = hotspot(xy, slide_shape=(40_000, 60_000), mpp=0.25)
    >>> hs.max_count <= 40, hs.count_map.shape
    (True, (200, 300))
    """
    height, width = _check_slide_shape(slide_shape)
    mpp_f = _check_mpp(mpp)
    area = _positive_real(area_mm2, "area_mm2")
    grid = _positive_real(grid_um, "grid_um")
    if isinstance(percentile, bool) or not isinstance(percentile, Real):
        raise TypeError(f"percentile must be a real number, got {percentile!r}")
    if not 0 <= float(percentile) <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    xy = _check_detections(detections_xy, height, width)

    radius_um = math.sqrt(area * 1e6 / math.pi)
    if grid >= radius_um:
        raise ValueError(
            f"grid_um={grid:g} must be smaller than the disk radius ({radius_um:.1f} um for {area:g} mm^2); "
            "use a finer grid (a tenth of the radius or less is a good choice)"
        )
    cell_px = grid / mpp_f
    shape = (_n_cells(height, cell_px), _n_cells(width, cell_px))
    if shape[0] * shape[1] > _MAX_GRID_CELLS:
        raise ValueError(
            f"grid_um={grid:g} gives a {shape[0]} x {shape[1]} grid over a {height} x {width} px slide "
            f"at {mpp_f:g} um/px (limit {_MAX_GRID_CELLS:,} cells); use a larger grid_um"
        )

    cols = np.minimum((xy[:, 0] / cell_px).astype(np.int64), shape[1] - 1)
    rows = np.minimum((xy[:, 1] / cell_px).astype(np.int64), shape[0] - 1)
    counts = np.bincount(rows * shape[1] + cols, minlength=shape[0] * shape[1]).reshape(shape).astype(np.float64)
    kernel = disk_kernel(radius_um / grid)
    if len(xy):
        from scipy.signal import fftconvolve

        # The kernel is symmetric, so convolution equals correlation; counts are integers,
        # and rounding removes the FFT's ~1e-12 noise.
        count_map = np.rint(fftconvolve(counts, kernel, mode="same"))
        np.maximum(count_map, 0.0, out=count_map)
    else:
        count_map = counts

    tissue = _tissue_on_grid(tissue_mask, height, width, cell_px, shape)
    n_tissue = int(tissue.sum())
    if n_tissue == 0:
        raise MaskError(
            "no hotspot grid position is over tissue (no grid cell is at least half tissue); check the "
            "tissue mask, or use a smaller grid_um for very small tissue fragments"
        )
    count = float(np.percentile(count_map[tissue], float(percentile)))
    r, c = _argmax_over(count_map, tissue)
    centre = (min((c + 0.5) * cell_px, float(width)), min((r + 0.5) * cell_px, float(height)))
    return Hotspot(
        count=count,
        max_count=int(count_map[r, c]),
        centre_xy=centre,
        radius_px=radius_um / mpp_f,
        count_map=count_map,
        grid_um=grid,
        positions_over_tissue=n_tissue,
        tissue=tissue,
        percentile=float(percentile),
        area_mm2=area,
        effective_area_mm2=float(kernel.sum()) * grid * grid / 1e6,
        mpp=mpp_f,
    )


@overload
def grade_from_count(count: float, *, theta1: float = ..., theta2: float = ...) -> int: ...
@overload
def grade_from_count(count: np.ndarray, *, theta1: float = ..., theta2: float = ...) -> np.ndarray: ...
def grade_from_count(count, *, theta1: float = GRADE_THETA1, theta2: float = GRADE_THETA2):
    """Proliferation grade 1, 2 or 3 from a (hotspot) mitotic count.

    Tellez et al. [1]_ map the hotspot count (the proliferation score) to the three TUPAC16
    grades with two thresholds theta1 < theta2. The rule used here:
    grade 1 if ``count < theta1``, grade 2 if ``theta1 <= count < theta2``, grade 3 if
    ``count >= theta2``. The default thresholds are starting values; [1]_ fits them on
    training slides, and they depend on the detector and on ``area_mm2``.

    Parameters
    ----------
    count : float or array-like
        Non-negative count(s), e.g. :attr:`Hotspot.count`.
    theta1, theta2 : float
        Thresholds, ``0 <= theta1 < theta2``.

    Returns
    -------
    int or numpy.ndarray
        A Python ``int`` for a scalar, an ``int64`` array of the input's shape otherwise.

    Raises
    ------
    TypeError
        A non-numeric count.
    ValueError
        A negative or non-finite count, or thresholds not ordered ``0 <= theta1 < theta2``.

    Examples
    --------
    >>> grade_from_count(5), grade_from_count(6), grade_from_count(20)
    (1, 2, 3)
    """
    t1, t2 = float(theta1), float(theta2)
    if not (math.isfinite(t1) and math.isfinite(t2) and 0 <= t1 < t2):
        raise ValueError(f"thresholds must satisfy 0 <= theta1 < theta2, got theta1={theta1!r}, theta2={theta2!r}")
    arr = _validate_count(count)
    grade = 1 + (arr >= t1).astype(np.int64) + (arr >= t2).astype(np.int64)
    return int(grade) if grade.ndim == 0 else grade


@overload
def mitotic_category(count: float) -> MitoticCategory: ...
@overload
def mitotic_category(count: np.ndarray) -> np.ndarray: ...
def mitotic_category(count):
    """Category of a mitotic count per 10 HPF: ``"low"``, ``"moderate"`` or ``"severe"``.

    MITOS-RCNN [2]_ grades the count per 10 high-power fields as low (0-9), moderate (10-19)
    and severe (> 19). For non-integer counts (averages) the cut-offs are ``count < 10``
    (low), ``10 <= count <= 19`` (moderate) and ``count > 19`` (severe).

    Parameters
    ----------
    count : float or array-like
        Non-negative count(s) per 10 HPF.

    Returns
    -------
    str or numpy.ndarray
        A string for a scalar, an array of strings of the input's shape otherwise.

    Raises
    ------
    TypeError
        A non-numeric count.
    ValueError
        A negative or non-finite count.

    Examples
    --------
    >>> [mitotic_category(c) for c in (9, 10, 19, 20)]
    ['low', 'moderate', 'moderate', 'severe']
    """
    arr = _validate_count(count)
    idx = (arr >= 10).astype(np.int64) + (arr > 19).astype(np.int64)
    out = _CATEGORIES[idx]
    return str(out) if out.ndim == 0 else out


def mitotic_count_per_10hpf(
    detections_xy: np.ndarray,
    *,
    slide_shape: tuple[int, int],
    mpp: float | tuple[float, float],
    tissue_mask: Mask | np.ndarray | None = None,
    hpf_area_mm2: float = HPF_AREA_MM2,
    n_fields: int = 10,
    grid_um: float = DEFAULT_GRID_UM,
) -> MitoticCount:
    """Mitotic count in the densest area of 10 high-power fields, and its MITOS-RCNN category.

    The 10 fields are modelled as one disk of their total area (``n_fields * hpf_area_mm2``,
    1.96 mm^2 by default) slid over the tissue with :func:`hotspot`; the count is the
    maximum over tissue positions (the "hotspot" a pathologist looks for), graded with
    :func:`mitotic_category` as in MITOS-RCNN [2]_.

    Parameters
    ----------
    detections_xy : array-like, shape (N, 2)
        Mitosis detections as level-0 ``(x, y)`` pixels.
    slide_shape : (int, int)
        ``(height, width)`` of level 0 in pixels.
    mpp : float or (float, float)
        Level-0 microns per pixel.
    tissue_mask : Mask or numpy.ndarray, optional
        Tissue over the whole slide (see :func:`hotspot`).
    hpf_area_mm2 : float
        Area of one high-power field (default ``pi * 0.25^2 = 0.196`` mm^2, a 40x field of
        0.5 mm diameter; see :data:`HPF_AREA_MM2`).
    n_fields : int
        Number of fields (default 10).
    grid_um : float
        Grid cell side in microns (see :func:`hotspot`).

    Returns
    -------
    MitoticCount

    Raises
    ------
    TypeError, ValueError, MaskError
        As :func:`hotspot`; also a non-positive ``hpf_area_mm2`` or ``n_fields``.
    """
    hpf = _positive_real(hpf_area_mm2, "hpf_area_mm2")
    if isinstance(n_fields, bool) or not isinstance(n_fields, (int, np.integer)) or n_fields < 1:
        raise ValueError(f"n_fields must be a positive integer, got {n_fields!r}")
    area = int(n_fields) * hpf
    hs = hotspot(
        detections_xy, slide_shape=slide_shape, mpp=mpp, tissue_mask=tissue_mask, area_mm2=area, grid_um=grid_um
    )
    return MitoticCount(
        count=hs.max_count,
        category=mitotic_category(hs.max_count),
        centre_xy=hs.centre_xy,
        radius_px=hs.radius_px,
        area_mm2=area,
        hpf_area_mm2=hpf,
        hotspot=hs,
    )

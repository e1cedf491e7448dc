"""Masks over a slide (tissue, annotations) and tissue-background segmentation.

A :class:`Mask` is a 2-D boolean array at low resolution that knows which slide it
covers, so it can answer "what fraction of this level-0 rectangle is inside?" exactly
(area-weighted, through a summed-area table). Tissue masks and user annotation masks are
both :class:`Mask` objects, and every tile filter uses :meth:`Mask.coverage`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..exceptions import MaskError
from .base import Slide

__all__ = ["Mask", "tissue_mask", "pen_mask", "TISSUE_MASK_MPP"]

#: Default resolution of tissue masks (microns per pixel): 8 um/px resolves small tissue
#: fragments while a whole 20 x 15 mm slide stays about 2,500 x 1,900 px.
TISSUE_MASK_MPP = 8.0
_MAX_MASK_SIDE = 4096


@dataclass(frozen=True, eq=False)
class Mask:
    """A boolean mask over a slide, at a lower resolution than level 0.

    Parameters
    ----------
    array : numpy.ndarray
        2-D boolean array (height, width); True inside.
    slide_dimensions : (int, int)
        ``(width, height)`` of the slide's level 0.
    slide_mpp : (float, float) or None
        Microns per pixel of the slide's level 0, when known.
    """

    array: np.ndarray
    slide_dimensions: tuple[int, int]
    slide_mpp: tuple[float, float] | None = None
    _sat: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 2 or arr.size == 0:
            raise MaskError(f"a mask must be a non-empty 2-D array, got shape {arr.shape}")
        arr = arr.astype(bool, copy=False)
        object.__setattr__(self, "array", arr)
        W, H = (int(v) for v in self.slide_dimensions)
        object.__setattr__(self, "slide_dimensions", (W, H))
        sat = np.zeros((arr.shape[0] + 1, arr.shape[1] + 1), np.float64)
        np.cumsum(np.cumsum(arr, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])
        object.__setattr__(self, "_sat", sat)

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    @property
    def downsample(self) -> tuple[float, float]:
        """Level-0 pixels per mask pixel along x and y."""
        W, H = self.slide_dimensions
        return W / self.array.shape[1], H / self.array.shape[0]

    @property
    def mpp(self) -> float | None:
        """Microns per mask pixel (mean of x and y), or None if the slide's mpp is unknown."""
        if self.slide_mpp is None:
            return None
        sx, sy = self.downsample
        return float((self.slide_mpp[0] * sx + self.slide_mpp[1] * sy) / 2)

    @property
    def fraction(self) -> float:
        """Share of the slide inside the mask."""
        return float(self.array.mean())

    def coverage(self, x: np.ndarray, y: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
        """Fraction of each level-0 rectangle that lies inside the mask (vectorised, exact).

        The mask is treated as piecewise constant over its pixels; the area-weighted
        fraction is read from a summed-area table by bilinear interpolation (exact for
        piecewise-constant masks). Parts of a rectangle outside the slide count as outside.

        Parameters
        ----------
        x, y, width, height : array-like
            Level-0 rectangles (any broadcastable shapes).

        Returns
        -------
        numpy.ndarray
            Values in [0, 1].
        """
        x, y, width, height = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (x, y, width, height)))
        if np.any(width <= 0) or np.any(height <= 0):
            raise ValueError("rectangle sizes must be positive")
        sx, sy = self.downsample
        u0, u1 = x / sx, (x + width) / sx
        v0, v1 = y / sy, (y + height) / sy
        inside = self._integral(u1, v1) - self._integral(u0, v1) - self._integral(u1, v0) + self._integral(u0, v0)
        area = (u1 - u0) * (v1 - v0)
        return np.clip(inside / area, 0.0, 1.0)

    def _integral(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        h, w = self.array.shape
        u = np.clip(u, 0, w)
        v = np.clip(v, 0, h)
        j0 = np.minimum(np.floor(u).astype(np.int64), w - 1)
        i0 = np.minimum(np.floor(v).astype(np.int64), h - 1)
        fu, fv = u - j0, v - i0
        s = self._sat
        return (
            s[i0, j0] * (1 - fu) * (1 - fv)
            + s[i0, j0 + 1] * fu * (1 - fv)
            + s[i0 + 1, j0] * (1 - fu) * fv
            + s[i0 + 1, j0 + 1] * fu * fv
        )

    # ------------------------------------------------------------------ constructors / output
    @classmethod
    def from_image(
        cls,
        image: str | os.PathLike[str] | np.ndarray,
        slide: Slide,
        *,
        threshold: int = 0,
        aspect_tolerance: float = 0.02,
    ) -> "Mask":
        """A user-supplied mask image (path or array) over ``slide``.

        Any resolution is accepted as long as its aspect ratio matches the slide's; pixels
        greater than ``threshold`` are inside. Colour images count a pixel as inside when
        any channel exceeds the threshold.

        Raises
        ------
        MaskError
            The image's aspect ratio does not match the slide, or it is not an image.
        """
        name = os.fspath(image) if not isinstance(image, np.ndarray) else "mask array"
        if isinstance(image, np.ndarray):
            arr = image
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(image) as im:
                    arr = np.asarray(im)
            except FileNotFoundError:
                raise MaskError(f"{name}: mask file not found") from None
            except (UnidentifiedImageError, OSError) as exc:
                raise MaskError(f"{name}: cannot read the mask image ({exc})") from None
        if arr.ndim == 3:
            arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
        if arr.ndim != 2 or arr.size == 0:
            raise MaskError(f"{name}: a mask must be a 2-D image, got shape {arr.shape}")
        W, H = slide.dimensions
        h, w = arr.shape
        if abs((w / h) / (W / H) - 1) > aspect_tolerance:
            raise MaskError(
                f"{name}: mask of {w}x{h} px (aspect {w / h:.4f}) does not match slide "
                f"{slide.path or slide.name} of {W}x{H} px (aspect {W / H:.4f}); a mask must cover the whole slide"
            )
        return cls(arr > threshold, (W, H), slide.mpp)

    def to_image(self) -> np.ndarray:
        """The mask as a uint8 image (0 / 255)."""
        return self.array.astype(np.uint8) * 255

    def resized(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask resampled (nearest neighbour) to ``(height, width)``, e.g. for overlays."""
        h, w = self.array.shape
        rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
        cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
        return self.array[rows[:, None], cols[None, :]]


def pen_mask(rgb: np.ndarray, *, min_od: float = 0.15) -> np.ndarray:
    """Pixels whose colour no mix of haematoxylin and eosin can produce (pen ink, markers).

    In optical density, every H&E mixture absorbs green more than red and absorbs blue far
    less than green (Ruifrok-Johnston vectors: H = (0.65, 0.70, 0.29), E = (0.07, 0.99,
    0.11)). Blue, green and black pen absorb red at least as much as green; red pen
    absorbs blue about as much as green. Those pixels are flagged.

    Parameters
    ----------
    rgb : numpy.ndarray
        HxWx3 uint8 image.
    min_od : float
        Pixels fainter than this total optical density are never called pen.
    """
    od = -np.log10(np.maximum(np.asarray(rgb, np.float32), 1.0) / 255.0)
    r, g, b = od[..., 0], od[..., 1], od[..., 2]
    total = r + g + b
    return (total > min_od) & ((r > 1.05 * g + 0.03) | (b > 0.8 * g + 0.03))


def tissue_mask(
    slide: Slide,
    *,
    mpp: float = TISSUE_MASK_MPP,
    method: Literal["otsu", "threshold"] = "otsu",
    threshold: float | None = None,
    remove_pen: bool = True,
    min_object_um2: float = 5_000.0,
    max_hole_um2: float = 20_000.0,
    min_pen_um2: float = 100_000.0,
) -> Mask:
    """Segment tissue from background at low resolution.

    The slide is read at ``mpp`` (or, without a known resolution, with its longer side at
    2,048 px), converted to optical density, and thresholded (Otsu on the summed optical
    density, clamped to a sensible range so an all-tissue or all-glass image still gives
    a sensible mask). Pen marks are removed (:func:`pen_mask`), then the mask is closed,
    small objects are dropped and small holes (fat, lumens) are filled.

    Parameters
    ----------
    slide : Slide
    mpp : float
        Resolution of the mask in microns per pixel.
    method : {"otsu", "threshold"}
        "otsu" picks the optical-density threshold per slide; "threshold" uses ``threshold``.
    threshold : float, optional
        Optical-density threshold for ``method="threshold"``.
    remove_pen : bool
        Exclude pen and marker ink.
    min_object_um2, max_hole_um2 : float
        Tissue pieces smaller than this are dropped; holes smaller than this are filled.
    min_pen_um2 : float
        Ink-coloured regions smaller than this (0.1 mm² by default) are not pen strokes
        (e.g. clusters of bright red erythrocytes) and are kept.

    Returns
    -------
    Mask

    References
    ----------
    .. [1] Otsu, N. "A threshold selection method from gray-level histograms", IEEE SMC 1979.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    if method not in ("otsu", "threshold"):
        raise ValueError(f"method must be 'otsu' or 'threshold', got {method!r}")
    if method == "threshold" and threshold is None:
        raise ValueError("method='threshold' needs threshold= (an optical density, e.g. 0.1)")
    W, H = slide.dimensions
    if slide.mpp is not None:
        ds = max(slide.downsample_for_mpp(mpp), max(W, H) / _MAX_MASK_SIDE, 1.0)
    else:
        ds = max(max(W, H) / 2048, 1.0)
    rgb = slide.read_region((0, 0), slide.size_at(ds), downsample=ds)
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / 255.0).sum(axis=-1)
    od = ndi.gaussian_filter(od, 1.0)
    if method == "otsu":
        vals = od[od > 0.02]
        t = threshold_otsu(vals) if vals.size > 16 and np.ptp(vals) > 0 else 0.15
        t = float(np.clip(t, 0.08, 0.45))
    else:
        t = float(threshold)  # type: ignore[arg-type]
    tissue = od > t
    px_um2 = (slide.mpp[0] * slide.mpp[1] * ds * ds) if slide.mpp is not None else None
    if remove_pen:
        # Pen strokes are large connected regions; small red specks are erythrocytes.
        pen = pen_mask(rgb)
        min_pen = max(4, int(min_pen_um2 / px_um2)) if px_um2 else max(4, int(pen.size * 2e-3))
        pen = remove_small_objects(pen, max_size=min_pen)
        pen = ndi.binary_dilation(pen, iterations=2)
        tissue &= ~pen
    tissue = ndi.binary_closing(tissue, structure=np.ones((3, 3), bool), iterations=1, border_value=0)
    tissue = ndi.binary_opening(tissue, structure=np.ones((3, 3), bool), iterations=1)
    min_px = max(4, int(min_object_um2 / px_um2)) if px_um2 else max(4, int(tissue.size * 1e-4))
    hole_px = max(4, int(max_hole_um2 / px_um2)) if px_um2 else max(4, int(tissue.size * 4e-4))
    tissue = remove_small_objects(tissue, max_size=min_px)
    tissue = remove_small_holes(tissue, max_size=hole_px)
    return Mask(tissue, (W, H), slide.mpp)

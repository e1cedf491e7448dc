"""The synthetic slide-level task of the NIC paper (Tellez et al., section 4.1.1), generated locally.

Each image is a large dark field with many small digits on a regular 8 px grid and two
rectangles, one axis-aligned and one tilted by 45 or 135 degrees.  Every digit whose
cell centre lies inside a rectangle shows that rectangle's class; the other digits have
random classes.  The image label is the class of the **tilted** rectangle, so a model
must find the tilted region among many distracting digits and a decoy rectangle: the
label is not visible in any one patch, only in the spatial arrangement of many.

The digit pictures are the real 8 x 8 handwritten digits that scikit-learn ships
(:func:`sklearn.datasets.load_digits`, 1,797 images of 10 classes; no download), so the
NIC patch size is P = S = 8: compressing with an 8 px patch and stride puts exactly one
digit cell in each patch.  The paper uses 3600 x 3600 px images with MNIST digits; the
default here is 512 x 512 px (a 64 x 64 grid of cells), which trains in minutes on two
CPU cores.  ``split="train"`` / ``"test"`` draw digit instances from disjoint halves of
the 1,797 images, so test images contain handwriting the encoders have never seen.

Ground-truth masks of both rectangles are kept (pixel level), for the Grad-CAM Jaccard
comparison of the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

__all__ = ["CELL", "DigitsImage", "digit_bank", "digits_image", "digits_dataset"]

CELL = 8
"""Side of one digit cell in pixels (the digits of ``load_digits`` are 8 x 8)."""

Split = Literal["train", "test", "all"]


@dataclass
class DigitsImage:
    """One synthetic image: pixels, label and the ground truth behind it.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8, grey digits (the three channels are equal) on black.
    label : int
        Class of the tilted rectangle (0-9).
    axis_label : int
        Class of the axis-aligned (decoy) rectangle.
    tilted_mask, axis_mask : numpy.ndarray
        ``(H, W)`` bool, the two rectangles.
    cell_classes : numpy.ndarray
        ``(H/8, W/8)`` int8, the class of the digit in each cell, -1 for an empty cell.
    tilted_size, axis_size : tuple of int
        Side lengths (px) of the two rectangles, (long, short).
    angle : int
        Rotation of the tilted rectangle, 45 or 135 degrees.
    """

    image: np.ndarray
    label: int
    axis_label: int
    tilted_mask: np.ndarray
    axis_mask: np.ndarray
    cell_classes: np.ndarray
    tilted_size: tuple[int, int]
    axis_size: tuple[int, int]
    angle: int
    meta: dict = field(default_factory=dict)

    @property
    def tilted_area_fraction(self) -> float:
        """Share of the image covered by the tilted rectangle (the x axis of the paper's Fig. 6a)."""
        return float(self.tilted_mask.mean())


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return images, d.target.astype(np.int64)


def digit_bank(split: Split = "all") -> tuple[np.ndarray, np.ndarray]:
    """The 8 x 8 digits (uint8, 0-255) and their classes; ``train``/``test`` are disjoint halves.

    The halves are fixed (even / odd positions of the scikit-learn order), stratified enough
    that each holds every class about 90 times.
    """
    images, labels = _all_digits()
    if split == "all":
        return images, labels
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    sel = slice(0, None, 2) if split == "train" else slice(1, None, 2)
    return images[sel], labels[sel]


def _rectangle(cx: float, cy: float, long: float, short: float, angle_deg: float) -> np.ndarray:
    """Corner coordinates (x, y) of a rectangle centred at (cx, cy), long side along ``angle_deg``."""
    a = np.deg2rad(angle_deg)
    u = np.array([np.cos(a), np.sin(a)]) * long / 2
    v = np.array([-np.sin(a), np.cos(a)]) * short / 2
    c = np.array([cx, cy])
    return np.stack([c + u + v, c + u - v, c - u - v, c - u + v])


def _raster(corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon

    mask = np.zeros(shape, bool)
    rr, cc = polygon(corners[:, 1], corners[:, 0], shape)
    mask[rr, cc] = True
    return mask


def _check(name: str, value: float, low: float, high: float | None = None) -> None:
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value!r}")


def digits_image(
    size: int = 512,
    *,
    rect_size: tuple[float, float] = (0.2, 0.45),
    aspect: tuple[float, float] = (0.4, 1.0),
    density: float = 0.5,
    split: Split = "all",
    seed: int | np.random.Generator | None = 0,
) -> DigitsImage:
    """Generate one image of the synthetic task.

    Parameters
    ----------
    size : int
        Image side in px, a multiple of 8 (paper: 3600; default 512 = 64 x 64 cells).
    rect_size : (float, float)
        Range of the rectangles' long side as a fraction of ``size`` (drawn uniformly per
        rectangle).
    aspect : (float, float)
        Range of short side / long side.
    density : float
        Probability that a cell outside the rectangles holds a digit (inside a rectangle every
        cell holds one of the rectangle's class, so the rectangle is the densest evidence).
    split : {"all", "train", "test"}
        Which half of scikit-learn's digits the pictures come from.
    seed : int or numpy.random.Generator
        Same seed, same image.

    Returns
    -------
    DigitsImage
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 64 or size % CELL:
        raise ValueError(f"size must be an int >= 64 and a multiple of {CELL}, got {size!r}")
    lo, hi = rect_size
    _check("rect_size[0]", lo, 0.02, 1.0)
    _check("rect_size[1]", hi, lo, 1.0)
    alo, ahi = aspect
    _check("aspect[0]", alo, 0.05, 1.0)
    _check("aspect[1]", ahi, alo, 1.0)
    _check("density", density, 0.0, 1.0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    bank, bank_labels = digit_bank(split)
    by_class = [np.flatnonzero(bank_labels == k) for k in range(10)]
    shape = (int(size), int(size))
    n = size // CELL

    for _ in range(200):  # two rectangles that do not touch each other, inside the image
        tilted_angle = int(rng.choice([45, 135]))
        rects = []
        for angle in (tilted_angle, 0):
            long = rng.uniform(lo, hi) * size
            short = long * rng.uniform(alo, ahi)
            if angle == 0 and rng.random() < 0.5:
                angle = 90  # axis-aligned, either orientation
            ext = (abs(np.cos(np.deg2rad(angle))) * long + abs(np.sin(np.deg2rad(angle))) * short) / 2
            ext_y = (abs(np.sin(np.deg2rad(angle))) * long + abs(np.cos(np.deg2rad(angle))) * short) / 2
            if ext >= size / 2 - 1 or ext_y >= size / 2 - 1:
                break
            cx = rng.uniform(ext + 1, size - ext - 1)
            cy = rng.uniform(ext_y + 1, size - ext_y - 1)
            rects.append((_rectangle(cx, cy, long, short, angle), (int(round(long)), int(round(short))), angle))
        if len(rects) < 2:
            continue
        tilted_mask = _raster(rects[0][0], shape)
        axis_mask = _raster(rects[1][0], shape)
        from scipy.ndimage import maximum_filter

        if not (maximum_filter(tilted_mask, size=4 * CELL + 1) & axis_mask).any():  # >= 2 cells apart
            break
    else:  # pragma: no cover - only with extreme rect_size
        raise ValueError(f"cannot place two separate rectangles of {rect_size} x {size} px in a {size} px image; make them smaller")

    label = int(rng.integers(10))
    axis_label = int(rng.integers(10))
    centres = np.arange(n) * CELL + CELL // 2
    in_tilted = tilted_mask[np.ix_(centres, centres)]
    in_axis = axis_mask[np.ix_(centres, centres)]
    cell_classes = np.where(rng.random((n, n)) < density, rng.integers(10, size=(n, n)), -1).astype(np.int8)
    cell_classes[in_tilted] = label
    cell_classes[in_axis] = axis_label

    image = np.zeros(shape, np.uint8)
    tiles = image.reshape(n, CELL, n, CELL).transpose(0, 2, 1, 3)  # a view: (row, col, 8, 8)
    rows, cols = np.nonzero(cell_classes >= 0)
    for k in range(10):
        sel = cell_classes[rows, cols] == k
        if sel.any():
            picks = rng.choice(by_class[k], size=int(sel.sum()))
            tiles[rows[sel], cols[sel]] = bank[picks]
    rgb = np.repeat(image[..., None], 3, axis=2)
    return DigitsImage(
        image=rgb,
        label=label,
        axis_label=axis_label,
        tilted_mask=tilted_mask,
        axis_mask=axis_mask,
        cell_classes=cell_classes,
        tilted_size=rects[0][1],
        axis_size=rects[1][1],
        angle=tilted_angle,
        meta={"size": int(size), "rect_size": list(rect_size), "aspect": list(aspect), "density": float(density), "split": split},
    )


def digits_dataset(n: int, size: int = 512, *, seed: int = 0, **kwargs) -> list[DigitsImage]:
    """``n`` independent images (image ``i`` uses the ``i``-th child of ``seed``'s sequence).

    Any keyword of :func:`digits_image` applies to all of them.  Image ``i`` is the same
    whatever ``n`` is, so a larger dataset extends a smaller one.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    children = np.random.SeedSequence(seed).spawn(int(n))
    return [digits_image(size, seed=np.random.default_rng(c), **kwargs) for c in children]

"""Crops of compressed slides, sampled by tissue density, and the 8 rotations/mirrors.

Grids are numpy ``(H, W, C)`` float32 embeddings with a ``(H, W)`` float32 tissue
fraction in [0, 1] (what :mod:`histoscope.infer.compress` writes).  Tellez et al. [1]_
train the slide CNN on random ``R x R`` crops of these grids, drawn where there is
tissue, with random rotations and mirrors, and average ``T`` crops x 8 orientations at
test time.

Crop geometry: a crop is named by its top-left ``origin = (row, col)`` on the grid;
it covers rows ``row .. row + R - 1`` and columns ``col .. col + R - 1``.  Crops may
extend past the grid (origins from ``-(R - 1)`` to ``H - 1``); what lies outside is
zero.  :func:`sample_crop_origins` draws an origin with probability proportional to the
tissue inside its crop, so crops with no tissue are never drawn when the grid has any.

The dihedral group D4 (4 rotations by 90 degrees, each with or without a mirror) acts
on the last two axes: :func:`d4` applies element ``k`` in 0..7, :func:`d4_inverse` undoes
it.  ``k = 0..3`` rotate by ``k * 90`` degrees counter-clockwise (``rot90``); ``k = 4..7``
mirror left-right first, then rotate by ``(k - 4) * 90`` degrees.

References
----------
.. [1] D. Tellez et al., "Neural Image Compression for Gigapixel Histopathology Image
       Analysis", IEEE TPAMI 2019, Sec. III-D (training and testing the CNN).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["D4", "d4", "d4_inverse", "sample_crop_origins", "crop", "crop_weights", "check_grid"]

D4: tuple[int, ...] = tuple(range(8))
"""The 8 elements of the dihedral group D4, as indices for :func:`d4`."""

_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)  # rotations invert to the opposite rotation; mirrored ones are involutions

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < 8:
        raise ValueError(f"k must be an int in 0..7 (an element of D4), got {k!r}")
    return int(k)


def d4(x: ArrayT, k: int) -> ArrayT:
    """Element ``k`` of D4 applied to the last two axes of ``x``.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        E.g. a ``(B, C, H, W)`` batch or an ``(H, W)`` map; at least 2-D.
    k : int
        0..3: rotation by ``k * 90`` degrees (``rot90``); 4..7: left-right mirror, then
        rotation by ``(k - 4) * 90`` degrees.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Same type; the last two axes are swapped for odd rotations.

    Examples
    --------
    >>> a = np.arange(6).reshape(2, 3)
    >>> np.array_equal(d4_inverse(d4(a, 5), 5), a)
    True
    """
    k = _check_k(k)
    if x.ndim < 2:
        raise ValueError(f"d4 acts on the last two axes; x must be at least 2-D, got shape {tuple(x.shape)}")
    if isinstance(x, torch.Tensor):
        if k >= 4:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, k % 4, dims=(-2, -1))
    x = np.asarray(x)
    if k >= 4:
        x = np.flip(x, axis=-1)
    return np.rot90(x, k % 4, axes=(-2, -1))


def d4_inverse(x: ArrayT, k: int) -> ArrayT:
    """Undo :func:`d4`: ``d4_inverse(d4(x, k), k)`` equals ``x``."""
    return d4(x, _INVERSE[_check_k(k)])


def check_grid(emb: np.ndarray, tissue: np.ndarray | None = None, *, name: str = "emb") -> tuple[np.ndarray, np.ndarray]:
    """``(emb, tissue)`` as float32 ``(H, W, C)`` and ``(H, W)`` arrays; ``tissue=None`` means all tissue.

    Raises
    ------
    ValueError
        On wrong shapes, non-finite values, or tissue outside [0, 1].
    """
    e = np.asarray(emb)
    if e.ndim != 3:
        raise ValueError(f"{name} must be an (H, W, C) embedding grid, got shape {e.shape}")
    if e.shape[0] < 1 or e.shape[1] < 1 or e.shape[2] < 1:
        raise ValueError(f"{name} is empty: shape {e.shape}")
    e = e.astype(np.float32, copy=False)
    if not np.isfinite(e).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if tissue is None:
        t = np.ones(e.shape[:2], np.float32)
    else:
        t = np.asarray(tissue, dtype=np.float32)
        if t.shape != e.shape[:2]:
            raise ValueError(f"tissue must have the grid's shape {e.shape[:2]}, got {t.shape}")
        if not np.isfinite(t).all() or (t.size and (t.min() < 0 or t.max() > 1)):
            raise ValueError(f"tissue must hold fractions in [0, 1], got [{np.nanmin(t):.3g}, {np.nanmax(t):.3g}]")
    return e, t


def _check_size(size: int, name: str = "R") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{name} (crop size) must be a positive int, got {size!r}")
    return int(size)


def crop_weights(tissue: np.ndarray, R: int) -> np.ndarray:
    """Tissue inside every ``R x R`` crop that overlaps the grid.

    Returns
    -------
    numpy.ndarray
        ``(H + R - 1, W + R - 1)`` float64; entry ``[i, j]`` is the tissue summed over
        the crop with origin ``(i - (R - 1), j - (R - 1))`` (an integral image, exact).
    """
    R = _check_size(R)
    t = np.asarray(tissue, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"tissue must be an (H, W) map, got shape {t.shape}")
    padded = np.pad(t, R - 1)  # R - 1 zeros on every side: every overlapping crop lies inside
    ii = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
    ii[1:, 1:] = padded.cumsum(0).cumsum(1)
    w = ii[R:, R:] - ii[:-R, R:] - ii[R:, :-R] + ii[:-R, :-R]
    return np.clip(w, 0.0, None)  # cumsum rounding can leave -1e-13 where there is no tissue


def sample_crop_origins(
    tissue: np.ndarray,
    R: int,
    n: int,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw ``n`` crop origins with probability proportional to the tissue in each crop.

    Every ``R x R`` crop that overlaps the grid is a candidate (origins
    ``-(R - 1) .. H - 1`` by ``-(R - 1) .. W - 1``); its probability is the tissue it
    contains divided by the total over all candidates.  Each tissue pixel lies in
    ``R**2`` candidates, so the crops that touch a region get a share of the draws
    proportional to the region's tissue (a region with twice the tissue gets twice the
    crops), and crops without tissue are never drawn.  A grid without tissue falls
    back to uniform draws among the crops that cover as much of the grid as possible.
    Draws are independent (with replacement).

    Parameters
    ----------
    tissue : numpy.ndarray
        ``(H, W)`` tissue fraction in [0, 1].
    R : int
        Crop size.
    n : int
        Number of origins.
    rng : numpy.random.Generator or int, optional
        Randomness, through :func:`numpy.random.default_rng`.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` int64 ``(row, col)`` top-left corners, possibly negative.
    """
    R = _check_size(R)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    t = np.asarray(tissue, dtype=np.float64)
    if t.ndim != 2 or min(t.shape) < 1:
        raise ValueError(f"tissue must be a non-empty (H, W) map, got shape {t.shape}")
    if not np.isfinite(t).all() or t.min() < 0:
        raise ValueError("tissue must hold finite, non-negative fractions")
    gen = np.random.default_rng(rng)
    h, w = t.shape
    weights = crop_weights(t, R)
    total = weights.sum()
    if total <= 0:  # no tissue: crops that cover as much of the grid as possible
        rows = np.arange(min(0, h - R), max(0, h - R) + 1)
        cols = np.arange(min(0, w - R), max(0, w - R) + 1)
        return np.stack([gen.choice(rows, n), gen.choice(cols, n)], axis=1).astype(np.int64)
    flat = gen.choice(weights.size, size=n, p=(weights / total).ravel())
    rr, cc = np.unravel_index(flat, weights.shape)
    return np.stack([rr - (R - 1), cc - (R - 1)], axis=1).astype(np.int64)


def crop(emb: np.ndarray, origin: tuple[int, int] | np.ndarray, R: int) -> np.ndarray:
    """The ``R x R`` crop of a grid at ``origin = (row, col)``, zero outside the grid.

    Parameters
    ----------
    emb : numpy.ndarray
        ``(H, W, C)`` embedding grid or ``(H, W)`` map (e.g. tissue).
    origin : (int, int)
        Top-left corner; may be negative or past the grid.
    R : int
        Crop size.

    Returns
    -------
    numpy.ndarray
        ``(R, R, C)`` (or ``(R, R)``), the dtype of ``emb``; a new array.
    """
    R = _check_size(R)
    a = np.asarray(emb)
    if a.ndim not in (2, 3):
        raise ValueError(f"emb must be an (H, W, C) grid or an (H, W) map, got shape {a.shape}")
    r0, c0 = (int(v) for v in np.asarray(origin).reshape(2))
    out = np.zeros((R, R) + a.shape[2:], dtype=a.dtype)
    h, w = a.shape[:2]
    rs, re = max(r0, 0), min(r0 + R, h)
    cs, ce = max(c0, 0), min(c0 + R, w)
    if rs < re and cs < ce:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = a[rs:re, cs:ce]
    return out

"""Registration of restained pairs (PHH3 -> H&E), as in the whole-slide mitosis paper.

The same section is stained twice, so the two images differ by a shift (plus stain, blur and
noise).  Both images are reduced to one channel that the two stains share: the haematoxylin
optical density from colour deconvolution (nuclei are blue in both), then

1. a *global* shift: phase correlation (scikit-image's ``phase_cross_correlation``, sub-pixel)
   of ``n_pairs`` randomly placed tile pairs, combined by the median;
2. a *local* shift per candidate: the same on a small tile pair centred on it, after the global
   shift, bounded by a search window.

The shift convention is scikit-image's: ``shift`` is what moves the *moving* image onto the
*fixed* one, i.e. a point at ``p`` in the moving image lies at ``p + shift`` in the fixed image.
Shifts are ``(dy, dx)`` in pixels of the images given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["shared_channel", "global_shift", "local_shift", "register_points", "GlobalShift", "RegistrationError"]


#: Largest ratio of the two images' sides: a restained pair is one section at one resolution.
MAX_SIZE_RATIO = 1.5


class RegistrationError(ValueError):
    """The images cannot be registered as asked (names the image and the problem)."""


def _check_rgb(image: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise RegistrationError(f"{name}: expected an RGB image (H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise RegistrationError(f"{name}: expected 8-bit RGB, got dtype {a.dtype}")
    return a[..., :3]


def shared_channel(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """The haematoxylin optical density of an H&E or H-DAB image (float32, zero mean)."""
    from ..stain.deconvolution import rgb_to_hed

    hed = np.asarray(rgb_to_hed(_check_rgb(image, name)), dtype=np.float32)
    h = hed[..., 0]
    return h - h.mean()


def _pair_check(fixed: np.ndarray, moving: np.ndarray, max_size_ratio: float) -> None:
    hf, wf = fixed.shape[:2]
    hm, wm = moving.shape[:2]
    r = max(hf / hm, hm / hf, wf / wm, wm / wf)
    if r > max_size_ratio:
        raise RegistrationError(f"the images differ too much in size ({wf} x {hf} vs {wm} x {hm} px): a restained pair is the same section at the same resolution")


def _phase(a: np.ndarray, b: np.ndarray, upsample: int) -> tuple[np.ndarray, float]:
    from skimage.registration import phase_cross_correlation

    shift, error, _ = phase_cross_correlation(a, b, upsample_factor=upsample, normalization=None)
    return np.asarray(shift, float), float(error)


@dataclass
class GlobalShift:
    """The combined shift and what each tile pair said."""

    shift: np.ndarray  # (dy, dx)
    pair_shifts: np.ndarray  # (n, 2)
    pair_origins: np.ndarray  # (n, 2) (y, x) of each tile in the fixed image
    spread: float  # median distance of the pair shifts from the combined one (px)


def global_shift(
    fixed: np.ndarray,
    moving: np.ndarray,
    *,
    n_pairs: int = 10,
    tile: int = 256,
    max_shift: float | None = None,
    upsample: int = 20,
    seed: int = 0,
    max_size_ratio: float = MAX_SIZE_RATIO,
) -> GlobalShift:
    """Shift of ``moving`` onto ``fixed`` from ``n_pairs`` random tile pairs (median).

    Tiles are drawn where the fixed image has stain (the upper half of the haematoxylin
    signal), at the same position in both images.  ``max_shift`` (default: a quarter of the
    tile) is the search window: a larger shift raises :class:`RegistrationError`.
    """
    _pair_check(fixed, moving, max_size_ratio)
    return _global(shared_channel(fixed, name="fixed"), shared_channel(moving, name="moving"), n_pairs, tile, max_shift, upsample, seed)


def _global(f: np.ndarray, m: np.ndarray, n_pairs: int, tile: int, max_shift: float | None, upsample: int, seed: int) -> GlobalShift:
    h, w = min(f.shape[0], m.shape[0]), min(f.shape[1], m.shape[1])
    t = min(tile, h, w)
    if t < 32:
        raise RegistrationError(f"images of {w} x {h} px are too small to register (need at least 32 px)")
    limit = max_shift if max_shift is not None else t / 4
    rng = np.random.default_rng(seed)
    # candidate origins on a grid, weighted by stain so that blank background is not used
    ys = np.arange(0, h - t + 1, max(1, (h - t) // 16))
    xs = np.arange(0, w - t + 1, max(1, (w - t) // 16))
    origins = np.array([(y, x) for y in ys for x in xs])
    energy = np.array([np.abs(f[y : y + t, x : x + t]).mean() for y, x in origins])
    pool = origins[energy >= np.median(energy)] if len(origins) > 1 else origins
    pick = pool[rng.choice(len(pool), size=min(n_pairs, len(pool)), replace=False)]
    shifts = np.array([_phase(f[y : y + t, x : x + t], m[y : y + t, x : x + t], upsample)[0] for y, x in pick])
    s = np.median(shifts, axis=0)
    if np.abs(s).max() > limit:
        raise RegistrationError(f"the shift found ({s[0]:.1f}, {s[1]:.1f}) px is beyond the search window of +-{limit:.0f} px; use larger tiles or max_shift")
    spread = float(np.median(np.hypot(*(shifts - s).T)))
    return GlobalShift(shift=s, pair_shifts=shifts, pair_origins=pick, spread=spread)


def local_shift(
    fixed: np.ndarray,
    moving: np.ndarray,
    at: tuple[float, float],
    *,
    size: int = 128,
    prior: tuple[float, float] = (0.0, 0.0),
    max_shift: float = 16.0,
    upsample: int = 20,
) -> np.ndarray:
    """Total shift ``(dy, dx)`` near ``at = (y, x)`` of the moving image: ``prior`` (the global
    shift) refined on a ``size`` tile pair centred there.  Raises beyond ``max_shift`` of refinement."""
    f, m = shared_channel(fixed, name="fixed"), shared_channel(moving, name="moving")
    return _local(f, m, at, size, np.asarray(prior, float), max_shift, upsample)


def _local(f: np.ndarray, m: np.ndarray, at: tuple[float, float], size: int, prior: np.ndarray, max_shift: float, upsample: int) -> np.ndarray:
    from scipy import ndimage

    y, x = at
    half = size // 2
    # the tile of the fixed image around the point's position in it, and the moving image's tile after the prior shift
    fy, fx = int(round(y + prior[0])) - half, int(round(x + prior[1])) - half
    fy, fx = int(np.clip(fy, 0, f.shape[0] - size)), int(np.clip(fx, 0, f.shape[1] - size))
    ft = f[fy : fy + size, fx : fx + size]
    # moving tile resampled at fixed coordinates minus the prior (sub-pixel exact)
    yy, xx = np.mgrid[fy : fy + size, fx : fx + size].astype(float)
    mt = ndimage.map_coordinates(m, [yy - prior[0], xx - prior[1]], order=1, mode="nearest")
    d, _ = _phase(ft, mt, upsample)
    if np.abs(d).max() > max_shift:
        raise RegistrationError(f"local refinement at ({x:.0f}, {y:.0f}) moved {np.hypot(*d):.1f} px, beyond the +-{max_shift:.0f} px search window")
    return prior + d


def register_points(
    fixed: np.ndarray,
    moving: np.ndarray,
    points: pd.DataFrame,
    *,
    n_pairs: int = 10,
    tile: int = 256,
    local_size: int = 128,
    max_local_shift: float = 16.0,
    seed: int = 0,
) -> tuple[pd.DataFrame, GlobalShift]:
    """Map points (``x``, ``y`` in the moving image, e.g. PHH3 candidates) into the fixed image.

    Adds ``x_fixed``, ``y_fixed``, ``dx_global``, ``dy_global``, ``dx_local``, ``dy_local`` and
    ``local_ok`` (False where the local refinement left its window: the global shift is used).
    """
    _pair_check(fixed, moving, MAX_SIZE_RATIO)
    f, m = shared_channel(fixed, name="fixed"), shared_channel(moving, name="moving")
    g = _global(f, m, n_pairs, tile, None, 20, seed)
    size = min(local_size, f.shape[0], f.shape[1])
    rows = []
    for x, y in zip(points["x"].to_numpy(float), points["y"].to_numpy(float)):
        try:
            s, ok = _local(f, m, (y, x), size, g.shift, max_local_shift, 20), True
        except RegistrationError:
            s, ok = g.shift, False
        rows.append((x + s[1], y + s[0], s[1] - g.shift[1], s[0] - g.shift[0], ok))
    extra = pd.DataFrame(rows, columns=["x_fixed", "y_fixed", "dx_local", "dy_local", "local_ok"], index=points.index)
    out = pd.concat([points, extra], axis=1)
    out["dx_global"], out["dy_global"] = g.shift[1], g.shift[0]
    return out, g

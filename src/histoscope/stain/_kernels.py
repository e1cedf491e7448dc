"""Compiled per-pixel kernels for uint8 images (numba).

uint8 input has only 256 possible optical densities per channel, so any affine
map of optical density, ``od' = od @ M + w * b``, followed by the inverse OD
transform ``I' = I0 * 10 ** -od' - bias``, factorises into products of lookup
tables::

    I'_c + bias = T0[I_0, c] * T1[I_1, c] * T2[I_2, c] * S[min(I), c]

with ``Tk[v, c] = 10 ** (-M[k, c] * od(v))`` and the optional background shift
table ``S``.  The kernels below evaluate that product without a logarithm or an
exponential per pixel.  Both the HED stain augmentation and the Macenko
normalisation use :func:`apply_lut_product`.

The kernels are serial and release the GIL (``nogil``); callers parallelise over
images with threads.  numba's own parallel mode is avoided on purpose: with its
OpenMP threading layer, a process that has run a parallel kernel aborts any child
it forks (``fork() called from a process already using GNU OpenMP``), which kills
PyTorch DataLoader workers.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["lut_tables", "apply_lut_product", "od_moments", "od_projection"]


def lut_tables(
    lut: np.ndarray, m: np.ndarray, b: np.ndarray | None, i0: float, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Build the ``(3, 256, 3)`` factor tables and the ``(256, 3)`` shift table (float64).

    Parameters
    ----------
    lut : (256,) OD of each intensity.
    m : (3, 3) OD map (row vectors).
    b : (3,) additive OD shift, or None.
    i0 : incident intensity (folded into the shift table).
    weight : (256,) weight of the shift as a function of the darkest channel's
        intensity, or None for a full shift everywhere.
    """
    lut = lut.astype(np.float64)
    # float64: single factors of dark intensities can exceed float32's range even
    # when their product is tiny (a large entry of m times an OD of 2.4)
    tables = np.empty((3, 256, 3), dtype=np.float64)
    for k in range(3):
        tables[k] = np.power(10.0, -np.outer(lut, m[k]))
    bb = np.zeros(3) if b is None else np.asarray(b, dtype=np.float64)
    w = np.ones(256) if weight is None else np.asarray(weight, dtype=np.float64)
    shift = i0 * np.power(10.0, -np.outer(w, bb))
    return tables, shift


@njit(cache=True, nogil=True)
def apply_lut_product(
    flat: np.ndarray,
    tables: np.ndarray,
    shift: np.ndarray,
    blend: np.ndarray,
    bias: float,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Evaluate the factorised map for every pixel of ``flat`` (N, 3) uint8 into ``out``.

    ``v = prod_k tables[k, I_k, c] * shift[m, c] - bias`` with ``m = min_k I_k``,
    then ``w * v + (1 - w) * I_c`` with ``w = blend[m]`` (1 everywhere: no blending;
    used to leave glass untouched), rounded and clipped to uint8.
    """
    n = flat.shape[0]
    for i in range(n):
        r = flat[i, 0]
        g = flat[i, 1]
        bl = flat[i, 2]
        mn = min(r, min(g, bl))
        for c in range(3):
            v = tables[0, r, c] * tables[1, g, c] * tables[2, bl, c] * shift[mn, c] - bias
            v = blend[mn] * v + (1.0 - blend[mn]) * flat[i, c] + 0.5
            if v < 0.0:
                v = 0.0
            elif v > 255.0:
                v = 255.0
            out[i, c] = np.uint8(v)


@njit(cache=True, nogil=True)
def od_moments(flat: np.ndarray, lut: np.ndarray, beta: float) -> tuple[int, np.ndarray, np.ndarray]:  # pragma: no cover
    """Count, sum and second moments of the OD of pixels with every channel's OD >= beta."""
    s = np.zeros(3)
    ss = np.zeros((3, 3))
    count = 0
    for i in range(flat.shape[0]):
        a = lut[flat[i, 0]]
        b = lut[flat[i, 1]]
        c = lut[flat[i, 2]]
        if a < beta or b < beta or c < beta:
            continue
        count += 1
        s[0] += a
        s[1] += b
        s[2] += c
        ss[0, 0] += a * a
        ss[0, 1] += a * b
        ss[0, 2] += a * c
        ss[1, 1] += b * b
        ss[1, 2] += b * c
        ss[2, 2] += c * c
    ss[1, 0] = ss[0, 1]
    ss[2, 0] = ss[0, 2]
    ss[2, 1] = ss[1, 2]
    return count, s, ss


@njit(cache=True, nogil=True)
def od_projection(
    flat: np.ndarray, lut: np.ndarray, beta: float, v: np.ndarray, pinv: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Angles of tissue pixels in the plane of ``v`` (3x2) and concentrations ``pinv @ od`` of all pixels.

    Returns
    -------
    phi : (n_tissue,) float64 angles ``arctan2(od @ v[:, 1], od @ v[:, 0])``
    conc : (2, n) float64 concentrations (empty when ``pinv`` has no rows)
    """
    n = flat.shape[0]
    phi = np.empty(n)
    k = 0
    rows = pinv.shape[0]
    conc = np.empty((rows, n if rows else 0))
    for i in range(n):
        a = lut[flat[i, 0]]
        b = lut[flat[i, 1]]
        c = lut[flat[i, 2]]
        for r in range(rows):
            conc[r, i] = pinv[r, 0] * a + pinv[r, 1] * b + pinv[r, 2] * c
        if a < beta or b < beta or c < beta:
            continue
        x = a * v[0, 0] + b * v[1, 0] + c * v[2, 0]
        y = a * v[0, 1] + b * v[1, 1] + c * v[2, 1]
        phi[k] = np.arctan2(y, x)
        k += 1
    return phi[:k], conc


@njit(cache=True, nogil=True)
def percentiles(a: np.ndarray, qs: np.ndarray) -> np.ndarray:  # pragma: no cover
    """``numpy.percentile(a, qs)`` (linear interpolation), exact, in O(n).

    One pass builds a 4096-bin histogram; a second pass gathers the values of
    the few bins that hold the needed order statistics, and only those are sorted.
    """
    n = a.size
    out = np.empty(qs.size)
    if n == 0:
        out[:] = np.nan
        return out
    lo = a[0]
    hi = a[0]
    for x in a:
        if x < lo:
            lo = x
        elif x > hi:
            hi = x
    if hi == lo:
        out[:] = lo
        return out
    nb = 4096
    scale = (nb - 1e-9) / (hi - lo)
    bins = np.empty(n, np.int32)
    counts = np.zeros(nb, np.int64)
    for i in range(n):
        b = int((a[i] - lo) * scale)
        bins[i] = b
        counts[b] += 1
    cum = np.cumsum(counts)
    # ranks needed and the bin of each
    ranks = np.empty(2 * qs.size, np.int64)
    fracs = np.empty(qs.size)
    for i in range(qs.size):
        pos = qs[i] / 100.0 * (n - 1)
        k0 = int(np.floor(pos))
        fracs[i] = pos - k0
        ranks[2 * i] = k0
        ranks[2 * i + 1] = min(k0 + 1, n - 1)
    wanted = np.zeros(nb, np.bool_)
    rank_bin = np.empty(ranks.size, np.int64)
    for j in range(ranks.size):
        b = np.searchsorted(cum, ranks[j], side="right")
        rank_bin[j] = b
        wanted[b] = True
    # gather the wanted bins' values, grouped by bin (offsets from the counts)
    start = np.zeros(nb, np.int64)
    total = 0
    for b in range(nb):
        if wanted[b]:
            start[b] = total
            total += counts[b]
    vals = np.empty(total)
    fill = start.copy()
    for i in range(n):
        b = bins[i]
        if wanted[b]:
            vals[fill[b]] = a[i]
            fill[b] += 1
    for b in range(nb):
        if wanted[b]:
            vals[start[b] : start[b] + counts[b]].sort()
    for i in range(qs.size):
        v = np.empty(2)
        for t in range(2):
            k = ranks[2 * i + t]
            b = rank_bin[2 * i + t]
            before = cum[b - 1] if b > 0 else 0
            v[t] = vals[start[b] + k - before]
        out[i] = v[0] + fracs[i] * (v[1] - v[0]) if fracs[i] > 0 else v[0]
    return out

"""From a dense mitosis probability map to a list of detections (Tellez et al. [1]_).

The mitosis network of [1]_ runs fully convolutionally over the slide and gives a
probability map at a coarser stride than the image. The paper turns it into detections in
four steps, which :func:`detections_from_map` implements:

1. threshold the map (0.8 in [1]_);
2. group the pixels above it into connected components (8-connected here), one detection
   per component, scored by the component's highest probability;
3. suppress detections closer than ``d`` to a higher-scoring one (:func:`suppress_close`);
4. keep the detections scoring at least the detection threshold ``delta``; sweeping
   ``delta`` gives the F1 curve of their Fig. 7
   (:func:`histoscope.metrics.f1_threshold_curve`).

References
----------
.. [1] D. Tellez, M. Balkenhol, I. Otte-Hoeller, et al., "Whole-slide mitosis detection in
   H&E breast histology using PHH3 as a reference to train distilled stain-invariant
   convolutional networks", IEEE Transactions on Medical Imaging 37(9), 2018.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from .candidates import DEFAULT_DIAMETER_UM

__all__ = [
    "DETECTION_COLUMNS",
    "DEFAULT_MAP_THRESHOLD",
    "DEFAULT_MIN_DISTANCE_UM",
    "Position",
    "detections_from_map",
    "suppress_close",
]

Position = Literal["centroid", "argmax"]

#: Columns of a detection table, in order.
DETECTION_COLUMNS = ("x", "y", "prob")
#: Threshold on the probability map before connected components, as in [1].
DEFAULT_MAP_THRESHOLD = 0.8
#: Detections closer than this (microns) are merged into the higher-scoring one. [1] uses
#: the same ``d`` as the candidate detector: 100 px at 0.25 um/px = 25 um. That is wider
#: than one mitotic figure, including the two chromosome sets of a telophase (which can
#: show up as two components), and narrower than the typical spacing of real mitoses.
DEFAULT_MIN_DISTANCE_UM = DEFAULT_DIAMETER_UM


def _positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and (v >= 0 if allow_zero else v > 0)):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value!r}")
    return v


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in DETECTION_COLUMNS})


def suppress_close(
    detections: pd.DataFrame,
    *,
    min_distance_px: float,
    score: str = "prob",
) -> pd.DataFrame:
    """Non-maximum suppression by distance: drop detections closer than ``min_distance_px`` to a better one.

    Detections are visited by decreasing ``score`` (ties: the earlier row first); each one
    is kept unless a detection already kept lies strictly closer than ``min_distance_px``.
    This is the suppression step of Tellez et al. [1]_ ("detections closer than d").
    Neighbours are found with :class:`scipy.spatial.cKDTree`, so the cost is about
    ``N log N`` for N detections.

    Parameters
    ----------
    detections : pandas.DataFrame
        Needs the columns ``x``, ``y`` and ``score``; other columns are kept.
    min_distance_px : float
        Distance in the units of ``x``/``y`` (pixels); 0 keeps everything.
    score : str, optional
        Column that ranks the detections (higher is better).

    Returns
    -------
    pandas.DataFrame
        The kept rows, in their input order, with a fresh 0..n-1 index.

    Raises
    ------
    ValueError
        If a column is missing, a score or coordinate is NaN, or ``min_distance_px < 0``.

    References
    ----------
    .. [1] Tellez et al., IEEE TMI 2018, section "Whole-slide mitosis detection".

    Examples
    --------
    >>> import pandas as pd
    >>> det = pd.DataFrame({"x": [0.0, 10.0, 100.0], "y": [0.0, 0.0, 0.0], "prob": [0.9, 0.95, 0.85]})
    >>> suppress_close(det, min_distance_px=20)
           x    y  prob
    0   10.0  0.0  0.95
    1  100.0  0.0  0.85
    """
    from scipy.spatial import cKDTree

    if not isinstance(detections, pd.DataFrame):
        raise TypeError(f"detections must be a pandas DataFrame, got {type(detections).__name__}")
    missing = [c for c in ("x", "y", score) if c not in detections.columns]
    if missing:
        raise ValueError(
            f"detections needs the columns 'x', 'y' and {score!r}; missing {missing} in {list(detections.columns)}"
        )
    d = _positive(min_distance_px, "min_distance_px", allow_zero=True)
    n = len(detections)
    if n < 2 or d == 0:
        return detections.reset_index(drop=True)
    xy = detections[["x", "y"]].to_numpy(dtype=np.float64)
    s = detections[score].to_numpy(dtype=np.float64)
    if np.isnan(xy).any() or np.isnan(s).any():
        raise ValueError("detections has NaN coordinates or scores")
    # strictly closer than d: pairs at distance <= the largest float below d
    pairs = cKDTree(xy).query_pairs(np.nextafter(d, 0.0), output_type="ndarray")
    order = np.argsort(-s, kind="stable")
    if pairs.size == 0:
        return detections.reset_index(drop=True)
    from scipy.sparse import coo_matrix

    both = np.concatenate([pairs, pairs[:, ::-1]])
    adj = coo_matrix((np.ones(len(both), bool), (both[:, 0], both[:, 1])), shape=(n, n)).tocsr()
    removed = np.zeros(n, bool)
    keep = np.zeros(n, bool)
    indptr, indices = adj.indptr, adj.indices
    for i in order:
        if removed[i]:
            continue
        keep[i] = True
        removed[indices[indptr[i] : indptr[i + 1]]] = True
    return detections.loc[keep].reset_index(drop=True)


def detections_from_map(
    prob: np.ndarray,
    *,
    stride: float,
    mpp: float,
    origin: tuple[float, float] = (0.0, 0.0),
    threshold: float = DEFAULT_MAP_THRESHOLD,
    min_distance_um: float = DEFAULT_MIN_DISTANCE_UM,
    detection_threshold: float | None = None,
    position: Position = "centroid",
) -> pd.DataFrame:
    """Mitosis detections from a dense probability map (Tellez et al. [1]_).

    Thresholds ``prob`` at ``threshold`` (pixels ``>= threshold``), labels the 8-connected
    components of what remains (:func:`scipy.ndimage.label`), makes one detection per
    component, suppresses detections closer than ``min_distance_um`` to a higher-scoring one
    (:func:`suppress_close`) and finally keeps those scoring at least ``detection_threshold``.

    A detection's score is the highest probability in its component. Its position is, by
    default, the probability-weighted centroid of the component: it uses every pixel of the
    component, so it is sub-pixel and does not jump between two nearly equal maxima the way
    the argmax does; ``position="argmax"`` gives the location of the highest probability
    (which always lies on the component, even for a curved one).

    Parameters
    ----------
    prob : numpy.ndarray, shape (h, w)
        Mitosis probabilities in [0, 1] (float). NaN marks pixels without a prediction
        (e.g. outside tissue) and counts as below the threshold.
    stride : float
        Pixels of the full-resolution image between two neighbouring map pixels.
    mpp : float
        Microns per pixel of the full-resolution image.
    origin : (float, float), optional
        ``(x, y)`` position in the full-resolution image of map pixel ``[0, 0]``; for a
        fully convolutional network without padding, half its receptive field.
    threshold : float, optional
        Map threshold; default 0.8 as in [1]_.
    min_distance_um : float, optional
        Suppression distance ``d`` in microns; default :data:`DEFAULT_MIN_DISTANCE_UM` (25 um,
        the ``d`` of [1]_). 0 disables the suppression.
    detection_threshold : float, optional
        Detection threshold ``delta`` on the score; default None, which keeps every detection
        (their scores are already at least ``threshold``).
    position : {"centroid", "argmax"}, optional
        Where a component's detection is placed (see above).

    Returns
    -------
    pandas.DataFrame
        Columns ``x``, ``y`` (float, full-resolution pixels: ``x = origin[0] + j * stride``,
        ``y = origin[1] + i * stride`` for map column ``j`` and row ``i``) and ``prob`` (the
        score), sorted by decreasing ``prob``. Empty, with these columns, when nothing passes.

    Raises
    ------
    TypeError
        If ``prob`` is not a numeric numpy array.
    ValueError
        If ``prob`` is not 2-D or holds values outside [0, 1], or a parameter is out of range.

    References
    ----------
    .. [1] Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as
       a reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018.

    Examples
    --------
    >>> import numpy as np
    >>> prob = np.zeros((20, 30))
    >>> prob[4:7, 4:7] = 0.9; prob[5, 5] = 0.97     # one mitosis around map pixel (5, 5)
    >>> prob[14:16, 20:22] = 0.85                    # another one
    >>> detections_from_map(prob, stride=8, mpp=0.25).round(2)
           x      y  prob
    0   40.0   40.0  0.97
    1  164.0  116.0  0.85
    """
    from scipy import ndimage as ndi

    if not isinstance(prob, np.ndarray):
        raise TypeError(f"prob must be a numpy array (h, w) of probabilities, got {type(prob).__name__}")
    if prob.dtype.kind not in "fiu":
        raise TypeError(f"prob must hold probabilities as floats, got dtype {prob.dtype}")
    if prob.ndim != 2:
        raise ValueError(f"prob must be a 2-D (h, w) map, got shape {prob.shape}")
    p = prob.astype(np.float64, copy=False)
    finite = p[~np.isnan(p)]
    if finite.size and (np.isinf(finite).any() or finite.min() < 0 or finite.max() > 1):
        raise ValueError(
            "prob must hold probabilities in [0, 1] (NaN allowed), "
            f"got values in [{finite.min():.4g}, {finite.max():.4g}]"
        )
    stride = _positive(stride, "stride")
    mpp = _positive(mpp, "mpp")
    threshold = float(threshold)
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    min_distance_um = _positive(min_distance_um, "min_distance_um", allow_zero=True)
    if detection_threshold is not None and not 0 <= float(detection_threshold) <= 1:
        raise ValueError(f"detection_threshold must be in [0, 1] or None, got {detection_threshold!r}")
    if position not in ("centroid", "argmax"):
        raise ValueError(f"position must be 'centroid' or 'argmax', got {position!r}")
    try:
        ox, oy = (float(v) for v in origin)
    except (TypeError, ValueError):
        raise ValueError(f"origin must be (x, y) in full-resolution pixels, got {origin!r}") from None

    above = p >= threshold  # NaN compares False
    labels, n = ndi.label(above, structure=np.ones((3, 3), bool))
    if n == 0:
        return _empty()
    index = np.arange(1, n + 1)
    weights = np.where(above, p, 0.0)
    score = np.asarray(ndi.maximum(weights, labels, index), np.float64)
    if position == "centroid":
        rows_cols = np.asarray(ndi.center_of_mass(weights, labels, index), np.float64).reshape(n, 2)
    else:
        rows_cols = np.asarray(ndi.maximum_position(weights, labels, index), np.float64).reshape(n, 2)
    det = pd.DataFrame({"x": ox + rows_cols[:, 1] * stride, "y": oy + rows_cols[:, 0] * stride, "prob": score})
    det = det.sort_values("prob", ascending=False, kind="stable").reset_index(drop=True)
    det = suppress_close(det, min_distance_px=min_distance_um / mpp)
    if detection_threshold is not None:
        det = det.loc[det["prob"] >= float(detection_threshold)].reset_index(drop=True)
    return det

"""Detection metrics for point objects (mitoses): matching, F1, threshold curves, agreement.

Conventions
-----------
* A detection is a point ``(x, y)`` in pixels. A prediction is a true positive when it is
  matched to an annotated point at most ``radius_um`` away (8 um: the criterion of Rao's
  MITOS-RCNN [1]_ and of the mitosis challenges that Tellez et al. [2]_ evaluate on).
* Matching is one-to-one and optimal: the largest possible number of (prediction, truth)
  pairs within the radius, and among those the smallest total distance
  (:func:`match_points`). A greedy nearest-first matching can pair a prediction with the
  "wrong" neighbour and lose a match that exists (the test suite shows such a case); the
  optimal matching also makes TP non-decreasing when predictions are added, so recall along
  a threshold curve is monotonic.
* Ratios whose denominator is 0 are NaN, as in :mod:`histoscope.metrics.classification`:
  precision without predictions, recall without annotated points, F1 when both are empty.

References
----------
.. [1] S. Rao, "MITOS-RCNN: a novel approach to mitotic figure detection in breast cancer
   histopathology images using region based convolutional neural networks", 2018.
.. [2] D. Tellez, M. Balkenhol, I. Otte-Hoeller, et al., "Whole-slide mitosis detection in
   H&E breast histology using PHH3 as a reference to train distilled stain-invariant
   convolutional networks", IEEE Transactions on Medical Imaging 37(9), 2018.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .classification import _ratio

__all__ = [
    "CURVE_COLUMNS",
    "DEFAULT_RADIUS_UM",
    "DetectionMetrics",
    "detection_metrics",
    "detection_metrics_many",
    "f1_threshold_curve",
    "match_points",
    "score_agreement",
]

#: Hit radius of a detection in microns (Rao, MITOS-RCNN; the mitosis challenges).
DEFAULT_RADIUS_UM = 8.0
#: Columns of :func:`f1_threshold_curve`, in order.
CURVE_COLUMNS = ("threshold", "precision", "recall", "f1", "tp", "fp", "fn")


# --------------------------------------------------------------------------- validation


def _as_points(points: Any, name: str) -> np.ndarray:
    if isinstance(points, pd.DataFrame):
        missing = [c for c in ("x", "y") if c not in points.columns]
        if missing:
            raise ValueError(f"{name} needs the columns 'x' and 'y', got {list(points.columns)}")
        arr = points[["x", "y"]].to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(points)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold numeric (x, y) coordinates, got dtype {arr.dtype}")
        arr = arr.astype(np.float64, copy=False)
        if arr.size == 0:
            return np.zeros((0, 2))
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"{name} must have shape (N, 2) of (x, y) points, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} has {bad} points with NaN or infinite coordinates")
    return arr


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


# --------------------------------------------------------------------------- matching


def match_points(
    pred_xy: ArrayLike,
    true_xy: ArrayLike,
    *,
    max_distance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of predicted to true points within ``max_distance``.

    Finds the largest set of (prediction, truth) pairs with each point used at most once and
    every pair at most ``max_distance`` apart (inclusive); among the largest sets, the one of
    smallest total distance. Points are split into the connected groups of the "within
    distance" graph (:class:`scipy.spatial.cKDTree`), and each group is solved exactly with
    :func:`scipy.optimize.linear_sum_assignment` on its distance matrix, where pairs beyond
    ``max_distance`` cost more than any set of allowed pairs could (so they are used only
    where nothing else is left, and then discarded). Cost stays small on whole slides with
    thousands of points, since groups are local.

    Parameters
    ----------
    pred_xy, true_xy : array_like, shape (N, 2) and (M, 2), or DataFrames with ``x``, ``y``
        Predicted and annotated points, in the same pixel frame.
    max_distance : float
        Largest distance of a matched pair, in the units of the coordinates.

    Returns
    -------
    pairs : numpy.ndarray of int64, shape (K, 2)
        Rows ``(i_pred, i_true)``, sorted by ``i_pred``.
    unmatched_pred : numpy.ndarray of int64
        Indices of the false positives (sorted).
    unmatched_true : numpy.ndarray of int64
        Indices of the false negatives (sorted).

    Raises
    ------
    ValueError
        If the points are not ``(N, 2)`` finite coordinates or ``max_distance <= 0``.

    Examples
    --------
    A greedy nearest-first matching pairs prediction 0 with truth 0 (distance 1) and leaves
    truth 1 without a partner; the optimal matching finds two pairs:

    >>> pairs, fp, fn = match_points([[1, 0], [-2, 0]], [[0, 0], [3, 0]], max_distance=2.5)
    >>> pairs.tolist(), fp.tolist(), fn.tolist()
    ([[0, 1], [1, 0]], [], [])
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = _as_points(pred_xy, "pred_xy")
    t = _as_points(true_xy, "true_xy")
    r = _positive(max_distance, "max_distance")
    n, m = len(p), len(t)
    empty = np.zeros((0, 2), np.int64)
    if n == 0 or m == 0:
        return empty, np.arange(n, dtype=np.int64), np.arange(m, dtype=np.int64)
    close = cKDTree(p).sparse_distance_matrix(cKDTree(t), r, output_type="coo_matrix")
    if close.nnz == 0:
        return empty, np.arange(n, dtype=np.int64), np.arange(m, dtype=np.int64)
    # bipartite graph on n + m nodes; its connected groups are independent subproblems
    graph = coo_matrix((np.ones(close.nnz), (close.row, close.col + n)), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    comp_p, comp_t = comp[:n], comp[n:]
    linked = np.unique(comp_p[np.unique(close.row)])
    pairs: list[np.ndarray] = []
    for c in linked:
        ip = np.flatnonzero(comp_p == c)
        it = np.flatnonzero(comp_t == c)
        d = np.sqrt(((p[ip, None, :] - t[None, it, :]) ** 2).sum(axis=2))
        allowed = d <= r
        # any allowed assignment costs at most min(n, m) * r < big, so a forbidden pair is
        # only taken where the number of allowed pairs cannot be increased
        big = r * (min(ip.size, it.size) + 1) + 1.0
        rows, cols = linear_sum_assignment(np.where(allowed, d, big))
        ok = allowed[rows, cols]
        pairs.append(np.stack([ip[rows[ok]], it[cols[ok]]], axis=1))
    out = np.concatenate(pairs).astype(np.int64) if pairs else empty
    out = out[np.argsort(out[:, 0], kind="stable")]
    unmatched_pred = np.setdiff1d(np.arange(n), out[:, 0]).astype(np.int64)
    unmatched_true = np.setdiff1d(np.arange(m), out[:, 1]).astype(np.int64)
    return out, unmatched_pred, unmatched_true


# --------------------------------------------------------------------------- counts and rates


@dataclass(frozen=True)
class DetectionMetrics:
    """Counts and rates of a point detector.

    Attributes
    ----------
    tp, fp, fn : int
        Matched predictions, unmatched predictions, unmatched annotated points.
    precision : float
        ``tp / (tp + fp)``; NaN without predictions.
    recall : float
        ``tp / (tp + fn)``; NaN without annotated points.
    f1 : float
        ``2 tp / (2 tp + fp + fn)``; NaN when there are neither predictions nor points.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> DetectionMetrics:
        """Build from counts (the one place that knows the formulas)."""
        for name, v in (("tp", tp), ("fp", fp), ("fn", fn)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        tp, fp, fn = int(tp), int(fp), int(fn)
        return cls(
            tp=tp,
            fp=fp,
            fn=fn,
            precision=float(_ratio(tp, tp + fp)),
            recall=float(_ratio(tp, tp + fn)),
            f1=float(_ratio(2 * tp, 2 * tp + fp + fn)),
        )

    def __add__(self, other: DetectionMetrics) -> DetectionMetrics:
        if not isinstance(other, DetectionMetrics):
            return NotImplemented
        return DetectionMetrics.from_counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native dict (NaN written as None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def detection_metrics(
    pred_xy: ArrayLike,
    true_xy: ArrayLike,
    *,
    mpp: float,
    radius_um: float = DEFAULT_RADIUS_UM,
) -> DetectionMetrics:
    """Precision, recall and F1 of predicted points against annotated ones (one image).

    A prediction is a true positive when :func:`match_points` pairs it with an annotated
    point at most ``radius_um`` away; the F1 criterion of Rao [1]_ and of the evaluation in
    Tellez et al. [2]_.

    Parameters
    ----------
    pred_xy, true_xy : array_like, shape (N, 2) and (M, 2), or DataFrames with ``x``, ``y``
        Pixel coordinates in the same frame.
    mpp : float
        Microns per pixel of that frame; the radius in pixels is ``radius_um / mpp``.
    radius_um : float, optional
        Hit radius in microns (default 8).

    Returns
    -------
    DetectionMetrics

    References
    ----------
    .. [1] Rao, "MITOS-RCNN", 2018 (F1 with an 8 um hit radius).
    .. [2] Tellez et al., IEEE TMI 2018, section "Evaluation".

    Examples
    --------
    >>> m = detection_metrics([[0, 0], [100, 0]], [[20, 0], [500, 0]], mpp=0.25)  # 20 px = 5 um
    >>> m.tp, m.fp, m.fn, m.f1
    (1, 1, 1, 0.5)
    """
    mpp = _positive(mpp, "mpp")
    radius_um = _positive(radius_um, "radius_um")
    pairs, fp, fn = match_points(pred_xy, true_xy, max_distance=radius_um / mpp)
    return DetectionMetrics.from_counts(len(pairs), len(fp), len(fn))


def detection_metrics_many(
    items: Iterable[tuple[ArrayLike, ArrayLike]],
    *,
    mpp: float | Sequence[float],
    radius_um: float = DEFAULT_RADIUS_UM,
) -> DetectionMetrics:
    """Detection metrics pooled over many images: counts are summed, then the rates computed.

    Pooling (micro-averaging) is how mitosis challenges report F1: an image without
    mitoses contributes its false positives instead of an undefined F1.

    Parameters
    ----------
    items : iterable of (pred_xy, true_xy)
        One pair of point sets per image.
    mpp : float or sequence of float
        Microns per pixel, shared or one per image.
    radius_um : float, optional
        Hit radius in microns.

    Returns
    -------
    DetectionMetrics
    """
    items = list(items)
    mpps = [mpp] * len(items) if np.isscalar(mpp) else list(mpp)  # type: ignore[arg-type]
    if len(mpps) != len(items):
        raise ValueError(f"got {len(mpps)} mpp values for {len(items)} images")
    total = DetectionMetrics.from_counts(0, 0, 0)
    for k, item in enumerate(items):
        try:
            pred, true = item
        except (TypeError, ValueError):
            raise ValueError(f"items[{k}] must be a pair (pred_xy, true_xy), got {type(item).__name__}") from None
        total = total + detection_metrics(pred, true, mpp=mpps[k], radius_um=radius_um)
    return total


def f1_threshold_curve(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    mpp: float,
    radius_um: float = DEFAULT_RADIUS_UM,
    thresholds: ArrayLike | None = None,
    image_col: str = "image",
    score_col: str = "score",
) -> pd.DataFrame:
    """Pooled precision, recall and F1 as a function of the detection threshold (Tellez et al. Fig. 7).

    For every threshold ``delta``, the predictions scoring at least ``delta`` are matched
    image by image (:func:`match_points`, radius ``radius_um``) and the counts summed over
    the images. Recall never increases with the threshold (the optimal matching of a subset
    of predictions has no more pairs); precision and F1 need not be monotonic.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Columns ``image_col``, ``x``, ``y`` and ``score_col``.
    truth : pandas.DataFrame
        Columns ``image_col``, ``x``, ``y``. Images that appear in only one of the two tables
        count as images without predictions or without annotated points.
    mpp : float
        Microns per pixel of the coordinates.
    radius_um : float, optional
        Hit radius in microns (default 8).
    thresholds : array_like, optional
        Detection thresholds; default 0, 0.01, ..., 1.
    image_col, score_col : str, optional
        Names of the image-id and score columns.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CURVE_COLUMNS` (``threshold``, ``precision``, ``recall``, ``f1``,
        ``tp``, ``fp``, ``fn``), one row per threshold in increasing order.

    References
    ----------
    .. [1] Tellez et al., IEEE TMI 2018, Fig. 7 (F1 against the detection threshold).
    """
    if not isinstance(predictions, pd.DataFrame) or not isinstance(truth, pd.DataFrame):
        raise TypeError(
            "predictions and truth must be pandas DataFrames, "
            f"got {type(predictions).__name__} and {type(truth).__name__}"
        )
    required = (("predictions", predictions, (image_col, "x", "y", score_col)), ("truth", truth, (image_col, "x", "y")))
    for name, df, cols in required:
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name} needs the columns {list(cols)}; missing {missing} in {list(df.columns)}")
    mpp = _positive(mpp, "mpp")
    radius_px = _positive(radius_um, "radius_um") / mpp
    th = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, dtype=np.float64).ravel()
    if th.size == 0 or not np.isfinite(th).all():
        raise ValueError(f"thresholds must be a non-empty array of finite numbers, got {thresholds!r}")
    th = np.unique(th)
    scores_all = predictions[score_col].to_numpy(dtype=np.float64)
    if np.isnan(scores_all).any():
        raise ValueError(f"predictions[{score_col!r}] has NaN scores")

    pred_groups = {k: g for k, g in predictions.groupby(image_col, sort=False)}
    true_groups = {k: g for k, g in truth.groupby(image_col, sort=False)}
    tp = np.zeros(th.size, np.int64)
    n_pred = np.zeros(th.size, np.int64)
    n_true = len(truth)
    for key, g in pred_groups.items():
        s = g[score_col].to_numpy(dtype=np.float64)
        order = np.argsort(-s, kind="stable")
        xy = g[["x", "y"]].to_numpy(dtype=np.float64)[order]
        s = s[order]
        t_xy = true_groups[key][["x", "y"]].to_numpy(dtype=np.float64) if key in true_groups else np.zeros((0, 2))
        # number kept at each threshold (scores sorted decreasing)
        kept = np.searchsorted(-s, -th, side="right")
        n_pred += kept
        if t_xy.shape[0] == 0:
            continue
        cache: dict[int, int] = {}
        for j, k in enumerate(kept):
            k = int(k)
            if k not in cache:
                cache[k] = len(match_points(xy[:k], t_xy, max_distance=radius_px)[0]) if k else 0
            tp[j] += cache[k]
    fp = n_pred - tp
    fn = n_true - tp
    return pd.DataFrame(
        {
            "threshold": th,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
    )


# --------------------------------------------------------------------------- agreement


def score_agreement(
    true: ArrayLike,
    pred: ArrayLike,
    *,
    labels: ArrayLike | None = None,
) -> dict[str, float]:
    """Agreement of predicted with reference grades or scores: quadratic kappa and Spearman.

    Tellez et al. [1]_ (following the TUPAC16 challenge) score predicted mitotic grades
    (1, 2, 3) with Cohen's kappa with quadratic weights and predicted proliferation scores
    with Spearman's rank correlation. Both are computed here: kappa by
    :func:`sklearn.metrics.cohen_kappa_score` (``weights="quadratic"``), Spearman by
    :func:`scipy.stats.spearmanr`.

    Parameters
    ----------
    true, pred : array_like, shape (N,)
        Reference and predicted values per case (slide or patient).
    labels : array_like, optional
        The grade scale for kappa. Default: every integer from the smallest to the largest
        value seen, so that the quadratic weights follow the numeric distance between
        grades even when one is absent (e.g. 1 and 3 stay two steps apart).

    Returns
    -------
    dict
        ``kappa_quadratic`` (NaN when the values are not all whole numbers and no ``labels``
        are given, or when kappa is undefined: one single grade everywhere),
        ``spearman_rho`` and ``spearman_p`` (NaN when either input is constant or N < 2),
        and ``n``.

    Raises
    ------
    ValueError
        If the inputs are not 1-D of equal length or hold NaN.

    References
    ----------
    .. [1] Tellez et al., IEEE TMI 2018, section "Evaluation" (TUPAC16 tasks 1 and 2).

    Examples
    --------
    >>> out = score_agreement([1, 2, 3, 3, 2, 1], [1, 2, 3, 2, 2, 1])
    >>> round(out["kappa_quadratic"], 4), round(out["spearman_rho"], 4), out["n"]
    (0.8571, 0.9037, 6)
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    t = np.asarray(true)
    p = np.asarray(pred)
    for name, a in (("true", t), ("pred", p)):
        if a.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be numeric, got dtype {a.dtype}")
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one value per case), got shape {a.shape}")
    if t.shape != p.shape:
        raise ValueError(f"true and pred must have the same length, got shapes {t.shape} and {p.shape}")
    t = t.astype(np.float64)
    p = p.astype(np.float64)
    if np.isnan(t).any() or np.isnan(p).any():
        raise ValueError("true and pred must not contain NaN")
    n = int(t.size)

    kappa = math.nan
    if labels is not None:
        scale = np.asarray(labels)
    elif n and np.all(t == np.round(t)) and np.all(p == np.round(p)):
        lo, hi = int(min(t.min(), p.min())), int(max(t.max(), p.max()))
        scale = np.arange(lo, hi + 1)
        t, p = t.astype(np.int64), p.astype(np.int64)
    else:
        scale = None
    if scale is not None and n:
        with warnings.catch_warnings():  # 0/0 when both use one and the same grade: NaN
            warnings.simplefilter("ignore")
            value = float(cohen_kappa_score(t, p, labels=scale, weights="quadratic"))
        kappa = value if math.isfinite(value) else math.nan

    rho = pval = math.nan
    if n >= 2 and np.ptp(t) > 0 and np.ptp(p) > 0:
        res = spearmanr(t, p)
        rho, pval = float(res.statistic), float(res.pvalue)
    return {"kappa_quadratic": kappa, "spearman_rho": rho, "spearman_p": pval, "n": n}

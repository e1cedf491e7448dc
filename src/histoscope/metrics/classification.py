"""Classification metrics: confusion matrix, per-class table, report, aggregation.

Every classifier of histoscope (the tissue classifiers now, the mitosis detector's
patch classifier later) is scored here, so that all of them report the same numbers
computed the same way.

Conventions
-----------
* Labels are integer class ids in ``[0, n_classes)``; ``probs`` is ``(N, K)`` with
  rows that sum to 1 (softmax outputs), and the predicted class is its argmax.
* Per-class metrics are one-vs-rest: for class *k*, TP counts samples of class *k*
  predicted as *k*, FP samples of another class predicted as *k*, FN samples of class
  *k* predicted as another class, TN everything else.
* A ratio whose denominator is 0 (e.g. the precision of a class that is never
  predicted, the recall or AUROC of a class absent from ``y_true``) is **NaN**, never
  0, so that "undefined" cannot be mistaken for "bad". Summary rows (``macro``,
  ``weighted``) and summary numbers (balanced accuracy, macro AUROC, mAP) average the
  defined values and ignore the NaNs, as scikit-learn does with
  ``zero_division=np.nan``; they are NaN only when no class has a defined value.

References
----------
.. [1] Kim et al., "Classification of colorectal cancer in histological images using
   deep neural networks", Table 2 (precision, recall, specificity, NPV, mAP, AUROC).
.. [2] J. Cohen, "Weighted kappa: nominal scale agreement with provision for scaled
   disagreement or partial credit", Psychological Bulletin 70(4), 1968.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = [
    "AggregateMethod",
    "BinaryMetrics",
    "ClassificationReport",
    "PER_CLASS_COLUMNS",
    "aggregate_predictions",
    "binary_from_classes",
    "classification_report",
    "confusion_matrix",
    "per_class_metrics",
]

AggregateMethod = Literal["mean", "vote"]

#: Columns of :func:`per_class_metrics`, in order.
PER_CLASS_COLUMNS = ("precision", "recall", "specificity", "npv", "f1", "support", "tp", "fp", "fn", "tn")

_SUMMARY_ROWS = ("macro", "weighted")
_PROB_SUM_TOL = 1e-2  # loose enough for float16 softmax, tight enough to catch logits


# --------------------------------------------------------------------------- validation


def _check_n_classes(n_classes: Any) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise TypeError(f"n_classes must be an int, got {n_classes!r}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    return int(n_classes)


def _as_labels(y: ArrayLike, name: str, n_classes: int | None = None) -> np.ndarray:
    """``y`` as a 1-D int64 array of class ids, checked against ``[0, n_classes)``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class ids, got shape {arr.shape}")
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.int64, copy=False)
    elif arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise ValueError(
                f"{name} must hold integer class ids, got non-integer values {np.unique(arr[bad])[:10].tolist()}"
            )
        arr = arr.astype(np.int64)
    else:
        raise TypeError(
            f"{name} must hold integer class ids, got dtype {arr.dtype}; map class names to ids first"
        )
    if n_classes is not None:
        bad = (arr < 0) | (arr >= n_classes)
        if bad.any():
            values = np.unique(arr[bad])
            more = f" (and {values.size - 10} more)" if values.size > 10 else ""
            raise ValueError(
                f"{name} has labels outside [0, {n_classes}): {values[:10].tolist()}{more} "
                f"at {int(bad.sum())} of {arr.size} positions"
            )
    elif arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative labels: {np.unique(arr[arr < 0])[:10].tolist()}")
    return arr


def _as_probs(probs: ArrayLike, n_classes: int | None = None) -> np.ndarray:
    """``probs`` as a float64 ``(N, K)`` array of probabilities whose rows sum to 1."""
    arr = np.asarray(probs)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"probs must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"probs must have shape (N, K) (one row of class probabilities per sample), got shape {arr.shape}")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise ValueError(f"probs must have {n_classes} columns (one per class), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"probs contains {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        worst = float(np.abs(arr.sum(axis=1) - 1.0).max())
        if lo < 0 or hi > 1 or worst > _PROB_SUM_TOL:
            raise ValueError(
                f"probs must be probabilities in [0, 1] with rows summing to 1, got values in [{lo:.4g}, {hi:.4g}] "
                f"and a row sum off by {worst:.3g}; pass softmax(logits), not logits"
            )
    return arr


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of samples, got shapes {a.shape} and {b.shape}"
        )


def _class_names(classes: Sequence[str] | None, n_classes: int) -> list[str]:
    if classes is None:
        return [str(k) for k in range(n_classes)]
    if isinstance(classes, str):
        raise TypeError(f"classes must be a sequence of class names, got the string {classes!r}")
    names = [str(c) for c in classes]
    if len(names) != n_classes:
        raise ValueError(f"got {len(names)} class names {names} for {n_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    clash = sorted(set(names) & set(_SUMMARY_ROWS))
    if clash:
        raise ValueError(f"class names {clash} clash with the summary rows {list(_SUMMARY_ROWS)}")
    return names


def _resolve_classes(n_classes: int | None, classes: Sequence[str] | None) -> tuple[int, list[str]]:
    """Number of classes and their names from ``n_classes`` and/or ``classes``."""
    if n_classes is None and classes is None:
        raise ValueError(
            "give n_classes or classes: the number of classes cannot be read from the labels, "
            "since a class may be absent from them"
        )
    if n_classes is None:
        if isinstance(classes, str):
            raise TypeError(f"classes must be a sequence of class names, got the string {classes!r}")
        n_classes = len(classes)  # type: ignore[arg-type]
    n = _check_n_classes(n_classes)
    return n, _class_names(classes, n)


# --------------------------------------------------------------------------- arithmetic


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float, NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """The one-vs-rest formulas of Kim et al., Table 2 (the one place that knows them)."""
    return {
        "precision": _ratio(tp, tp + fp),  # positive predictive value
        "recall": _ratio(tp, tp + fn),  # sensitivity
        "specificity": _ratio(tn, tn + fp),
        "npv": _ratio(tn, tn + fn),
        # 2TP / (2TP + FP + FN): the harmonic mean of precision and recall where both are
        # defined, 0 when the class is predicted or present but never right, NaN when absent from both.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _nanmean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean of the non-NaN ``values`` (weighted), NaN when there are none or all weights are 0."""
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    if not keep.any():
        return math.nan
    if weights is None:
        return float(values[keep].mean())
    w = np.asarray(weights, dtype=np.float64)[keep]
    return float(np.average(values[keep], weights=w)) if w.sum() > 0 else math.nan


def _one_vs_rest_counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return tp, fp, fn, tn


# --------------------------------------------------------------------------- public API


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, *, n_classes: int) -> np.ndarray:
    """Count each (true class, predicted class) pair.

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
        True class ids in ``[0, n_classes)``.
    y_pred : array_like of int, shape (N,)
        Predicted class ids in ``[0, n_classes)``.
    n_classes : int
        Number of classes K; classes absent from both inputs still get a row and a column.

    Returns
    -------
    numpy.ndarray of int64, shape (K, K)
        ``cm[i, j]`` is the number of samples of true class ``i`` predicted as ``j``
        (rows are true classes, columns predicted classes, as in scikit-learn).

    Raises
    ------
    ValueError
        If the inputs are not 1-D, differ in length, or hold labels outside ``[0, n_classes)``.
    TypeError
        If the labels are not integers.

    Examples
    --------
    >>> confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], n_classes=3)
    array([[1, 0, 0],
           [0, 0, 1],
           [0, 1, 1]])
    """
    k = _check_n_classes(n_classes)
    t = _as_labels(y_true, "y_true", k)
    p = _as_labels(y_pred, "y_pred", k)
    _check_same_length(t, p, "y_true", "y_pred")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def per_class_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    n_classes: int | None = None,
    classes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One-vs-rest precision, recall, specificity, NPV and F1 of every class.

    Implements the per-class formulas of Kim et al. [1]_, Table 2::

        precision   = TP / (TP + FP)        (positive predictive value)
        recall      = TP / (TP + FN)        (sensitivity)
        specificity = TN / (TN + FP)
        npv         = TN / (TN + FN)        (negative predictive value)
        f1          = 2 TP / (2 TP + FP + FN)

    A ratio with a zero denominator is NaN (see the module notes): a class that is
    never predicted has NaN precision, a class absent from ``y_true`` NaN recall.

    Parameters
    ----------
    y_true, y_pred : array_like of int, shape (N,)
        True and predicted class ids in ``[0, K)``.
    n_classes : int, optional
        Number of classes K. Give this or ``classes`` (or both, if they agree).
    classes : sequence of str, optional
        Class names, in class-id order; they become the index. Default ``"0"``, ``"1"``, ...

    Returns
    -------
    pandas.DataFrame
        Index ``class``: the K class names, then ``"macro"`` (unweighted mean over the
        classes where the metric is defined) and ``"weighted"`` (mean weighted by support
        over the same classes). Columns :data:`PER_CLASS_COLUMNS`: the five ratios
        (float), ``support`` (number of true samples; N in the summary rows) and the
        counts ``tp``, ``fp``, ``fn``, ``tn`` (nullable ``Int64``, ``<NA>`` in the summary rows).

    Raises
    ------
    ValueError
        If neither ``n_classes`` nor ``classes`` is given, they disagree, or the labels are
        invalid (see :func:`confusion_matrix`).

    References
    ----------
    .. [1] Kim et al., "Classification of colorectal cancer in histological images using
       deep neural networks", Table 2.

    Examples
    --------
    >>> table = per_class_metrics([0, 0, 1, 1], [0, 1, 1, 1], classes=["normal", "tumour"])
    >>> table[["precision", "recall", "specificity", "npv"]].round(3)
              precision  recall  specificity    npv
    class
    normal        1.000    0.50         1.00  0.667
    tumour        0.667    1.00         0.50  1.000
    macro         0.833    0.75         0.75  0.833
    weighted      0.833    0.75         0.75  0.833
    """
    k, names = _resolve_classes(n_classes, classes)
    cm = confusion_matrix(y_true, y_pred, n_classes=k)
    return _per_class_table(cm, names)


def _per_class_table(cm: np.ndarray, names: list[str]) -> pd.DataFrame:
    tp, fp, fn, tn = _one_vs_rest_counts(cm)
    support = cm.sum(axis=1)
    rates = _rates(tp, fp, fn, tn)
    table = pd.DataFrame(rates, index=pd.Index(names, name="class"))
    summary = pd.DataFrame(
        {
            name: {metric: _nanmean(values, weights) for metric, values in rates.items()}
            for name, weights in (("macro", None), ("weighted", support))
        }
    ).T
    table = pd.concat([table, summary])
    table.index.name = "class"
    n = int(cm.sum())
    table["support"] = np.concatenate([support, [n, n]]).astype(np.int64)
    for col, counts in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn)):
        table[col] = pd.array(list(counts.tolist()) + [pd.NA, pd.NA], dtype="Int64")
    return table[list(PER_CLASS_COLUMNS)]


def _json_value(v: Any) -> Any:
    """A JSON-native version of a scalar: NaN and <NA> become None."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    return v


def _table_to_dict(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {str(row): {str(c): _json_value(v) for c, v in values.items()} for row, values in table.iterrows()}


@dataclass(frozen=True, eq=False)
class ClassificationReport:
    """Everything :func:`classification_report` measures; see there.

    Attributes
    ----------
    classes : tuple of str
        Class names, in class-id order.
    n_samples : int
        Number of samples scored.
    accuracy : float
        Fraction of samples whose argmax is the true class.
    balanced_accuracy : float
        Mean recall over the classes present in ``y_true``.
    kappa : float
        Cohen's kappa.
    kappa_quadratic : float
        Cohen's kappa with quadratic weights (for ordered classes such as grades).
    auroc_macro : float
        Mean one-vs-rest AUROC over the classes where it is defined.
    map : float
        Mean average precision: mean per-class AP over the classes present in ``y_true``.
    per_class : pandas.DataFrame
        :func:`per_class_metrics` plus the columns ``auroc`` and ``average_precision``.
    confusion : numpy.ndarray of int64, shape (K, K)
        Rows true classes, columns predicted classes.
    """

    classes: tuple[str, ...]
    n_samples: int
    accuracy: float
    balanced_accuracy: float
    kappa: float
    kappa_quadratic: float
    auroc_macro: float
    map: float
    per_class: pd.DataFrame
    confusion: np.ndarray

    @property
    def auroc(self) -> pd.Series:
        """One-vs-rest AUROC of each class (NaN for a class absent from ``y_true``)."""
        return self.per_class["auroc"].loc[list(self.classes)]

    @property
    def average_precision(self) -> pd.Series:
        """Average precision of each class (NaN for a class absent from ``y_true``)."""
        return self.per_class["average_precision"].loc[list(self.classes)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-native dict (lists, floats, ints, None for NaN), e.g. for a model card."""
        scalars = {
            name: _json_value(getattr(self, name))
            for name in ("n_samples", "accuracy", "balanced_accuracy", "kappa", "kappa_quadratic", "auroc_macro", "map")
        }
        return {
            "classes": list(self.classes),
            **scalars,
            "per_class": _table_to_dict(self.per_class),
            "confusion_matrix": self.confusion.tolist(),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """Strict JSON text of :meth:`to_dict` (NaN written as ``null``); also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".partial.{out.name}")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, out)
        return text

    def __str__(self) -> str:
        head = (
            f"n={self.n_samples}  accuracy={self.accuracy:.4f}  balanced accuracy={self.balanced_accuracy:.4f}  "
            f"kappa={self.kappa:.4f}  quadratic kappa={self.kappa_quadratic:.4f}  "
            f"macro AUROC={self.auroc_macro:.4f}  mAP={self.map:.4f}"
        )
        return head + "\n" + self.per_class.to_string(float_format=lambda x: f"{x:.4f}")


def _kappa(t: np.ndarray, p: np.ndarray, k: int, weights: Literal["quadratic"] | None) -> float:
    from sklearn.metrics import cohen_kappa_score

    if t.size == 0:
        return math.nan
    with warnings.catch_warnings():  # 0/0 when both raters use one and the same class: NaN
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(t, p, labels=np.arange(k), weights=weights))
    return value if math.isfinite(value) else math.nan


def classification_report(
    y_true: ArrayLike,
    probs: ArrayLike,
    *,
    classes: Sequence[str] | None = None,
) -> ClassificationReport:
    """Score a K-class classifier from its class probabilities.

    The predicted class is ``argmax(probs, axis=1)`` (the lowest class id on a tie).
    The report holds accuracy, balanced accuracy (mean recall over the classes present
    in ``y_true``), Cohen's kappa, plain and with quadratic weights [2]_, the
    per-class table of :func:`per_class_metrics` with one-vs-rest AUROC and average
    precision (AP) added, their macro means (AUROC, mAP) and the confusion matrix:
    the measures of Kim et al. [1]_. AUROC and AP come from scikit-learn
    (``roc_auc_score``, ``average_precision_score``) on the one-vs-rest problem of each
    class, scored by that class's probability; they are NaN for a class absent from
    ``y_true`` (and AUROC also for a class that is all of it), and the means skip them.

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
        True class ids in ``[0, K)``.
    probs : array_like of float, shape (N, K)
        Class probabilities (rows sum to 1, e.g. a softmax).
    classes : sequence of str, optional
        The K class names in class-id order. Default ``"0"``, ``"1"``, ...

    Returns
    -------
    ClassificationReport
        Use ``.to_dict()`` / ``.to_json()`` for strict JSON (NaN as null), ``str()`` for a log.

    Raises
    ------
    ValueError
        If ``probs`` is not ``(N, K)`` probabilities, its length differs from ``y_true``,
        ``classes`` has not K names, or a label is outside ``[0, K)``.
    TypeError
        If the labels are not integers.

    References
    ----------
    .. [1] Kim et al., "Classification of colorectal cancer in histological images using
       deep neural networks", Table 2.
    .. [2] J. Cohen, "Weighted kappa: nominal scale agreement with provision for scaled
       disagreement or partial credit", Psychological Bulletin 70(4), 1968.

    Examples
    --------
    >>> probs = [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4]]
    >>> report = classification_report([0, 1, 2, 2], probs, classes=["normal", "adenoma", "carcinoma"])
    >>> report.accuracy, round(report.balanced_accuracy, 4)
    (0.75, 0.8333)
    >>> report.per_class.loc["carcinoma", ["precision", "recall", "auroc"]].round(3).tolist()
    [1.0, 0.5, 1.0]
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    t = _as_labels(y_true, "y_true")
    p = _as_probs(probs)
    k = p.shape[1]
    names = _class_names(classes, k)
    _as_labels(t, "y_true", k)
    _check_same_length(t, p, "y_true", "probs")
    pred = np.argmax(p, axis=1) if t.size else np.zeros(0, dtype=np.int64)

    cm = confusion_matrix(t, pred, n_classes=k)
    table = _per_class_table(cm, names)
    support = cm.sum(axis=1)
    auroc = np.full(k, np.nan)
    ap = np.full(k, np.nan)
    for c in range(k):
        positive = t == c
        if positive.any():
            ap[c] = average_precision_score(positive, p[:, c])
            if not positive.all():
                auroc[c] = roc_auc_score(positive, p[:, c])
    for col, values in (("auroc", auroc), ("average_precision", ap)):
        table.insert(table.columns.get_loc("support"), col, np.concatenate([values, [_nanmean(values), _nanmean(values, support)]]))

    n = int(t.size)
    return ClassificationReport(
        classes=tuple(names),
        n_samples=n,
        accuracy=float(np.trace(cm) / n) if n else math.nan,
        balanced_accuracy=float(table.loc["macro", "recall"]),
        kappa=_kappa(t, pred, k, None),
        kappa_quadratic=_kappa(t, pred, k, "quadratic"),
        auroc_macro=_nanmean(auroc),
        map=_nanmean(ap),
        per_class=table,
        confusion=cm,
    )


def aggregate_predictions(
    probs: ArrayLike,
    groups: ArrayLike,
    *,
    method: AggregateMethod = "mean",
    classes: Sequence[str] | None = None,
    y_true: ArrayLike | None = None,
) -> pd.DataFrame:
    """Image- or slide-level predictions from patch predictions.

    Parameters
    ----------
    probs : array_like of float, shape (N, K)
        Class probabilities of the N patches.
    groups : array_like, shape (N,)
        The group (image, slide, patient) of each patch; any hashable, no missing values.
    method : {"mean", "vote"}, optional
        ``"mean"``: the predicted class is the argmax of the mean probability.
        ``"vote"``: majority vote of the patches' argmax classes; a tie is broken by the
        highest mean probability among the tied classes (then by the lowest class id).
    classes : sequence of str, optional
        Class names used in the column names. Default ``"0"``, ``"1"``, ...
    y_true : array_like of int, shape (N,), optional
        Patch labels; each group must have a single label, returned in column ``true``.

    Returns
    -------
    pandas.DataFrame
        Indexed by group (sorted; index name ``group``). Columns: ``prob_<class>``
        (mean probability, K columns, first), ``votes_<class>`` (number of patches whose
        argmax is the class; K columns, ``"vote"`` only), ``n_patches``, ``pred``
        (predicted class id) and, with ``y_true``, ``true``. The ``prob_`` columns can be
        passed back to :func:`classification_report` as group-level ``probs``.

    Raises
    ------
    ValueError
        If ``probs`` is not ``(N, K)`` probabilities, ``groups``/``y_true`` do not have
        N entries, ``groups`` has missing values, ``method`` is unknown, or a group
        holds patches of different true classes.

    Examples
    --------
    >>> probs = [[0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8]]
    >>> aggregate_predictions(probs, ["a", "a", "a", "b"], method="vote")
           prob_0    prob_1  votes_0  votes_1  n_patches  pred
    group
    a        0.583333  0.416667        1        2          3     1
    b        0.200000  0.800000        0        1          1     1
    """
    if method not in ("mean", "vote"):
        raise ValueError(f"method must be one of ['mean', 'vote'], got {method!r}")
    p = _as_probs(probs)
    k = p.shape[1]
    names = _class_names(classes, k)
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D (one group per patch), got shape {g.shape}")
    _check_same_length(p, g, "probs", "groups")
    missing = pd.isna(g)
    if missing.any():
        raise ValueError(f"groups has {int(missing.sum())} missing values, first at position {int(np.argmax(missing))}")

    prob_cols = [f"prob_{c}" for c in names]
    frame = pd.DataFrame(p, columns=prob_cols)
    frame["_group"] = g
    argmax = np.argmax(p, axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    vote_cols = [f"votes_{c}" for c in names]
    votes = pd.DataFrame(np.eye(k, dtype=np.int64)[argmax], columns=vote_cols)
    grouped = frame.groupby("_group", sort=True)
    out = grouped[prob_cols].mean()
    mean = out.to_numpy()
    if method == "vote":
        counts = votes.groupby(g, sort=True).sum().reindex(out.index)
        tied = counts.to_numpy() == counts.to_numpy().max(axis=1, keepdims=True)
        pred = np.argmax(np.where(tied, mean, -np.inf), axis=1)
        out = out.join(counts)
    else:
        pred = np.argmax(mean, axis=1) if len(mean) else np.zeros(0, dtype=np.int64)
    out["n_patches"] = grouped.size().astype(np.int64)
    out["pred"] = pred.astype(np.int64)

    if y_true is not None:
        t = _as_labels(y_true, "y_true", k)
        _check_same_length(p, t, "probs", "y_true")
        labels = pd.Series(t).groupby(g, sort=True)
        mixed = labels.nunique()
        mixed = mixed[mixed > 1]
        if len(mixed):
            raise ValueError(
                f"y_true must be constant within a group, but {len(mixed)} groups mix classes, "
                f"e.g. {mixed.index[:5].tolist()}"
            )
        out["true"] = labels.first().reindex(out.index).astype(np.int64)
    out.index.name = "group"
    return out


@dataclass(frozen=True)
class BinaryMetrics:
    """Positive-versus-rest metrics from :func:`binary_from_classes`.

    Attributes
    ----------
    positive : tuple of int
        Class ids counted as positive.
    tp, fp, fn, tn : int
        The 2 x 2 confusion counts.
    accuracy, sensitivity, specificity, precision, npv, f1 : float
        As in :func:`per_class_metrics`; NaN when undefined.
    """

    positive: tuple[int, ...]
    tp: int
    fp: int
    fn: int
    tn: int
    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    npv: float
    f1: float

    @property
    def n_samples(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def to_dict(self) -> dict[str, Any]:
        """JSON-native dict (None for NaN)."""
        d = {name: _json_value(getattr(self, name)) for name in self.__dataclass_fields__ if name != "positive"}
        return {"positive": list(self.positive), "n_samples": self.n_samples, **d}


def binary_from_classes(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    positive: Iterable[int],
    n_classes: int | None = None,
) -> BinaryMetrics:
    """Collapse K classes into positive / negative and score the binary decision.

    For example benign (normal, adenoma: classes 0 and 1) versus malignant
    (adenocarcinoma grades: classes 2, 3, 4): ``positive={2, 3, 4}``. A sample is
    positive if its class id is in ``positive``; the K-class prediction (usually the
    argmax) is mapped the same way, so confusing two malignant grades is still right.

    Parameters
    ----------
    y_true, y_pred : array_like of int, shape (N,)
        True and predicted class ids.
    positive : iterable of int
        The class ids that count as positive; at least one.
    n_classes : int, optional
        If given, labels and ``positive`` are checked against ``[0, n_classes)``.

    Returns
    -------
    BinaryMetrics
        Counts and accuracy, sensitivity, specificity, precision, NPV, F1 (NaN when undefined).

    Raises
    ------
    ValueError
        If ``positive`` is empty or out of range, or the labels are invalid.

    Examples
    --------
    >>> m = binary_from_classes([0, 1, 2, 3, 4], [1, 2, 3, 2, 0], positive={2, 3, 4})
    >>> m.accuracy, m.sensitivity, m.specificity
    (0.6, 0.6666666666666666, 0.5)
    """
    k = None if n_classes is None else _check_n_classes(n_classes)
    pos = sorted({int(c) for c in positive})
    if not pos:
        raise ValueError("positive must name at least one class id, got none")
    if pos[0] < 0 or (k is not None and pos[-1] >= k):
        raise ValueError(f"positive class ids must be in [0, {k if k is not None else 'n_classes'}), got {pos}")
    t = _as_labels(y_true, "y_true", k)
    p = _as_labels(y_pred, "y_pred", k)
    _check_same_length(t, p, "y_true", "y_pred")
    cm = confusion_matrix(np.isin(t, pos).astype(np.int64), np.isin(p, pos).astype(np.int64), n_classes=2)
    (tn, fp), (fn, tp) = cm.tolist()
    rates = {name: float(v[1]) for name, v in _rates(*_one_vs_rest_counts(cm)).items()}
    n = tp + fp + fn + tn
    return BinaryMetrics(
        positive=tuple(pos),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        accuracy=(tp + tn) / n if n else math.nan,
        sensitivity=rates["recall"],
        specificity=rates["specificity"],
        precision=rates["precision"],
        npv=rates["npv"],
        f1=rates["f1"],
    )

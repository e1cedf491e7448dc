"""histoscope.metrics.classification against scikit-learn and hand-computed examples."""

from __future__ import annotations

import doctest
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

import histoscope.metrics.classification as classification_module
from histoscope.metrics import (
    PER_CLASS_COLUMNS,
    aggregate_predictions,
    binary_from_classes,
    classification_report,
    confusion_matrix,
    per_class_metrics,
)

K = 5
NAMES = ["normal", "adenoma", "well", "moderate", "poor"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scores(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy softmax probabilities that favour the true class."""
    logits = rng.normal(size=(y.size, K))
    logits[np.arange(y.size), y] += 1.5
    return _softmax(logits)


@pytest.fixture(scope="module")
def awkward():
    """N=400, K=5: class 4 never occurs in y_true (but is predicted), class 3 occurs but is never predicted."""
    rng = np.random.default_rng(42)
    y = rng.integers(0, 4, size=400)
    probs = _scores(y, rng)
    # Shrink class 3 below every other class so it never wins the argmax.
    probs[:, 3] = 0.5 * np.delete(probs, 3, axis=1).min(axis=1)
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    assert not (y == 4).any() and (pred == 4).any()
    assert (y == 3).any() and not (pred == 3).any()
    return y, probs, pred


@pytest.fixture(scope="module")
def complete():
    """N=300, K=5, every class present in y_true."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, K, size=300)
    probs = _scores(y, rng)
    assert set(np.unique(y)) == set(range(K))
    return y, probs, probs.argmax(axis=1)


# ----------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_matches_sklearn(awkward):
    y, _, pred = awkward
    cm = confusion_matrix(y, pred, n_classes=K)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(K)))
    assert cm.dtype == np.int64 and cm.shape == (K, K)
    assert cm.sum() == y.size


def test_confusion_matrix_keeps_trailing_absent_classes():
    cm = confusion_matrix([0, 1], [1, 1], n_classes=4)
    assert cm.shape == (4, 4)
    assert cm[0, 1] == 1 and cm[1, 1] == 1 and cm.sum() == 2


# ----------------------------------------------------------------------------- per-class table


def test_per_class_matches_sklearn_with_nan_for_undefined(awkward):
    y, _, pred = awkward
    table = per_class_metrics(y, pred, classes=NAMES)
    assert list(table.columns) == list(PER_CLASS_COLUMNS)
    assert list(table.index) == NAMES + ["macro", "weighted"]
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(K), zero_division=np.nan)
    rows = table.loc[NAMES]
    np.testing.assert_allclose(rows["precision"], p, rtol=1e-12)
    np.testing.assert_allclose(rows["recall"], r, rtol=1e-12)
    np.testing.assert_allclose(rows["f1"], f, rtol=1e-12)
    np.testing.assert_array_equal(rows["support"], s)
    # Never predicted: precision 0/0; absent from y_true: recall 0/0.
    assert math.isnan(table.loc["moderate", "precision"])
    assert table.loc["moderate", "recall"] == 0.0 and table.loc["moderate", "f1"] == 0.0
    assert math.isnan(table.loc["poor", "recall"])
    assert table.loc["poor", "precision"] == 0.0


@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_summary_rows_match_sklearn_nan_averaging(awkward, average):
    y, _, pred = awkward
    table = per_class_metrics(y, pred, n_classes=K)
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=range(K), average=average, zero_division=np.nan)
    np.testing.assert_allclose(table.loc[average, ["precision", "recall", "f1"]].astype(float), [p, r, f], rtol=1e-12)
    assert table.loc[average, "support"] == y.size
    assert table.loc[average, ["tp", "fp", "fn", "tn"]].isna().all()


def test_specificity_and_npv_worked_example():
    # y_true = 0 0 0 0 1 1 1 2 2 2, y_pred = 0 0 0 1 1 1 0 2 2 1 gives
    #     cm = [[3, 1, 0],      class 0: TP 3, FP 1, FN 1, TN 5 -> specificity 5/6, NPV 5/6
    #           [1, 2, 0],      class 1: TP 2, FP 2, FN 1, TN 5 -> specificity 5/7, NPV 5/6
    #           [0, 1, 2]]      class 2: TP 2, FP 0, FN 1, TN 7 -> specificity 7/7, NPV 7/8
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 0, 2, 2, 1]
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, n_classes=3), [[3, 1, 0], [1, 2, 0], [0, 1, 2]])
    table = per_class_metrics(y_true, y_pred, n_classes=3)
    np.testing.assert_array_equal(table.loc[["0", "1", "2"], ["tp", "fp", "fn", "tn"]].to_numpy(dtype=int),
                                  [[3, 1, 1, 5], [2, 2, 1, 5], [2, 0, 1, 7]])
    np.testing.assert_allclose(table.loc[["0", "1", "2"], "specificity"], [5 / 6, 5 / 7, 1.0], rtol=1e-12)
    np.testing.assert_allclose(table.loc[["0", "1", "2"], "npv"], [5 / 6, 5 / 6, 7 / 8], rtol=1e-12)
    np.testing.assert_allclose(table.loc["macro", ["specificity", "npv"]].astype(float),
                               [(5 / 6 + 5 / 7 + 1) / 3, (5 / 6 + 5 / 6 + 7 / 8) / 3], rtol=1e-12)
    # weighted by support 4, 3, 3
    np.testing.assert_allclose(table.loc["weighted", "specificity"], (4 * 5 / 6 + 3 * 5 / 7 + 3 * 1.0) / 10, rtol=1e-12)


def test_specificity_is_nan_when_there_are_no_negatives():
    # Every sample is class 0: class 0 has TN + FP = 0, class 1 has TP + FN = 0.
    table = per_class_metrics([0, 0, 0], [0, 1, 0], n_classes=2)
    assert math.isnan(table.loc["0", "specificity"])
    assert table.loc["0", "npv"] == 0.0  # TN 0, FN 1
    assert math.isnan(table.loc["1", "recall"])
    assert table.loc["1", "specificity"] == pytest.approx(2 / 3)
    assert table.loc["macro", "specificity"] == pytest.approx(2 / 3)  # the NaN is skipped


def test_per_class_names_default_and_agreement():
    table = per_class_metrics([0, 1], [0, 1], n_classes=2, classes=["a", "b"])
    assert list(table.index[:2]) == ["a", "b"]
    assert list(per_class_metrics([0, 1], [0, 1], n_classes=2).index[:2]) == ["0", "1"]
    with pytest.raises(ValueError, match=r"3 class names.*2 classes"):
        per_class_metrics([0, 1], [0, 1], n_classes=2, classes=["a", "b", "c"])


# ----------------------------------------------------------------------------- report


def test_report_matches_sklearn(awkward):
    y, probs, pred = awkward
    report = classification_report(y, probs, classes=NAMES)
    assert report.classes == tuple(NAMES) and report.n_samples == y.size
    assert report.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    with warnings.catch_warnings():  # sklearn warns that y_pred holds a class absent from y_true
        warnings.simplefilter("ignore")
        balanced = skm.balanced_accuracy_score(y, pred)
    assert report.balanced_accuracy == pytest.approx(balanced, abs=1e-12)
    assert report.kappa == pytest.approx(skm.cohen_kappa_score(y, pred, labels=range(K)), abs=1e-12)
    assert report.kappa_quadratic == pytest.approx(
        skm.cohen_kappa_score(y, pred, labels=range(K), weights="quadratic"), abs=1e-12
    )
    np.testing.assert_array_equal(report.confusion, skm.confusion_matrix(y, pred, labels=range(K)))

    present = [c for c in range(K) if (y == c).any()]
    assert present == [0, 1, 2, 3]
    auroc = [skm.roc_auc_score(y == c, probs[:, c]) for c in present]
    ap = [skm.average_precision_score(y == c, probs[:, c]) for c in present]
    np.testing.assert_allclose(report.auroc.to_numpy()[present], auroc, rtol=1e-12)
    np.testing.assert_allclose(report.average_precision.to_numpy()[present], ap, rtol=1e-12)
    assert math.isnan(report.auroc["poor"]) and math.isnan(report.average_precision["poor"])
    assert report.auroc_macro == pytest.approx(np.mean(auroc), abs=1e-12)
    assert report.map == pytest.approx(np.mean(ap), abs=1e-12)
    # the per-class rates are those of per_class_metrics
    pd.testing.assert_frame_equal(report.per_class[list(PER_CLASS_COLUMNS)], per_class_metrics(y, pred, classes=NAMES))


def test_report_macro_auroc_and_map_match_sklearn_multiclass(complete):
    y, probs, pred = complete
    report = classification_report(y, probs)
    assert report.auroc_macro == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert report.map == pytest.approx(
        skm.average_precision_score(label_binarize(y, classes=range(K)), probs, average="macro"), abs=1e-12
    )
    assert report.per_class.loc["weighted", "auroc"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="weighted"), abs=1e-12
    )
    assert report.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)


def test_report_to_json_is_strict_and_complete(awkward, tmp_path):
    y, probs, _ = awkward
    report = classification_report(y, probs, classes=NAMES)
    out = tmp_path / "sub" / "metrics.json"
    data = json.loads(report.to_json(out))
    assert json.loads(out.read_text()) == data
    assert data["classes"] == NAMES and data["n_samples"] == y.size
    assert data["confusion_matrix"] == report.confusion.tolist()
    assert data["per_class"]["poor"]["auroc"] is None  # NaN -> null
    assert data["per_class"]["moderate"]["precision"] is None
    assert data["per_class"]["macro"]["tp"] is None  # <NA> -> null
    assert data["per_class"]["normal"]["tp"] == int(report.per_class.loc["normal", "tp"])
    assert data["kappa_quadratic"] == pytest.approx(report.kappa_quadratic)
    assert "mAP" in str(report)


def test_report_kappa_undefined_is_nan():
    # Both raters always say class 0: expected agreement 1, kappa 0/0.
    report = classification_report([0, 0, 0], [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    assert report.accuracy == 1.0
    assert math.isnan(report.kappa) and math.isnan(report.kappa_quadratic)
    assert math.isnan(report.auroc_macro)  # class 0 is everything, class 1 absent


# ----------------------------------------------------------------------------- aggregation


@pytest.fixture
def patches():
    """Three images; rows are shuffled so that a group's patches are not contiguous.

    a: argmax 0, 1, 2 (three-way tie), mean [0.3, 0.3667, 0.3333] -> vote and mean give 1
    b: argmax 0, 1 (tie),             mean [0.275, 0.675, 0.05]   -> vote (tie -> mean) and mean give 1
    c: argmax 2, 2, 0,                mean [0.5333, 0.05, 0.4167] -> vote 2, mean 0
    """
    rows = [
        ("a", [0.6, 0.3, 0.1]), ("a", [0.1, 0.5, 0.4]), ("a", [0.2, 0.3, 0.5]),
        ("b", [0.55, 0.45, 0.0]), ("b", [0.0, 0.9, 0.1]),
        ("c", [0.4, 0.0, 0.6]), ("c", [0.3, 0.1, 0.6]), ("c", [0.9, 0.05, 0.05]),
    ]
    order = [5, 0, 3, 7, 1, 4, 6, 2]
    groups = np.array([rows[i][0] for i in order])
    probs = np.array([rows[i][1] for i in order])
    return probs, groups


def test_aggregate_mean(patches):
    probs, groups = patches
    out = aggregate_predictions(probs, groups, method="mean", classes=["x", "y", "z"])
    assert list(out.index) == ["a", "b", "c"] and out.index.name == "group"
    assert list(out.columns) == ["prob_x", "prob_y", "prob_z", "n_patches", "pred"]
    np.testing.assert_allclose(out.loc["a", ["prob_x", "prob_y", "prob_z"]].astype(float), [0.3, 1.1 / 3, 1.0 / 3])
    np.testing.assert_allclose(out.loc["c", ["prob_x", "prob_y", "prob_z"]].astype(float), [1.6 / 3, 0.05, 1.25 / 3])
    assert out["n_patches"].tolist() == [3, 2, 3]
    assert out["pred"].tolist() == [1, 1, 0]


def test_aggregate_vote_breaks_ties_by_mean_probability(patches):
    probs, groups = patches
    out = aggregate_predictions(probs, groups, method="vote")
    assert [c for c in out.columns if c.startswith("votes_")] == ["votes_0", "votes_1", "votes_2"]
    np.testing.assert_array_equal(out[["votes_0", "votes_1", "votes_2"]].to_numpy(), [[1, 1, 1], [1, 1, 0], [1, 0, 2]])
    # b ties 0 and 1 and takes 1 (higher mean), not the lowest class id 0
    assert out["pred"].tolist() == [1, 1, 2]


def test_aggregate_y_true_and_round_trip_to_report(patches):
    probs, groups = patches
    y = np.array([{"a": 1, "b": 0, "c": 2}[g] for g in groups])
    out = aggregate_predictions(probs, groups, y_true=y)
    assert out["true"].tolist() == [1, 0, 2]
    report = classification_report(out["true"], out.filter(like="prob_").to_numpy())
    assert report.n_samples == 3 and report.accuracy == pytest.approx(1 / 3)
    y[0] = 1 - y[0] if y[0] in (0, 1) else 0
    with pytest.raises(ValueError, match="constant within a group"):
        aggregate_predictions(probs, groups, y_true=y)


def test_aggregate_rejects_bad_input(patches):
    probs, groups = patches
    with pytest.raises(ValueError, match="method must be one of"):
        aggregate_predictions(probs, groups, method="median")
    with pytest.raises(ValueError, match=r"\(8, 3\) and \(7,\)"):
        aggregate_predictions(probs, groups[:-1])
    with pytest.raises(ValueError, match="missing values"):
        aggregate_predictions(probs, pd.Series(list(groups[:-1]) + [None]))


# ----------------------------------------------------------------------------- binary


def test_binary_from_classes_benign_versus_malignant():
    # classes 0, 1 benign; 2, 3, 4 malignant. Binary truth 0 0 1 1 1, binary prediction 0 1 1 1 0.
    m = binary_from_classes([0, 1, 2, 3, 4], [1, 2, 3, 2, 0], positive=[2, 3, 4], n_classes=5)
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 1, 1)
    assert m.positive == (2, 3, 4) and m.n_samples == 5
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.sensitivity == pytest.approx(2 / 3)
    assert m.specificity == pytest.approx(1 / 2)
    assert m.precision == pytest.approx(2 / 3)
    assert m.npv == pytest.approx(1 / 2)
    assert json.loads(json.dumps(m.to_dict()))["tp"] == 2


def test_binary_from_classes_matches_sklearn(awkward):
    y, _, pred = awkward
    m = binary_from_classes(y, pred, positive={2, 3, 4})
    bt, bp = np.isin(y, [2, 3, 4]), np.isin(pred, [2, 3, 4])
    assert m.accuracy == pytest.approx(skm.accuracy_score(bt, bp))
    assert m.sensitivity == pytest.approx(skm.recall_score(bt, bp))
    assert m.specificity == pytest.approx(skm.recall_score(~bt, ~bp))
    assert m.f1 == pytest.approx(skm.f1_score(bt, bp))


def test_binary_from_classes_rejects_bad_positive():
    with pytest.raises(ValueError, match="at least one"):
        binary_from_classes([0, 1], [0, 1], positive=[])
    with pytest.raises(ValueError, match=r"\[0, 3\).*\[5\]"):
        binary_from_classes([0, 1], [0, 1], positive=[5], n_classes=3)


# ----------------------------------------------------------------------------- validation


def test_mismatched_lengths_show_shapes():
    with pytest.raises(ValueError, match=r"shapes \(5,\) and \(4,\)"):
        confusion_matrix([0, 1, 0, 1, 0], [0, 1, 0, 1], n_classes=2)
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(2, 2\)"):
        classification_report([0, 1, 0], [[0.5, 0.5], [0.5, 0.5]])


@pytest.mark.parametrize(
    ("probs", "pattern"),
    [
        (np.full(6, 0.5), r"shape \(N, K\).*got shape \(6,\)"),
        (np.full((2, 3, 1), 1 / 3), r"got shape \(2, 3, 1\)"),
        (np.array([[2.0, -1.0], [0.3, 0.7]]), r"\[-1, 2\].*softmax"),
        (np.array([[np.nan, 0.5], [0.3, 0.7]]), "NaN"),
    ],
)
def test_probs_must_be_n_by_k_probabilities(probs, pattern):
    with pytest.raises(ValueError, match=pattern):
        classification_report(np.zeros(len(probs), dtype=int), probs)


def test_probs_columns_must_match_classes():
    with pytest.raises(ValueError, match=r"3 class names.*2 classes"):
        classification_report([0, 1], [[0.5, 0.5], [0.5, 0.5]], classes=["a", "b", "c"])


def test_labels_out_of_range_show_values():
    with pytest.raises(ValueError, match=r"y_pred has labels outside \[0, 3\): \[-1, 7\]"):
        confusion_matrix([0, 1, 2], [7, -1, 2], n_classes=3)
    with pytest.raises(ValueError, match=r"y_true has labels outside \[0, 2\): \[2\]"):
        classification_report([0, 2], [[0.5, 0.5], [0.5, 0.5]])


def test_label_types_and_counts():
    with pytest.raises(ValueError, match=r"non-integer values \[0.5\]"):
        confusion_matrix([0.5, 1.0], [0, 1], n_classes=2)
    with pytest.raises(TypeError, match="dtype <U"):
        confusion_matrix(["a", "b"], [0, 1], n_classes=2)
    with pytest.raises(ValueError, match=r"1-D.*shape \(2, 1\)"):
        confusion_matrix([[0], [1]], [0, 1], n_classes=2)
    with pytest.raises(ValueError, match="give n_classes or classes"):
        per_class_metrics([0, 1], [0, 1])
    with pytest.raises(TypeError, match="n_classes must be an int"):
        confusion_matrix([0, 1], [0, 1], n_classes=2.0)
    with pytest.raises(ValueError, match="clash with the summary rows"):
        per_class_metrics([0, 1], [0, 1], classes=["macro", "b"])
    # integral floats and bools are fine
    np.testing.assert_array_equal(confusion_matrix(np.array([0.0, 1.0]), [True, False], n_classes=2), [[0, 1], [1, 0]])


def test_docstring_examples():
    result = doctest.testmod(classification_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0

"""histoscope.metrics.detection: optimal point matching, F1, threshold curves, kappa/Spearman."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from histoscope.metrics import (
    CURVE_COLUMNS,
    DetectionMetrics,
    detection_metrics,
    detection_metrics_many,
    f1_threshold_curve,
    match_points,
    plot_f1_curve,
    score_agreement,
)


def brute_force_matching(p, t, r):
    """(most pairs, smallest total distance among those) over every one-to-one matching."""
    d = np.sqrt(((p[:, None] - t[None]) ** 2).sum(-1))
    best = (0, 0.0)
    n, m = len(p), len(t)
    # assign each prediction a distinct truth index or None
    for assign in itertools.product(*[[None, *range(m)]] * n):
        used = [a for a in assign if a is not None]
        if len(used) != len(set(used)) or any(d[i, a] > r for i, a in enumerate(assign) if a is not None):
            continue
        count = len(used)
        total = sum(d[i, a] for i, a in enumerate(assign) if a is not None)
        if count > best[0] or (count == best[0] and total < best[1]):
            best = (count, total)
    return best


def greedy_matching_count(p, t, r):
    d = np.sqrt(((p[:, None] - t[None]) ** 2).sum(-1))
    pairs = sorted((d[i, j], i, j) for i in range(len(p)) for j in range(len(t)) if d[i, j] <= r)
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize("seed", range(40))
def test_matching_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(0, 6), rng.integers(0, 6)
    p = rng.uniform(0, 10, (n, 2))
    t = rng.uniform(0, 10, (m, 2))
    r = 3.0
    pairs, fp, fn = match_points(p, t, max_distance=r)
    count, total = brute_force_matching(p, t, r)
    assert len(pairs) == count
    if count:
        assert np.hypot(*(p[pairs[:, 0]] - t[pairs[:, 1]]).T).sum() == pytest.approx(total)
    # one-to-one, within the radius, and the rest unmatched
    assert len(set(pairs[:, 0])) == len(pairs) == len(set(pairs[:, 1]))
    assert np.all(np.hypot(*(p[pairs[:, 0]] - t[pairs[:, 1]]).T) <= r) if len(pairs) else True
    assert sorted([*pairs[:, 0], *fp]) == list(range(n))
    assert sorted([*pairs[:, 1], *fn]) == list(range(m))


def test_optimal_beats_greedy():
    # prediction 0 is nearest truth 0, but taking that pair leaves truth 1 and prediction 1 unmatched
    p = np.array([[1.0, 0.0], [-2.0, 0.0]])
    t = np.array([[0.0, 0.0], [3.0, 0.0]])
    assert greedy_matching_count(p, t, 2.5) == 1
    pairs, fp, fn = match_points(p, t, max_distance=2.5)
    assert pairs.tolist() == [[0, 1], [1, 0]] and fp.size == 0 and fn.size == 0
    m = detection_metrics(p, t, mpp=1.0, radius_um=2.5)
    assert (m.tp, m.fp, m.fn, m.f1) == (2, 0, 0, 1.0)


def test_matching_many_points_splits_into_groups():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 20000, (3000, 2))
    p = np.concatenate([t[:2000] + rng.normal(0, 5, (2000, 2)), rng.uniform(0, 20000, (500, 2))])
    pairs, fp, fn = match_points(p, t, max_distance=32)
    assert len(pairs) >= 2000 and len(pairs) + len(fn) == 3000 and len(pairs) + len(fp) == 2500


def test_distance_boundary_is_inclusive_and_inputs_checked():
    pairs, _, _ = match_points([[0, 0]], [[3, 4]], max_distance=5.0)
    assert len(pairs) == 1
    pairs, fp, fn = match_points(np.zeros((0, 2)), [[1, 1]], max_distance=1)
    assert pairs.shape == (0, 2) and fp.size == 0 and fn.tolist() == [0]
    df = pd.DataFrame({"x": [0.0], "y": [0.0], "score": [0.9]})
    assert len(match_points(df, df, max_distance=1)[0]) == 1
    with pytest.raises(ValueError, match=r"shape \(N, 2\).*\(3,\)"):
        match_points([1, 2, 3], [[0, 0]], max_distance=1)
    with pytest.raises(ValueError, match="max_distance"):
        match_points([[0, 0]], [[0, 0]], max_distance=0)
    with pytest.raises(ValueError, match="NaN"):
        match_points([[np.nan, 0]], [[0, 0]], max_distance=1)


# --------------------------------------------------------------------------- metrics


def test_radius_in_microns_uses_mpp():
    pred, true = [[0, 0]], [[20, 0]]  # 20 px apart
    assert detection_metrics(pred, true, mpp=0.25).tp == 1  # 5 um <= 8 um
    assert detection_metrics(pred, true, mpp=0.5).tp == 0  # 10 um > 8 um
    assert detection_metrics(pred, true, mpp=0.5, radius_um=10).tp == 1


def test_nan_conventions():
    none = detection_metrics(np.zeros((0, 2)), np.zeros((0, 2)), mpp=0.25)
    assert (none.tp, none.fp, none.fn) == (0, 0, 0)
    assert math.isnan(none.precision) and math.isnan(none.recall) and math.isnan(none.f1)
    no_pred = detection_metrics(np.zeros((0, 2)), [[1, 1]], mpp=0.25)
    assert math.isnan(no_pred.precision) and no_pred.recall == 0.0 and no_pred.f1 == 0.0
    no_true = detection_metrics([[1, 1]], np.zeros((0, 2)), mpp=0.25)
    assert no_true.precision == 0.0 and math.isnan(no_true.recall) and no_true.f1 == 0.0
    assert none.to_dict() == {"tp": 0, "fp": 0, "fn": 0, "precision": None, "recall": None, "f1": None}


def test_many_images_pool_counts():
    items = [
        ([[0, 0], [100, 100]], [[2, 0]]),  # tp 1, fp 1
        (np.zeros((0, 2)), [[5, 5], [50, 50]]),  # fn 2
        ([[7, 7]], np.zeros((0, 2))),  # fp 1
    ]
    total = detection_metrics_many(items, mpp=0.25)
    assert (total.tp, total.fp, total.fn) == (1, 2, 2)
    assert total == DetectionMetrics.from_counts(1, 2, 2)
    assert total.precision == pytest.approx(1 / 3) and total.recall == pytest.approx(1 / 3)
    assert total.f1 == pytest.approx(2 / (2 + 2 + 2))
    per_image = detection_metrics_many(items, mpp=[0.25, 0.25, 0.25])
    assert per_image == total
    with pytest.raises(ValueError, match="2 mpp values for 3 images"):
        detection_metrics_many(items, mpp=[0.25, 0.25])


# --------------------------------------------------------------------------- curves


@pytest.fixture(scope="module")
def detections():
    rng = np.random.default_rng(7)
    pred_rows, true_rows = [], []
    for image in range(6):
        truth = rng.uniform(0, 2000, (8, 2))
        true_rows += [(image, x, y) for x, y in truth]
        hits = truth[rng.random(8) < 0.7]
        for x, y in hits:
            pred_rows.append((image, x + rng.normal(0, 6), y + rng.normal(0, 6), rng.uniform(0.5, 1.0)))
        for x, y in rng.uniform(0, 2000, (6, 2)):
            pred_rows.append((image, x, y, rng.uniform(0.0, 0.8)))
    pred_rows.append((99, 5.0, 5.0, 0.9))  # an image without annotated mitoses
    preds = pd.DataFrame(pred_rows, columns=["image", "x", "y", "score"])
    truth = pd.DataFrame(true_rows, columns=["image", "x", "y"])
    return preds, truth


def test_curve_matches_pooled_metrics_and_recall_is_monotonic(detections):
    preds, truth = detections
    curve = f1_threshold_curve(preds, truth, mpp=0.25)
    assert list(curve.columns) == list(CURVE_COLUMNS)
    assert len(curve) == 101 and curve["threshold"].is_monotonic_increasing
    assert curve["recall"].is_monotonic_decreasing  # non-increasing in the threshold
    assert (curve["tp"] + curve["fn"] == len(truth)).all()
    for delta in (0.0, 0.37, 0.8, 1.0):
        row = curve.loc[np.isclose(curve["threshold"], round(delta, 2))].iloc[0]
        kept = preds.loc[preds["score"] >= row["threshold"]]
        items = [
            (kept.loc[kept["image"] == k, ["x", "y"]].to_numpy(), truth.loc[truth["image"] == k, ["x", "y"]].to_numpy())
            for k in sorted(set(preds["image"]) | set(truth["image"]))
        ]
        pooled = detection_metrics_many(items, mpp=0.25)
        assert (row["tp"], row["fp"], row["fn"]) == (pooled.tp, pooled.fp, pooled.fn)
        assert row["f1"] == pytest.approx(pooled.f1, nan_ok=True)
    # above every score: no predictions, precision undefined, recall 0
    last = f1_threshold_curve(preds, truth, mpp=0.25, thresholds=[2.0]).iloc[0]
    assert math.isnan(last["precision"]) and last["recall"] == 0 and last["fp"] == 0


def test_curve_inputs_checked(detections):
    preds, truth = detections
    with pytest.raises(ValueError, match="missing \\['score'\\]"):
        f1_threshold_curve(preds.drop(columns="score"), truth, mpp=0.25)
    custom = preds.rename(columns={"image": "slide", "score": "prob"})
    curve = f1_threshold_curve(
        custom, truth.rename(columns={"image": "slide"}), mpp=0.25, image_col="slide", score_col="prob",
        thresholds=[0.5],
    )
    assert len(curve) == 1


def test_plot_f1_curve_writes_a_png(detections, tmp_path):
    preds, truth = detections
    curve = f1_threshold_curve(preds, truth, mpp=0.25)
    out = plot_f1_curve(curve, tmp_path / "sub" / "f1.png")
    assert out == tmp_path / "sub" / "f1.png" and out.stat().st_size > 5000
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not list(out.parent.glob(".partial*"))
    with pytest.raises(ValueError, match="f1"):
        plot_f1_curve(curve.drop(columns="f1"), tmp_path / "x.png")


# --------------------------------------------------------------------------- agreement


def test_score_agreement_equals_sklearn_and_scipy():
    rng = np.random.default_rng(2)
    true = rng.integers(1, 4, 60)
    pred = np.clip(true + rng.integers(-1, 2, 60), 1, 3)
    out = score_agreement(true, pred)
    assert out["kappa_quadratic"] == pytest.approx(cohen_kappa_score(true, pred, weights="quadratic"))
    ref = spearmanr(true, pred)
    assert out["spearman_rho"] == pytest.approx(ref.statistic) and out["spearman_p"] == pytest.approx(ref.pvalue)
    assert out["n"] == 60
    # proliferation scores (continuous): Spearman only
    a, b = rng.normal(size=40), rng.normal(size=40)
    cont = score_agreement(a, a + 0.5 * b)
    assert math.isnan(cont["kappa_quadratic"])
    assert cont["spearman_rho"] == pytest.approx(spearmanr(a, a + 0.5 * b).statistic)


def test_score_agreement_grade_scale_and_degenerate_cases():
    # grades 1 and 3 only: the default scale 1..3 keeps them two steps apart
    true, pred = [1, 3, 3, 1], [1, 1, 3, 3]
    out = score_agreement(true, pred)
    assert out["kappa_quadratic"] == pytest.approx(cohen_kappa_score(true, pred, labels=[1, 2, 3], weights="quadratic"))
    same = score_agreement([2, 2, 2], [2, 2, 2])
    assert math.isnan(same["kappa_quadratic"]) and math.isnan(same["spearman_rho"])
    with pytest.raises(ValueError, match="same length"):
        score_agreement([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        score_agreement([1.0, np.nan], [1, 2])

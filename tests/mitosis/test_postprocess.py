"""histoscope.mitosis.postprocess: probability map -> detections (Tellez et al. 2018)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histoscope.mitosis.postprocess import (
    DEFAULT_MAP_THRESHOLD,
    DETECTION_COLUMNS,
    detections_from_map,
    suppress_close,
)

MPP = 0.25


def blob_map(shape, blobs, sigma=1.5):
    """Sum-free map of Gaussian bumps: max over blobs of peak * exp(-r^2 / 2 sigma^2)."""
    h, w = shape
    ii, jj = np.mgrid[:h, :w].astype(np.float64)
    out = np.zeros(shape)
    for (i, j), peak in blobs:
        out = np.maximum(out, peak * np.exp(-((ii - i) ** 2 + (jj - j) ** 2) / (2 * sigma**2)))
    return out


def brute_force_nms(xy, score, d):
    order = np.argsort(-score, kind="stable")
    kept = []
    for i in order:
        if all(np.hypot(*(xy[i] - xy[k])) >= d for k in kept):
            kept.append(i)
    return sorted(kept)


def test_two_blobs_two_detections_at_their_centres():
    prob = blob_map((64, 80), [((10, 12), 0.95), ((40, 60), 0.9)])
    det = detections_from_map(prob, stride=4, origin=(16, 16), mpp=MPP)
    assert list(det.columns) == list(DETECTION_COLUMNS)
    assert len(det) == 2
    # x = origin_x + j * stride, y = origin_y + i * stride; highest score first
    expected = [[16 + 12 * 4, 16 + 10 * 4], [16 + 60 * 4, 16 + 40 * 4]]
    np.testing.assert_allclose(det[["x", "y"]].to_numpy(), expected, atol=1e-9)
    np.testing.assert_allclose(det["prob"], [0.95, 0.9])


def test_centroid_is_probability_weighted_and_argmax_is_the_peak():
    prob = np.zeros((10, 10))
    prob[4, 3:6] = [0.85, 0.9, 0.99]  # one component, peak at its right end
    cen = detections_from_map(prob, stride=2, mpp=MPP)
    arg = detections_from_map(prob, stride=2, mpp=MPP, position="argmax")
    expected_j = (3 * 0.85 + 4 * 0.9 + 5 * 0.99) / (0.85 + 0.9 + 0.99)
    assert cen["x"].iloc[0] == pytest.approx(2 * expected_j)
    assert cen["y"].iloc[0] == pytest.approx(8.0)
    assert (arg["x"].iloc[0], arg["y"].iloc[0]) == (10.0, 8.0)
    assert cen["prob"].iloc[0] == arg["prob"].iloc[0] == pytest.approx(0.99)


def test_blobs_closer_than_d_merge_into_the_higher_one():
    # separate components 6 map px apart: 24 px = 6 um at 0.25 um/px, below d = 25 um
    prob = blob_map((30, 40), [((15, 10), 0.9), ((15, 16), 0.97)], sigma=1.0)
    assert prob[15, 13] < DEFAULT_MAP_THRESHOLD  # really two components
    det = detections_from_map(prob, stride=4, mpp=MPP)
    assert len(det) == 1
    assert det["x"].iloc[0] == pytest.approx(64.0) and det["prob"].iloc[0] == pytest.approx(0.97)
    # without suppression (or with a smaller d) both stay
    assert len(detections_from_map(prob, stride=4, mpp=MPP, min_distance_um=0)) == 2
    assert len(detections_from_map(prob, stride=4, mpp=MPP, min_distance_um=5)) == 2


def test_thresholds_respected():
    prob = blob_map((40, 80), [((20, 10), 0.75), ((20, 40), 0.85), ((20, 70), 0.95)])
    det = detections_from_map(prob, stride=1, mpp=1.0)
    np.testing.assert_allclose(det["prob"], [0.95, 0.85])  # the 0.75 blob is below the map threshold
    assert len(detections_from_map(prob, stride=1, mpp=1.0, threshold=0.7)) == 3
    high = detections_from_map(prob, stride=1, mpp=1.0, detection_threshold=0.9)
    assert high["prob"].tolist() == pytest.approx([0.95])
    # a component that touches the threshold exactly is kept (>=)
    exact = np.zeros((5, 5))
    exact[2, 2] = 0.8
    assert len(detections_from_map(exact, stride=1, mpp=1.0)) == 1


def test_diagonal_pixels_form_one_component():
    prob = np.zeros((6, 6))
    prob[1, 1] = prob[2, 2] = 0.9
    assert len(detections_from_map(prob, stride=1, mpp=1.0, min_distance_um=0)) == 1


def test_empty_map_gives_empty_table_with_columns():
    for prob in (np.zeros((20, 20)), np.full((5, 7), np.nan), np.zeros((0, 0))):
        det = detections_from_map(prob, stride=8, mpp=MPP)
        assert det.empty and list(det.columns) == list(DETECTION_COLUMNS)
        assert all(det[c].dtype == np.float64 for c in DETECTION_COLUMNS)


def test_nan_marks_no_prediction():
    prob = blob_map((20, 20), [((10, 10), 0.95)])
    prob[:, :3] = np.nan
    assert len(detections_from_map(prob, stride=2, mpp=MPP)) == 1


@pytest.mark.parametrize(
    "prob, kwargs, error, match",
    [
        ([[0.9]], {}, TypeError, "numpy array"),
        (np.zeros((4, 4, 1)), {}, ValueError, "2-D"),
        (np.full((4, 4), 1.5), {}, ValueError, r"\[0, 1\].*1\.5"),
        (np.zeros((4, 4), bool), {}, TypeError, "dtype bool"),
        (np.zeros((4, 4)), {"stride": 0}, ValueError, "stride"),
        (np.zeros((4, 4)), {"threshold": 2}, ValueError, "threshold"),
        (np.zeros((4, 4)), {"position": "peak"}, ValueError, "position"),
    ],
)
def test_bad_inputs(prob, kwargs, error, match):
    kw = {"stride": 4, "mpp": MPP, **kwargs}
    with pytest.raises(error, match=match):
        detections_from_map(prob, **kw)


@pytest.mark.parametrize("seed", range(5))
def test_suppress_close_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 60
    df = pd.DataFrame(
        {"x": rng.uniform(0, 200, n), "y": rng.uniform(0, 200, n), "prob": rng.random(n), "tag": np.arange(n)}
    )
    out = suppress_close(df, min_distance_px=25.0)
    expected = brute_force_nms(df[["x", "y"]].to_numpy(), df["prob"].to_numpy(), 25.0)
    assert out["tag"].tolist() == expected  # kept rows, input order, other columns kept
    assert list(out.index) == list(range(len(out)))


def test_suppress_close_is_strict_and_keeps_ties_in_row_order():
    df = pd.DataFrame({"x": [0.0, 10.0, 20.0], "y": [0.0, 0.0, 0.0], "score": [0.5, 0.5, 0.5]})
    assert len(suppress_close(df, min_distance_px=10.0, score="score")) == 3  # exactly d apart: kept
    out = suppress_close(df, min_distance_px=10.5, score="score")
    assert out["x"].tolist() == [0.0, 20.0]  # the first row wins the tie and suppresses the second
    with pytest.raises(ValueError, match="prob"):
        suppress_close(df, min_distance_px=1)
    with pytest.raises(ValueError, match="min_distance_px"):
        suppress_close(df, min_distance_px=-1, score="score")

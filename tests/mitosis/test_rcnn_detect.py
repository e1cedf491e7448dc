"""MITOS-RCNN detection (mitosis/rcnn.py) and training (train/rcnn.py) on real crops and fields:
the detector's output structure, sub-images, merging, the evaluation protocol, and a tiny model
that learns a couple of real crops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from histoscope.mitosis.rcnn import boxes_to_detections, detect_boxes, detect_mitoses_rcnn, evaluate_rcnn_detection


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


def _tiny(variant: str = "cascade", stain: str | None = None):
    from histoscope.models import create_model

    torch.manual_seed(0)
    return create_model("mitos_rcnn", num_classes=2, variant=variant, width=0.125, stain=stain)


def test_boxes_to_detections_merges_close_boxes():
    boxes = pd.DataFrame({"x1": [0, 4, 200], "y1": [0, 0, 0], "x2": [32, 36, 232], "y2": [32, 32, 32], "score": [0.6, 0.9, 0.7]})
    det = boxes_to_detections(boxes, min_distance_px=100)
    assert det[["x", "y", "prob"]].values.tolist() == [[20.0, 16.0, 0.9], [216.0, 16.0, 0.7]]
    assert boxes_to_detections(boxes.iloc[:0], min_distance_px=10).columns.tolist() == ["x", "y", "prob"]


def test_detect_on_a_field_uses_16_subimages(monkeypatch, rng):
    import histoscope.mitosis.rcnn as mod

    calls = []
    real = mod.detect_boxes

    def spy(model, images, **kw):
        calls.extend(im.shape for im in images)
        return real(model, images, **kw)

    monkeypatch.setattr(mod, "detect_boxes", spy)
    field = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    res = detect_mitoses_rcnn(field, _tiny("conv4"), slide_mpp=0.25, mask=None, detection_threshold=0.0, grade=False)
    assert calls == [(288, 288, 3)] * 16
    assert res.dense is None and list(res.detections.columns) == ["x", "y", "prob"] and "MITOS-RCNN" in res.timings
    if len(res.detections):
        assert res.detections["prob"].is_monotonic_decreasing
        xy = res.detections[["x", "y"]].to_numpy()
        d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
        assert (d[np.triu_indices(len(xy), 1)] >= 100).all()  # merged closer than 25 um
    calls.clear()
    detect_mitoses_rcnn(field[:128, :128], _tiny("conv4"), slide_mpp=0.25, mask=None, grade=False)
    assert calls == [(128, 128, 3)]  # a crop smaller than a sub-image runs whole, unpadded
    with pytest.raises(TypeError, match="expected a MITOS-RCNN model"):
        detect_boxes(torch.nn.Linear(2, 2), [field])


def test_detect_gives_a_hotspot_and_grade(rng):
    field = rng.integers(0, 256, (600, 700, 3), dtype=np.uint8)
    res = detect_mitoses_rcnn(field, _tiny("conv5"), slide_mpp=0.25, mask=None, detection_threshold=0.0)
    s = res.summary()
    assert s["grade"] in (1, 2, 3) and s["mitoses_per_10hpf"] is not None and s["detections"] == len(res.detections)


@pytest.fixture(scope="module")
def small_data():
    """The real data with a few test crops and one test MoNuSeg field (the split as the dense detector's)."""
    from conftest import shared_path
    from histoscope.datasets.mitosis import MitosisData, mitosis_samples

    d = mitosis_samples(shared_path("."), seed=0)
    s = d.samples
    crops = sorted(set(s.loc[(s["split"] == "test") & (s["kind"] == "mitosis"), "item"]))[:6]
    field = sorted(set(s.loc[(s["split"] == "test") & s["kind"].str.startswith("monuseg"), "item"]))[:1]
    return MitosisData(d.images, s[s["item"].isin(crops + field)].reset_index(drop=True))


@pytest.mark.shared_data
def test_evaluation_protocol_counts(small_data):
    from histoscope.metrics.detection import match_points

    ev = evaluate_rcnn_detection(_tiny("conv4"), small_data, thresholds=np.array([0.0, 0.5]))
    assert ev["n_amibr"] == 6 and ev["n_monuseg"] == 1 and ev["monuseg_area_mm2"] == pytest.approx(936 * 936 * 0.0625 / 1e6)
    c = ev["curve"].set_index("threshold")
    pred = ev["predictions"]
    # within the scored region only (32 px from every border, as the dense CNN's half patch)
    assert ((pred["x"] >= 32) & (pred["y"] >= 32)).all()
    row = c.loc[0.0]
    assert row["tp"] + row["fn"] == 6  # one mitosis per crop
    tp = 0
    for item, g in pred[pred["kind"] == "amibr"].groupby("image"):
        tp += len(match_points(g[["x", "y"]].to_numpy(), np.array([[64.0, 64.0]]), max_distance=32.0)[0])
    assert row["tp"] == tp and row["fp"] == len(pred) - tp  # every MoNuSeg detection is a false positive


@pytest.mark.shared_data
def test_tiny_model_learns_two_real_crops(small_data, tmp_path):
    """A width-1/8 cascade model, 120 SGD steps of 2 images on two real AMi-Br crops (windows, rotations):
    its best detection on each crop is the mitosis, within 8 um."""
    from PIL import Image

    from histoscope.datasets.mitosis_boxes import BoxImage
    from histoscope.train.rcnn import RcnnTrainConfig, train_rcnn

    table = small_data.images.table
    items = sorted(set(small_data.samples.loc[small_data.samples["kind"] == "mitosis", "item"]))[:2]
    crops = [np.asarray(Image.open(table.loc[i, "image"]).convert("RGB")) for i in items]
    imgs = [BoxImage(c, np.array([[64.0, 64.0]]), "amibr", int(i)) for c, i in zip(crops, items)]
    cfg = RcnnTrainConfig(variant="cascade", width=0.125, epochs=1, iterations=120, batch_size=2, lr=0.02, warmup=10, stain=None, seed=0)
    res = train_rcnn(small_data, cfg, tmp_path, verbose=False, train_images=imgs, validate=False)
    assert res["history"]["train_loss"].iloc[0] > 0 and (tmp_path / "best.pt").is_file()
    for crop, boxes in zip(crops, detect_boxes(res["model"], crops)):
        top = boxes.sort_values("score", ascending=False).iloc[0]
        cx, cy = (top["x1"] + top["x2"]) / 2, (top["y1"] + top["y2"]) / 2
        assert np.hypot(cx - 64, cy - 64) * 0.25 <= 8.0 and top["score"] > 0.5, top


@pytest.mark.shared_data
def test_bundled_model_finds_real_test_mitoses(small_data):
    """The bundled mitosis_rcnn (sha256-checked) on held-out test crops: its threshold comes from its card."""
    from histoscope.models.pretrained import list_pretrained, load_pretrained

    if "mitosis_rcnn" not in list_pretrained():
        pytest.skip("the bundled mitosis_rcnn is not trained yet")
    model = load_pretrained("mitosis_rcnn")
    assert model.variant == "cascade" and 0 < model.card["detection_threshold"] < 1
    table = small_data.images.table
    items = sorted(set(small_data.samples.loc[small_data.samples["kind"] == "mitosis", "item"]))
    found = 0
    for item in items:
        res = detect_mitoses_rcnn(table.loc[item, "image"], model, slide_mpp=0.25, mask=None, grade=False)
        found += bool(len(res.detections)) and np.hypot(res.detections["x"].iloc[0] - 64, res.detections["y"].iloc[0] - 64) * 0.25 <= 8
    assert found >= len(items) - 1, f"{found} of {len(items)} test mitoses found"

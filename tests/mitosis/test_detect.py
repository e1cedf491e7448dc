"""Whole-slide mitosis detection end to end: dense map -> detections -> hotspot/grade, the CLI, and the bundled detector on real crops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from histoscope.cli.main import cli
from histoscope.infer.dense import dense_map
from histoscope.mitosis import detect_mitoses, detections_from_map
from histoscope.models import create_model
from histoscope.models.pretrained import list_pretrained, load_pretrained
from histoscope.report import read_point_geojson


def _calibrated_net(seed: int = 0) -> torch.nn.Module:
    """A random mitosis CNN whose batch-norm statistics come from one pass (else it outputs a constant)."""
    torch.manual_seed(seed)
    m = create_model("mitosis_cnn", num_classes=2, input_size=64, mpp=0.25, width=0.25)
    m.train()
    with torch.no_grad():
        m(torch.rand(32, 3, 64, 64))
    return m.eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((320, 400, 3), 225, np.uint8)
    yy, xx = np.mgrid[:320, :400]
    for cx, cy in rng.uniform(40, 280, (12, 2)):
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 60] = (60, 30, 90)  # dark purple blobs
    return np.clip(img.astype(int) + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)


def test_detections_are_the_post_processed_dense_map(image):
    net = _calibrated_net()
    dm = dense_map(image, net, slide_mpp=0.25)
    t = float(np.quantile(dm.probs, 0.9))  # a random network: threshold where some blobs pass
    res = detect_mitoses(image, net, slide_mpp=0.25, threshold=t, mask=None)
    np.testing.assert_allclose(np.asarray(res.dense.probs), dm.probs, atol=1e-6)
    expected = detections_from_map(dm.probs, stride=dm.stride_px, origin=dm.origin_px, mpp=0.25, threshold=t)
    assert len(expected) >= 2
    pd.testing.assert_frame_equal(res.detections.reset_index(drop=True), expected.reset_index(drop=True))
    s = res.summary()
    assert s["detections"] == len(expected)
    assert s["grade"] in (1, 2, 3) and s["mitotic_category"] in ("low", "moderate", "severe")
    assert s["proliferation_score"] == s["hotspot_count"]
    assert set(res.timings) >= {"dense inference", "detections", "hotspot"}


def test_unknown_model_is_a_clear_error(image):
    with pytest.raises(ValueError, match="no model 'nope'"):
        detect_mitoses(image, "nope", slide_mpp=0.25)


def test_cli_writes_csv_geojson_summary_and_overlay(tmp_path, image):
    from PIL import Image

    net = _calibrated_net()
    t = float(np.quantile(dense_map(image, net, slide_mpp=0.25).probs, 0.9))
    ck = tmp_path / "net.pt"
    torch.save({"model": net.state_dict(), "config": net.config.to_dict()}, ck)
    src = tmp_path / "field.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["detect", "mitosis", str(src), "--model", str(ck), "--slide-mpp", "0.25", "--threshold", f"{t:.6f}", "--no-mask", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    d = out / "field"
    table = pd.read_csv(d / "detections.csv")
    geo = read_point_geojson(d / "detections.geojson")
    assert len(table) >= 2 and len(table) == len(geo) and (geo["name"] == "Mitosis").all()
    np.testing.assert_allclose(geo[["x", "y", "prob"]].to_numpy(), table[["x", "y", "prob"]].to_numpy())
    summary = json.loads((d / "summary.json").read_text())
    assert summary["detections"] == len(table)
    assert (d / "detections.png").is_file() and (d / "prob-map.zarr").exists()
    assert not list(out.glob(".*partial"))
    # no resolution: one clear line, nothing half-written
    r = CliRunner().invoke(cli, ["detect", "mitosis", str(src), "--model", str(ck), "--out", str(tmp_path / "o2")])
    assert r.exit_code != 0 and "--slide-mpp" in r.output


needs_detector = pytest.mark.skipif("mitosis_detector" not in list_pretrained(), reason="the bundled mitosis_detector is not trained yet")


@needs_detector
def test_bundled_detector_finds_held_out_mitoses_and_ignores_corners(shared):
    """On test-patient AMi-Br crops, the detector fires within 8 um of the centre far more often than elsewhere."""
    from histoscope.datasets.mitosis import mitosis_samples
    from histoscope.mitosis.detect import evaluate_detection
    from histoscope.datasets.mitosis import MitosisData

    data = mitosis_samples(shared(), seed=0)
    s = data.samples
    test = s[s["split"] == "test"]
    keep = set(test.loc[test["kind"] == "mitosis", "item"].iloc[:40])
    small = MitosisData(data.images, s[(s["split"] != "test") | s["item"].isin(keep)].reset_index(drop=True))
    model = load_pretrained("mitosis_detector")
    res = evaluate_detection(model, small, thresholds=np.array([0.5, 0.8]))
    at = res["at_0.8"]
    assert res["n_amibr"] == 40
    assert at["recall"] >= 0.5, at
    assert at["precision"] >= 0.5, at


def test_batched_crops_equal_dense_map(shared):
    """evaluate_detection's batched path gives dense_map's numbers on real AMi-Br crops."""
    from PIL import Image

    from histoscope.mitosis.detect import dense_crops

    paths = sorted(shared("mitosis", "amibr_128", "normal").glob("*.png"))[:3]
    crops = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    net = _calibrated_net(1)
    maps = dense_crops(net, crops, batch_size=2)
    for crop, pm in zip(crops, maps):
        dm = dense_map(crop, net, slide_mpp=0.25, tile=128)
        assert dm.origin_px == (0.0, 0.0) and dm.stride_px == net.stride
        np.testing.assert_allclose(pm, np.asarray(dm.probs)[: pm.shape[0], : pm.shape[1]], atol=1e-5)
        assert pm.shape == dm.shape

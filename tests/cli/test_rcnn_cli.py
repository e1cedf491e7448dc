"""``histoscope train rcnn`` and ``histoscope detect mitosis --detector rcnn``, run as a user runs them:
one training step on the real data, detection on a real MoNuSeg field, and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from histoscope.cli.main import cli


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.shared_data
def test_train_one_step_then_detect_on_a_real_field(shared, tmp_path):
    data = shared(".")
    r = run("train", "rcnn", data, "--variant", "conv4", "--width", "0.125", "--epochs", "1", "--iterations", "1", "--batch-size", "2", "--monuseg-fraction", "0.5", "--stain-normalize", "none", "--no-eval", "--out", tmp_path / "run", "--export", tmp_path / "bundle" / "mine.pt", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "best.pt").is_file() and "no evaluation" in r.output
    card = (tmp_path / "bundle" / "mine.md").read_text()
    assert "1 epochs of 1 steps x 2 images (1 of them MoNuSeg sub-images" in card and "the last epoch (no validation)" in card
    field = sorted((data / "monuseg" / "images").glob("*.png"))[0]
    r = run("detect", "mitosis", field, "--detector", "rcnn", "--model", tmp_path / "run" / "best.pt", "--slide-mpp", "0.25", "--detection-threshold", "0", "--out", tmp_path / "det", "-q")
    assert r.exit_code == 0, r.output
    out = tmp_path / "det" / field.stem
    assert {p.name for p in out.iterdir()} == {"detections.csv", "detections.geojson", "detections.png", "summary.json"}
    det = pd.read_csv(out / "detections.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert list(det.columns) == ["x", "y", "prob"] and summary["detections"] == len(det)
    assert "MITOS-RCNN" in summary["timings_s"] and summary["mitotic_category"] in ("low", "moderate", "severe")
    assert len(json.loads((out / "detections.geojson").read_text())["features"]) == len(det)


def test_wrong_variant_is_one_clear_error(tmp_path):
    r = run("train", "rcnn", tmp_path, "--variant", "conv6")
    assert r.exit_code == 2 and "Invalid value for '--variant': 'conv6' is not one of 'conv5', 'conv4', 'cascade'" in r.output


def test_monuseg_fraction_must_leave_room_for_mitoses(tmp_path):
    r = run("train", "rcnn", tmp_path, "--monuseg-fraction", "1")
    assert r.exit_code == 2 and "--monuseg-fraction" in r.output and "0<=x<1" in r.output


def test_missing_or_wrong_data_folder(tmp_path):
    r = run("train", "rcnn", tmp_path / "nowhere")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = run("train", "rcnn", tmp_path)
    assert r.exit_code == 2 and "no such AMi-Br label table" in r.output and "Traceback" not in r.output


def test_detect_refuses_a_model_that_is_not_an_rcnn(tmp_path, rng):
    import numpy as np
    from PIL import Image

    img = tmp_path / "field.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(img)
    r = run("detect", "mitosis", img, "--detector", "rcnn", "--model", tmp_path / "missing.pt", "--slide-mpp", "0.25", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "no model" in r.output and "missing.pt" in r.output
    from histoscope.models.pretrained import list_pretrained

    if "mitosis_detector" in list_pretrained():
        r = run("detect", "mitosis", img, "--detector", "rcnn", "--model", "mitosis_detector", "--slide-mpp", "0.25", "--out", tmp_path / "o")
        assert r.exit_code == 2 and "not a MITOS-RCNN model (use --detector dense for it)" in r.output

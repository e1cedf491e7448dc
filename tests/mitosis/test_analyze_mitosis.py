"""`histoscope analyze` with the bundled mitosis detector: detections, GeoJSON, hotspot and grade in the report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from histoscope.models.pretrained import list_pretrained
from histoscope.report import read_point_geojson

pytestmark = pytest.mark.skipif("mitosis_detector" not in list_pretrained(), reason="the bundled mitosis_detector is not trained yet")


@pytest.mark.parametrize("mode", ["candidates", "dense"])
def test_analyze_reports_mitoses_on_a_40x_slide(tmp_path, mode):
    from histoscope.analyze import AnalysisConfig, analyze_slide
    from histoscope.datasets import synthetic_slide

    info = synthetic_slide(tmp_path / "s.tiff", width=1536, height=1280, mpp=0.25, seed=2, n_mitoses=4, verbose=False)
    summary = analyze_slide(info.path, tmp_path / "out", config=AnalysisConfig(tissue_model=None, mitosis_mode=mode))
    folder = tmp_path / "out" / "s"
    det = pd.read_csv(folder / "detections.csv")
    geo = read_point_geojson(folder / "detections.geojson")
    assert len(det) == len(geo) == summary["mitosis"]["detections"]
    if "mitosis_atypical" in list_pretrained() and len(det):
        assert det["p_atypical"].between(0, 1).all()
        assert geo["p_atypical"].to_numpy() == pytest.approx(det["p_atypical"].to_numpy())
    assert summary["mitosis"]["grade"] in (1, 2, 3)
    assert summary["mitosis"]["mitotic_category"] in ("low", "moderate", "severe")
    assert (folder / "mitoses.png").is_file()
    assert (folder / "mitosis-prob.zarr").exists() == (mode == "dense")
    html = (folder / "report.html").read_text()
    assert "Mitoses" in html and "hotspot count" in html
    assert json.loads((folder / "summary.json").read_text())["mitosis"]["detections"] == len(det)


def test_analyze_skips_mitoses_on_a_20x_slide_and_says_why(tmp_path):
    from histoscope.analyze import AnalysisConfig, analyze_slide
    from histoscope.datasets import synthetic_slide

    info = synthetic_slide(tmp_path / "s.tiff", width=1024, height=768, mpp=0.5, seed=2, n_mitoses=1, verbose=False)
    summary = analyze_slide(info.path, tmp_path / "out", config=AnalysisConfig(tissue_model=None))
    assert "mitosis" not in summary
    assert any("40x" in w for w in summary["warnings"])

"""GeoJSON for QuPath: classified point detections with measurements, written atomically."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from histoscope.report import points_feature_collection, read_point_geojson, write_geojson


def test_round_trip_and_qupath_fields(tmp_path):
    t = pd.DataFrame({"x": [10.5, 200.0], "y": [3.0, 40.25], "prob": [0.91, 0.85]})
    fc = points_feature_collection(t, name="Mitosis", color=(1, 2, 3))
    f = fc["features"][0]
    assert fc["type"] == "FeatureCollection" and f["geometry"] == {"type": "Point", "coordinates": [10.5, 3.0]}
    assert f["properties"]["objectType"] == "detection"
    assert f["properties"]["classification"] == {"name": "Mitosis", "color": [1, 2, 3]}
    assert f["properties"]["measurements"] == {"prob": 0.91}
    p = write_geojson(fc, tmp_path / "d.geojson")
    assert json.loads(p.read_text()) == fc and not list(tmp_path.glob(".*partial"))
    back = read_point_geojson(p)
    pd.testing.assert_frame_equal(back[["x", "y", "prob"]], t)


def test_bad_tables_and_files_are_explained(tmp_path):
    with pytest.raises(ValueError, match="x and y"):
        points_feature_collection(pd.DataFrame({"a": [1]}), name="x")
    bad = tmp_path / "b.geojson"
    bad.write_text(json.dumps({"type": "Feature"}))
    with pytest.raises(ValueError, match="not a GeoJSON FeatureCollection"):
        read_point_geojson(bad)

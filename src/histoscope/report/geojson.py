"""GeoJSON FeatureCollections that QuPath imports (File > Import objects), and back.

QuPath reads a Feature's ``properties.objectType`` (``"detection"`` or ``"annotation"``),
``properties.classification`` (``{"name": ..., "color": [r, g, b]}``) and
``properties.measurements`` (a name -> number mapping); coordinates are level-0 pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["points_feature_collection", "write_geojson", "read_point_geojson"]


def points_feature_collection(
    table: pd.DataFrame,
    *,
    name: str,
    color: Sequence[int] = (213, 94, 0),
    measurements: Sequence[str] = ("prob",),
    object_type: str = "detection",
) -> dict[str, Any]:
    """Points (``x``, ``y`` in level-0 px) as a FeatureCollection of classified QuPath objects."""
    if not {"x", "y"} <= set(table.columns):
        raise ValueError(f"a point table needs x and y columns, got {list(table.columns)}")
    rgb = [int(c) for c in color]
    feats = []
    for rec in table.to_dict("records"):
        meas = {m: float(rec[m]) for m in measurements if m in rec and rec[m] is not None and np.isfinite(rec[m])}
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(rec["x"]), float(rec["y"])]},
                "properties": {"objectType": object_type, "classification": {"name": name, "color": rgb}, "measurements": meas},
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(collection: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically (temporary name, then rename): a half-written file never looks complete."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    tmp.write_text(json.dumps(collection))
    os.replace(tmp, p)
    return p


def read_point_geojson(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Point features back as a table: ``x``, ``y``, ``name`` and one column per measurement."""
    data = json.loads(Path(path).read_text())
    if data.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    rows = []
    for f in data["features"]:
        if f.get("geometry", {}).get("type") != "Point":
            continue
        x, y = f["geometry"]["coordinates"][:2]
        props = f.get("properties", {})
        rows.append({"x": x, "y": y, "name": props.get("classification", {}).get("name"), **props.get("measurements", {})})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["x", "y", "name"])

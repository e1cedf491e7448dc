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

__all__ = [
    "points_feature_collection",
    "tiles_feature_collection",
    "circle_feature",
    "write_geojson",
    "read_point_geojson",
]


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


def tiles_feature_collection(
    table: pd.DataFrame,
    classes: Sequence[str],
    *,
    colours: Sequence[Sequence[int]],
    regions: bool = True,
) -> dict[str, Any]:
    """Classified tiles as QuPath objects: one ``tile`` per row, plus one region per class.

    Parameters
    ----------
    table : pandas.DataFrame
        A tile table (level-0 ``x``, ``y``, ``w0``, ``h0``) with ``pred`` (class index) and
        ``prob_<class>`` columns, as :func:`histoscope.infer.classify_tiles` returns.
    classes, colours :
        Class names in output order and their RGB colours.
    regions : bool
        Also add one ``annotation`` per predicted class: the union of its tiles (a
        MultiPolygon, merged with Shapely), with its area in level-0 px^2 and tile count.

    Returns
    -------
    dict
        A GeoJSON FeatureCollection (coordinates in level-0 pixels).
    """
    need = {"x", "y", "w0", "h0", "pred"}
    if not need <= set(table.columns):
        raise ValueError(f"a classified tile table needs {sorted(need)}, got {list(table.columns)}")
    cols = [f"prob_{c}" for c in classes]
    feats: list[dict[str, Any]] = []
    if regions and len(table):
        import shapely
        from shapely.geometry import mapping

        for k, name in enumerate(classes):
            sub = table[table["pred"] == k]
            if sub.empty:
                continue
            x, y = sub["x"].to_numpy(float), sub["y"].to_numpy(float)
            boxes = shapely.box(x, y, x + sub["w0"].to_numpy(float), y + sub["h0"].to_numpy(float))
            union = shapely.union_all(boxes)
            feats.append(
                {
                    "type": "Feature",
                    "geometry": mapping(union),
                    "properties": {
                        "objectType": "annotation",
                        "name": f"{name} region",
                        "classification": {"name": name, "color": [int(c) for c in colours[k % len(colours)]]},
                        "measurements": {"tiles": float(len(sub)), "area_px2": float(union.area)},
                    },
                }
            )
    for rec in table[["x", "y", "w0", "h0", "pred", *cols]].itertuples(index=False):
        x, y, w, h, k = (int(v) for v in rec[:5])
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "tile",
                    "classification": {"name": classes[k], "color": [int(c) for c in colours[k % len(colours)]]},
                    "measurements": {c: round(float(v), 5) for c, v in zip(cols, rec[5:])},
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def circle_feature(
    centre_xy: Sequence[float],
    radius: float,
    *,
    name: str,
    color: Sequence[int] = (0, 114, 178),
    measurements: dict[str, float] | None = None,
    vertices: int = 72,
) -> dict[str, Any]:
    """A circle (level-0 centre and radius) as a polygon annotation, e.g. the mitotic hotspot."""
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    ring = np.stack([centre_xy[0] + radius * np.cos(t), centre_xy[1] + radius * np.sin(t)], 1).round(1).tolist()
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
        "properties": {
            "objectType": "annotation",
            "name": name,
            "classification": {"name": name, "color": [int(c) for c in color]},
            "measurements": {k: float(v) for k, v in (measurements or {}).items()},
        },
    }


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

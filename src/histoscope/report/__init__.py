"""Reports: overlays, plots, GeoJSON for QuPath and the self-contained HTML report."""

from .geojson import circle_feature, points_feature_collection, read_point_geojson, tiles_feature_collection, write_geojson
from .html import Link, write_report
from .overlay import CLASS_COLOUR_NAMES, CLASS_COLOURS, draw_class_map, draw_detections, draw_tiles, overlay_mask

__all__ = [
    "write_report",
    "Link",
    "tiles_feature_collection",
    "circle_feature",
    "overlay_mask",
    "draw_tiles",
    "draw_class_map",
    "draw_detections",
    "CLASS_COLOURS",
    "CLASS_COLOUR_NAMES",
    "points_feature_collection",
    "write_geojson",
    "read_point_geojson",
]

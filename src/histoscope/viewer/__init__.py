"""The slide viewer of ``histoscope view``: OpenSeadragon over Deep Zoom tiles, with the analysis overlays."""

from .app import MAX_DETECTIONS, OPENSEADRAGON_VERSION, ViewerData, create_viewer_app, find_openseadragon

__all__ = ["ViewerData", "create_viewer_app", "find_openseadragon", "OPENSEADRAGON_VERSION", "MAX_DETECTIONS"]

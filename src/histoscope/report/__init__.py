"""Reports: overlays, plots and the self-contained HTML report."""

from .html import write_report
from .overlay import CLASS_COLOUR_NAMES, CLASS_COLOURS, draw_class_map, draw_tiles, overlay_mask

__all__ = ["write_report", "overlay_mask", "draw_tiles", "draw_class_map", "CLASS_COLOURS", "CLASS_COLOUR_NAMES"]

"""Reports: overlays, plots and the self-contained HTML report."""

from .html import write_report
from .overlay import draw_tiles, overlay_mask

__all__ = ["write_report", "overlay_mask", "draw_tiles"]

"""Overlays drawn on slide thumbnails: masks and tile outlines."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..slide.mask import Mask

__all__ = ["overlay_mask", "draw_tiles", "draw_class_map", "draw_detections", "CLASS_COLOURS", "CLASS_COLOUR_NAMES"]


def overlay_mask(
    thumbnail: np.ndarray,
    mask: Mask,
    *,
    color: tuple[int, int, int] = (0, 170, 80),
    dim: float = 0.45,
    outline: int | None = None,
) -> np.ndarray:
    """Outline ``mask`` on ``thumbnail`` (HxWx3 uint8) and dim what lies outside it.

    The inside keeps its true colours (a pathologist judges the tissue, not a tint). The
    low-resolution mask is upsampled smoothly (bilinear, then thresholded at 0.5) so its
    outline follows the tissue rather than the mask's pixel grid.
    """
    from scipy import ndimage as ndi

    h, w = thumbnail.shape[:2]
    soft = Image.fromarray(mask.array.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR)
    inside = np.asarray(soft) >= 0.5
    out = thumbnail.astype(np.float32)
    out[~inside] = out[~inside] * (1 - dim) + np.float32(90) * dim
    if outline is None:
        outline = max(2, round(max(h, w) / 400))
    if outline:
        edge = inside & ~ndi.binary_erosion(inside, iterations=outline)
        out[edge] = np.asarray(color, np.float32)
    return out.round().astype(np.uint8)


def draw_tiles(
    thumbnail: np.ndarray,
    table: pd.DataFrame,
    *,
    slide_dimensions: tuple[int, int],
    color: tuple[int, int, int] = (20, 70, 230),
    width: int | None = None,
) -> np.ndarray:
    """Draw the outline of every tile of a tile table on ``thumbnail``.

    ``width`` defaults to about 1/500 of the thumbnail's longer side (at least 1 px), so
    the grid stays visible when the image is shown scaled down.
    """
    img = Image.fromarray(thumbnail)
    draw = ImageDraw.Draw(img)
    if width is None:
        width = max(1, round(max(thumbnail.shape[:2]) / 500))
    sx = thumbnail.shape[1] / slide_dimensions[0]
    sy = thumbnail.shape[0] / slide_dimensions[1]
    for x, y, w, h in table[["x", "y", "w0", "h0"]].itertuples(index=False):
        draw.rectangle([x * sx, y * sy, (x + w) * sx - 1, (y + h) * sy - 1], outline=color, width=width)
    return np.asarray(img)


#: Colours of tissue classes in maps (colour-blind-safe Okabe-Ito order).
CLASS_COLOURS = [(0, 158, 115), (86, 180, 233), (230, 159, 0), (213, 94, 0), (204, 121, 167), (0, 114, 178), (240, 228, 66), (0, 0, 0)]
CLASS_COLOUR_NAMES = ["green", "sky blue", "orange", "vermilion", "pink", "blue", "yellow", "black"]


def draw_class_map(
    thumbnail: np.ndarray,
    table: pd.DataFrame,
    *,
    slide_dimensions: tuple[int, int],
    classes: list[str],
    alpha: float = 0.45,
) -> np.ndarray:
    """Thumbnail with every classified tile filled in its predicted class's colour.

    ``table`` has level-0 ``x``, ``y``, ``w0``, ``h0`` and ``pred``; returns HxWx3 uint8.
    """
    h, w = thumbnail.shape[:2]
    sx, sy = w / slide_dimensions[0], h / slide_dimensions[1]
    layer = Image.new("RGB", (w, h))
    cover = Image.new("L", (w, h), 0)
    draw, mdraw = ImageDraw.Draw(layer), ImageDraw.Draw(cover)
    for x, y, w0, h0, pred in table[["x", "y", "w0", "h0", "pred"]].itertuples(index=False):
        box = [x * sx, y * sy, (x + w0) * sx - 1, (y + h0) * sy - 1]
        draw.rectangle(box, fill=CLASS_COLOURS[int(pred) % len(CLASS_COLOURS)])
        mdraw.rectangle(box, fill=int(255 * alpha))
    base = Image.fromarray(thumbnail)
    return np.asarray(Image.composite(layer, base, cover))


def draw_detections(
    thumbnail: np.ndarray,
    detections: pd.DataFrame,
    *,
    slide_dimensions: tuple[int, int],
    hotspot_xy: tuple[float, float] | None = None,
    hotspot_radius_px: float | None = None,
    color: tuple[int, int, int] = (213, 94, 0),
    hotspot_color: tuple[int, int, int] = (0, 114, 178),
    radius: int | None = None,
    ring_level0_px: float | None = None,
) -> np.ndarray:
    """Thumbnail with a ring per detection (level-0 ``x``, ``y``) and the hotspot circle.

    Rings are at least about 1/150 of the thumbnail's longer side, so that a single
    mitosis stays visible on a gigapixel slide's thumbnail, and at least
    ``ring_level0_px`` level-0 pixels (e.g. the 8 um matching radius) when the thumbnail
    is close to full resolution, so that the ring surrounds the figure instead of hiding it.
    """
    img = Image.fromarray(thumbnail)
    draw = ImageDraw.Draw(img)
    sx, sy = thumbnail.shape[1] / slide_dimensions[0], thumbnail.shape[0] / slide_dimensions[1]
    r = radius if radius is not None else max(3, round(max(thumbnail.shape[:2]) / 150))
    if ring_level0_px is not None:
        r = max(r, round(ring_level0_px * sx))
    lw = max(1, r // 3)
    for x, y in detections[["x", "y"]].to_numpy(float):
        cx, cy = x * sx, y * sy
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=lw)
    if hotspot_xy is not None and hotspot_radius_px:
        cx, cy = hotspot_xy[0] * sx, hotspot_xy[1] * sy
        rx, ry = hotspot_radius_px * sx, hotspot_radius_px * sy
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=hotspot_color, width=max(2, lw + 1))
    return np.asarray(img)

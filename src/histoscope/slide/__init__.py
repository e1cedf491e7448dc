"""Whole-slide reading: one ``Slide`` interface over OpenSlide, tifffile, Pillow and numpy arrays.

The first layer of histoscope's data flow (slide -> tiles -> stain -> models -> ...).
"""

from .backends import ArraySlide, OpenSlideSlide, PillowSlide, TiffSlide, to_rgb
from .base import Resolution, Slide
from .mask import Mask, tissue_mask
from .reader import SUPPORTED_FORMATS, open_slide, slide_info

__all__ = [
    "Slide",
    "Resolution",
    "open_slide",
    "slide_info",
    "ArraySlide",
    "OpenSlideSlide",
    "PillowSlide",
    "TiffSlide",
    "to_rgb",
    "Mask",
    "tissue_mask",
    "SUPPORTED_FORMATS",
]

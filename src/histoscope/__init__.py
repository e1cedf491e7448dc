"""histoscope: deep learning on H&E histopathology.

Data flows one way: slide -> tiles -> stain -> models -> training/inference ->
slide-level results -> reports. The lightweight layers are importable from here;
heavy ones (torch models, Dask) are imported by their own modules when used.
"""

from ._version import __version__
from .exceptions import (
    HistoscopeError,
    MaskError,
    MppUnavailableError,
    RegionError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedFormatError,
    UnsupportedImageError,
)
from .slide import Mask, Slide, open_slide, tissue_mask

__all__ = [
    "__version__",
    "open_slide",
    "Slide",
    "Mask",
    "tissue_mask",
    "HistoscopeError",
    "SlideReadError",
    "SlideNotFoundError",
    "UnsupportedFormatError",
    "UnsupportedImageError",
    "MppUnavailableError",
    "RegionError",
    "MaskError",
]

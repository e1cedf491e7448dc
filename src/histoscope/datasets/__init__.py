"""Datasets: synthetic whole-slide images for demos and scale tests."""

from .synthetic import SyntheticSlideInfo, demo_slide, synthetic_slide

__all__ = ["SyntheticSlideInfo", "demo_slide", "synthetic_slide"]

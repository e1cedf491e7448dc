"""Inference (layer 6 of the data flow): models run over slides."""

from .classmap import class_fractions, classify_tiles

__all__ = ["classify_tiles", "class_fractions"]

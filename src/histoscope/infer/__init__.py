"""Inference (layer 6 of the data flow): models run over slides."""

from .classmap import class_fractions, classify_tiles
from .dense import DenseMap, dense_map

__all__ = ["classify_tiles", "class_fractions", "dense_map", "DenseMap"]

"""Robustness audit (after models and inference in the data flow): one-pixel attacks against any
black-box classifier, brute-force one-pixel confidence maps, and the one-pixel paper's chromatic,
spatial and periodicity analyses."""

from .onepixel import CRITERIA, AttackResult, Criterion, DEConfig, attack_images, neighbour_colours, one_pixel_attack
from .scoring import PixelScorer, as_colours, chain_layers, colour_grid
from .target import CallableTarget, HTTPTarget, Target, TorchTarget, as_target

__all__ = [
    "AttackResult",
    "CRITERIA",
    "CallableTarget",
    "Criterion",
    "DEConfig",
    "HTTPTarget",
    "PixelScorer",
    "Target",
    "TorchTarget",
    "as_colours",
    "as_target",
    "attack_images",
    "chain_layers",
    "colour_grid",
    "neighbour_colours",
    "one_pixel_attack",
]

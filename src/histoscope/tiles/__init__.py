"""Tiling: the one grid function, random sampling in tissue, reading, writing, datasets.

``TileDataset`` (PyTorch) is imported lazily so that ``import histoscope.tiles`` does not
import torch.
"""

from .extract import iter_tiles, load_tile_table, read_tile, save_tile_table, write_tiles
from .grid import TILE_COLUMNS, TileSpec, grid_positions, sample_tiles, tile_grid

__all__ = [
    "TileSpec",
    "tile_grid",
    "grid_positions",
    "sample_tiles",
    "iter_tiles",
    "read_tile",
    "write_tiles",
    "save_tile_table",
    "load_tile_table",
    "TileDataset",
    "TILE_COLUMNS",
]


def __getattr__(name: str):
    if name == "TileDataset":
        from .dataset import TileDataset

        return TileDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

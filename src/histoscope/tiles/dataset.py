"""A PyTorch ``Dataset`` that reads tiles lazily from a slide.

The slide is opened on first use in each process (never pickled), so the dataset works
with ``DataLoader(num_workers > 0)``: each worker opens its own handle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from ..slide.base import Slide
from ..slide.reader import open_slide
from ..utils.convert import image_to_tensor
from .extract import read_tile

__all__ = ["TileDataset"]

class TileDataset(Dataset):
    """Tiles of one slide, read on demand.

    Parameters
    ----------
    slide : path
        The slide file (opened lazily in each process).
    table : pandas.DataFrame
        Tile table from :func:`~histoscope.tiles.tile_grid` / :func:`~histoscope.tiles.sample_tiles`.
    transform : callable, optional
        Applied to the HxWx3 uint8 tile before conversion to a tensor (numpy in, numpy out).
    mpp : float, optional
        Level-0 microns per pixel for slides that do not record it.

    Each item is a dict: ``image`` (3, H, W) float32 in [0, 1], ``x``, ``y`` (level-0
    corner) and ``index`` (row of the table).
    """

    def __init__(
        self,
        slide: str | os.PathLike[str],
        table: pd.DataFrame,
        *,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        mpp: float | None = None,
    ) -> None:
        if isinstance(slide, Slide):
            if slide.path is None:
                raise TypeError("TileDataset needs a slide path (in-memory slides cannot be shared with workers)")
            slide = slide.path
        self.slide_path = os.fspath(slide)
        self.table = table.reset_index(drop=True)
        self.transform = transform
        self.mpp = mpp
        self._slide: Slide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.table)

    def _get_slide(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, mpp=self.mpp)
            self._pid = os.getpid()
        return self._slide

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"tile index {index} out of range for {len(self)} tiles")
        row = self.table.iloc[index]
        tile = read_tile(self._get_slide(), row)
        if self.transform is not None:
            tile = self.transform(tile)
        return {"image": image_to_tensor(tile), "x": int(row["x"]), "y": int(row["y"]), "index": int(index) % len(self)}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slide"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_slide", None) is not None and self._pid == os.getpid():
            try:
                self._slide.close()  # type: ignore[union-attr]
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

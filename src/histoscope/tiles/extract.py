"""Reading the pixels of a tile table, fast and in bounded memory, and writing them out.

:func:`iter_tiles` reads tiles in table order. Neighbouring tiles of one grid row are read
together as one block (each compressed slide tile is decoded once, and the per-call
overhead is paid once per block) and blocks are read by a small thread pool (OpenSlide and
tifffile decode outside the GIL). At most ``2 * workers`` blocks are in flight, so memory
does not grow with the slide.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd

from ..slide.base import Slide

__all__ = ["iter_tiles", "read_tile", "write_tiles", "save_tile_table", "load_tile_table"]

#: Widest block (in level pixels) read in one call when neighbouring tiles are grouped.
MAX_BLOCK_WIDTH = 4096


def read_tile(slide: Slide, row: pd.Series | dict) -> np.ndarray:
    """Pixels of one tile-table row, as HxWx3 uint8 (exactly what :func:`iter_tiles` yields)."""
    size = int(row["size"])
    x, y = int(row["x"]), int(row["y"])
    lvl, ds = int(row["level"]), float(row["downsample"])
    if _direct(slide, lvl, ds):
        return slide.read_region((x, y), (size, size), level=lvl)
    return slide.read_region((x, y), (size, size), downsample=ds)


def _direct(slide: Slide, level: int, ds: float) -> bool:
    """Whether tiles at downsample ``ds`` are served by ``level`` as it is (no resampling)."""
    res = slide.resolve(downsample=ds)
    return not res.resample and res.level == level


def _blocks(table: pd.DataFrame, slide: Slide) -> list[tuple[int, int]]:
    """Group consecutive rows of one grid row into blocks read together: ``(start, stop)``."""
    if len(table) == 0:
        return []
    x = table["x"].to_numpy()
    y = table["y"].to_numpy()
    size = table["size"].to_numpy()
    level = table["level"].to_numpy()
    ds = table["downsample"].to_numpy()
    w0 = table["w0"].to_numpy()
    direct = {key: _direct(slide, key[0], key[1]) for key in set(zip(level.tolist(), ds.tolist()))}
    out: list[tuple[int, int]] = []
    start = 0
    n = len(table)
    for i in range(1, n + 1):
        if i < n:
            lds = slide.level_downsamples[int(level[i])]
            if (
                y[i] == y[start]
                and level[i] == level[start]
                and ds[i] == ds[start]
                and size[i] == size[start]
                and direct[(int(level[i]), float(ds[i]))]
                and 0 <= x[i] - x[i - 1] <= w0[i]  # touching or overlapping neighbours only
                and (x[i] - x[start]) / lds + size[i] <= MAX_BLOCK_WIDTH
            ):
                continue
        out.append((start, i))
        start = i
    return out


def _read_block(slide: Slide, table: pd.DataFrame, start: int, stop: int) -> list[np.ndarray]:
    rows = table.iloc[start:stop]
    if stop - start == 1:
        return [read_tile(slide, rows.iloc[0])]
    lvl = int(rows["level"].iloc[0])
    size = int(rows["size"].iloc[0])
    lds = float(slide.level_downsamples[lvl])
    x = rows["x"].to_numpy()
    y0 = int(rows["y"].iloc[0])
    # level-pixel offsets of each tile inside the block, as the backend maps level-0 coordinates
    off = np.floor(x / lds).astype(np.int64) - int(np.floor(x[0] / lds))
    width = int(off[-1]) + size
    block = slide.read_region((int(x[0]), y0), (width, size), level=lvl)
    return [block[:, o : o + size] for o in off]


def iter_tiles(
    slide: Slide,
    table: pd.DataFrame,
    *,
    workers: int = 2,
    verbose: bool = False,
    desc: str | None = None,
) -> Iterator[np.ndarray]:
    """Yield the pixels of every tile in ``table`` (HxWx3 uint8), in table order.

    Parameters
    ----------
    slide : Slide
    table : pandas.DataFrame
        A tile table from :func:`~histoscope.tiles.tile_grid` or
        :func:`~histoscope.tiles.sample_tiles`.
    workers : int
        Reader threads (1 reads in the calling thread).
    verbose : bool
        Show a progress bar.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    blocks = _blocks(table, slide)
    bar = tqdm(total=len(table), desc=desc or f"tiles {slide.name}", unit="tile", disable=not verbose, leave=False)
    try:
        if workers == 1:
            for start, stop in blocks:
                tiles = _read_block(slide, table, start, stop)
                bar.update(len(tiles))
                yield from tiles
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="histoscope-tiles") as pool:
            pending: deque = deque()
            it = iter(blocks)
            for start, stop in it:
                pending.append(pool.submit(_read_block, slide, table, start, stop))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                tiles = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(_read_block, slide, table, nxt[0], nxt[1]))
                bar.update(len(tiles))
                yield from tiles
    finally:
        bar.close()


def save_tile_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Save a tile table as CSV (``.csv``) or Parquet (``.parquet``), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: tile tables are saved as .csv or .parquet, got suffix {suffix!r}")
    tmp = path.with_name(f".{path.name}.tmp")
    if suffix == ".csv":
        table.to_csv(tmp, index=False)
    else:
        table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def load_tile_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load a tile table written by :func:`save_tile_table`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tile table")
    return pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)


def write_tiles(
    slide: Slide,
    table: pd.DataFrame,
    out: str | os.PathLike[str],
    *,
    fmt: Literal["png", "zarr"] = "png",
    workers: int = 2,
    verbose: bool = False,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """Write every tile of ``table`` under ``out``.

    ``transform``, if given, maps each tile's pixels (HxWx3 uint8 -> HxWx3 uint8)
    before it is written (e.g. a stain normaliser's ``transform``).

    ``fmt="png"``: one PNG per tile, ``<out>/<slide>_x<X>_y<Y>.png`` (level-0 corner).
    ``fmt="zarr"``: one chunked zarr group ``<out>/<slide>.zarr`` with an array ``tiles``
    of shape (N, size, size, 3) (one chunk per tile, written as tiles are read) and an
    array ``coords`` (N, 2) of level-0 (x, y).

    Returns the PNG folder or the zarr path. Files are written under a temporary name and
    renamed when complete, so an interrupted run leaves no file that looks finished.
    """
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt not in ("png", "zarr"):
        raise ValueError(f"fmt must be 'png' or 'zarr', got {fmt!r}")
    if fmt == "png":
        xs, ys = table["x"].to_numpy(), table["y"].to_numpy()
        for i, tile in enumerate(iter_tiles(slide, table, workers=workers, verbose=verbose)):
            tile = transform(tile) if transform is not None else tile
            final = out / f"{slide.name}_x{xs[i]}_y{ys[i]}.png"
            tmp = final.with_name(f".{final.name}.tmp")
            Image.fromarray(tile).save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, final)
        return out
    import shutil

    import zarr

    sizes = table["size"].unique() if len(table) else np.array([256])
    if len(sizes) != 1:
        raise ValueError(f"a zarr tile store needs one tile size, the table has {sorted(sizes)}")
    size = int(sizes[0])
    final = out / f"{slide.name}.zarr"
    tmp = out / f".{slide.name}.zarr.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    group = zarr.open_group(str(tmp), mode="w")
    arr = group.create_array("tiles", shape=(len(table), size, size, 3), chunks=(1, size, size, 3), dtype="uint8")
    coords = group.create_array("coords", shape=(len(table), 2), chunks=(max(1, len(table)), 2), dtype="int64")
    if len(table):
        coords[:] = table[["x", "y"]].to_numpy(np.int64)
    group.attrs.update(
        {
            "slide": slide.path or slide.name,
            "size": size,
            "mpp": None if np.isnan(table["mpp"].iloc[0]) else float(table["mpp"].iloc[0]) if len(table) else None,
        }
    )
    for i, tile in enumerate(iter_tiles(slide, table, workers=workers, verbose=verbose)):
        arr[i] = transform(tile) if transform is not None else tile
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final

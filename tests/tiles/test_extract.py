"""Reading tiles: block reads equal direct OpenSlide reads; writers; tables; the torch Dataset."""

from __future__ import annotations

import numpy as np
import openslide
import pandas as pd
import pytest

from histoscope import open_slide, tissue_mask
from histoscope.tiles import TileSpec, iter_tiles, load_tile_table, read_tile, save_tile_table, tile_grid, write_tiles


@pytest.fixture
def cmu_tiles(cmu_svs):
    with open_slide(cmu_svs) as s:
        m = tissue_mask(s)
        yield s, tile_grid(s, TileSpec(size=256, mpp=0.5, overlap=0.3), tissue=m, min_tissue=0.25)


@pytest.mark.parametrize("workers", [1, 2])
def test_iter_tiles_equals_direct_openslide(cmu_tiles, workers):
    s, table = cmu_tiles
    osr = openslide.OpenSlide(s.path)
    tiles = list(iter_tiles(s, table, workers=workers))
    assert len(tiles) == len(table) > 20
    for tile, row in zip(tiles, table.itertuples()):
        ref = np.asarray(osr.read_region((int(row.x), int(row.y)), 0, (256, 256)).convert("RGB"))
        np.testing.assert_array_equal(tile, ref)


def test_iter_tiles_resampled_equals_read_tile(cmu_svs):
    with open_slide(cmu_svs) as s:
        table = tile_grid(s, TileSpec(size=64, mpp=2.0), region=(0, 0, 1024, 1024))
        tiles = list(iter_tiles(s, table, workers=2))
        for tile, (_, row) in zip(tiles, table.iterrows()):
            np.testing.assert_array_equal(tile, read_tile(s, row))
            assert tile.shape == (64, 64, 3)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tile_table_roundtrip(tmp_path, cmu_tiles, suffix):
    _, table = cmu_tiles
    p = save_tile_table(table, tmp_path / f"tiles{suffix}")
    back = load_tile_table(p)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    with pytest.raises(ValueError, match="csv or .parquet"):
        save_tile_table(table, tmp_path / "tiles.xlsx")


def test_write_png_and_zarr(tmp_path, cmu_tiles):
    import zarr
    from PIL import Image

    s, table = cmu_tiles
    table = table.iloc[:6]
    out = write_tiles(s, table, tmp_path / "png", fmt="png")
    files = sorted(out.glob("*.png"))
    assert len(files) == 6
    r = table.iloc[0]
    first = np.asarray(Image.open(out / f"{s.name}_x{int(r.x)}_y{int(r.y)}.png"))
    np.testing.assert_array_equal(first, read_tile(s, r))
    zpath = write_tiles(s, table, tmp_path / "z", fmt="zarr")
    g = zarr.open_group(str(zpath), mode="r")
    assert g["tiles"].shape == (6, 256, 256, 3) and g["tiles"].chunks == (1, 256, 256, 3)
    np.testing.assert_array_equal(g["tiles"][0], first)
    np.testing.assert_array_equal(g["coords"][:], table[["x", "y"]].to_numpy())
    assert not list((tmp_path / "z").glob(".*tmp"))


def test_tile_dataset_with_worker_processes(cmu_tiles):
    import torch
    from torch.utils.data import DataLoader

    from histoscope.tiles import TileDataset

    s, table = cmu_tiles
    ds = TileDataset(s.path, table.iloc[:8])
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    img = batches[0]["image"]
    assert img.shape == (4, 3, 256, 256) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    ref = read_tile(s, table.iloc[1])
    np.testing.assert_allclose(img[1].permute(1, 2, 0).numpy() * 255, ref, atol=1e-3)
    assert batches[1]["x"].tolist() == table["x"].iloc[4:8].tolist()

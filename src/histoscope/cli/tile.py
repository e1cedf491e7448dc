"""``histoscope tile SLIDE...``: cut tissue tiles into PNG files or a zarr store, with a tile table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .options import quiet, report_failures, scheduler, seed, slide_mpp, workers


def tile_job(
    source: str,
    *,
    out: str,
    size: int,
    mpp: float | None,
    stride: float | None,
    overlap: float | None,
    min_tissue: float,
    fmt: str,
    table_fmt: str,
    random_n: int | None,
    slide_mpp: float | None,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Tile one slide (a module-level function so Dask workers can run it)."""
    from ..slide import open_slide, tissue_mask
    from ..tiles import TileSpec, sample_tiles, save_tile_table, tile_grid, write_tiles

    with open_slide(source, mpp=slide_mpp) as slide:
        if mpp is not None and slide.mpp is None:
            slide.require_mpp()
        spec = TileSpec(size=size, mpp=mpp, downsample=None if mpp is not None else 1.0, stride=stride, overlap=overlap)
        mask = tissue_mask(slide)
        if random_n:
            table = sample_tiles(slide, random_n, spec, tissue=mask, min_tissue=min_tissue, rng=seed)
        else:
            table = tile_grid(slide, spec, tissue=mask, min_tissue=min_tissue)
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = write_tiles(slide, table, out_dir / slide.name if fmt == "png" else out_dir, fmt=fmt, verbose=progress)
        table_path = save_tile_table(table, out_dir / f"{slide.name}-tiles.{table_fmt}")
        return {"slide": slide.path, "tiles": len(table), "output": str(target), "table": str(table_path)}


@click.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--size", type=click.IntRange(min=1), default=256, show_default=True, help="Tile side in pixels.")
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Tile resolution in microns per pixel.")
@click.option("--level0", is_flag=True, help="Tile at level-0 pixels instead of a physical resolution.")
@click.option("--stride", type=float, default=None, help="Stride in tile pixels (default: the tile size).")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=None, help="Overlap fraction, e.g. 0.3.")
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Minimum tissue fraction.")
@click.option("--random", "random_n", type=click.IntRange(min=1), default=None, help="Sample N random tissue tiles instead of the grid.")
@click.option("--format", "fmt", type=click.Choice(["png", "zarr"]), default="png", show_default=True)
@click.option("--table", "table_fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-tiles", show_default=True)
@slide_mpp
@workers
@scheduler
@quiet
@seed
def tile(slides: tuple[str, ...], size, mpp, level0, stride, overlap, min_tissue, random_n, fmt, table_fmt, out, slide_mpp, workers, scheduler, quiet, seed) -> None:
    """Cut the tissue of each SLIDE into tiles, with a table of their coordinates."""
    from ..distributed import run_jobs

    if stride is not None and overlap is not None:
        raise click.UsageError("give --stride or --overlap, not both")
    results = run_jobs(
        tile_job,
        list(slides),
        workers=workers,
        scheduler=scheduler,
        verbose=not quiet,
        out=out,
        size=size,
        mpp=None if level0 else mpp,
        stride=stride,
        overlap=overlap,
        min_tissue=min_tissue,
        fmt=fmt,
        table_fmt=table_fmt,
        random_n=random_n,
        slide_mpp=slide_mpp,
        seed=seed,
        progress=not quiet and len(slides) == 1,
    )
    for r in results:
        if r.ok:
            click.echo(f"{r.value['slide']}: {r.value['tiles']} tiles -> {r.value['output']} (table {r.value['table']})")
    raise SystemExit(report_failures(results))

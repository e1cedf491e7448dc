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
    tissue_mask_path: str | None = None,
    annotation_path: str | None = None,
    min_annotation: float = 0.5,
) -> dict[str, Any]:
    """Tile one slide (a module-level function so Dask workers can run it)."""
    from ..slide import Mask, open_slide, tissue_mask
    from ..tiles import TileSpec, sample_tiles, save_tile_table, tile_grid, write_tiles

    with open_slide(source, mpp=slide_mpp) as slide:
        if mpp is not None and slide.mpp is None:
            slide.require_mpp()
        spec = TileSpec(size=size, mpp=mpp, downsample=None if mpp is not None else 1.0, stride=stride, overlap=overlap)
        if tissue_mask_path:
            mask = Mask.from_image(mask_for(tissue_mask_path, slide.name), slide)
        else:
            mask = tissue_mask(slide)
        annotation = Mask.from_image(mask_for(annotation_path, slide.name), slide) if annotation_path else None
        filters = dict(tissue=mask, min_tissue=min_tissue, annotation=annotation, min_annotation=min_annotation)
        if random_n:
            table = sample_tiles(slide, random_n, spec, rng=seed, **filters)
        else:
            table = tile_grid(slide, spec, **filters)
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = write_tiles(slide, table, out_dir / slide.name if fmt == "png" else out_dir, fmt=fmt, verbose=progress)
        table_path = save_tile_table(table, out_dir / f"{slide.name}-tiles.{table_fmt}")
        return {"slide": slide.path, "tiles": len(table), "output": str(target), "table": str(table_path)}


def mask_for(path: str, slide_name: str) -> str:
    """A mask file, or the mask for ``slide_name`` in a folder (``<name>.png``, ``.tif``, ``.tiff``, ``.jpg``)."""
    from ..exceptions import MaskError

    p = Path(path)
    if p.is_dir():
        for ext in (".png", ".tif", ".tiff", ".jpg"):
            if (p / f"{slide_name}{ext}").is_file():
                return str(p / f"{slide_name}{ext}")
        raise MaskError(f"{p}: no mask for slide {slide_name!r} (looked for {slide_name}.png/.tif/.tiff/.jpg)")
    return str(p)


@click.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--size", type=click.IntRange(min=1), default=256, show_default=True, help="Tile side in pixels.")
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Tile resolution in microns per pixel.")
@click.option("--level0", is_flag=True, help="Tile at level-0 pixels instead of a physical resolution.")
@click.option("--stride", type=float, default=None, help="Stride in tile pixels (default: the tile size).")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=None, help="Overlap fraction, e.g. 0.3.")
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Minimum tissue fraction.")
@click.option("--tissue-mask", "tissue_mask_path", type=click.Path(exists=True, path_type=str), default=None, help="Your own tissue mask image (or a folder of <slide name>.png masks) instead of automatic detection.")
@click.option("--annotation", "annotation_path", type=click.Path(exists=True, path_type=str), default=None, help="Annotation mask image (or a folder of <slide name>.png masks); keep tiles inside it.")
@click.option("--min-annotation", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Minimum annotated fraction of a tile (with --annotation).")
@click.option("--random", "random_n", type=click.IntRange(min=1), default=None, help="Sample N random tissue tiles instead of the grid.")
@click.option("--format", "fmt", type=click.Choice(["png", "zarr"]), default="png", show_default=True)
@click.option("--table", "table_fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-tiles", show_default=True)
@slide_mpp
@workers
@scheduler
@quiet
@seed
def tile(slides: tuple[str, ...], size, mpp, level0, stride, overlap, min_tissue, tissue_mask_path, annotation_path, min_annotation, random_n, fmt, table_fmt, out, slide_mpp, workers, scheduler, quiet, seed) -> None:
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
        tissue_mask_path=tissue_mask_path,
        annotation_path=annotation_path,
        min_annotation=min_annotation,
    )
    for r in results:
        if r.ok:
            click.echo(f"{r.value['slide']}: {r.value['tiles']} tiles -> {r.value['output']} (table {r.value['table']})")
    raise SystemExit(report_failures(results))

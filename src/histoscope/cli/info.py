"""``histoscope info SLIDE``: metadata of a slide."""

from __future__ import annotations

import json

import click

from .options import slide_mpp


@click.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@slide_mpp
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(slides: tuple[str, ...], slide_mpp: float | None, as_json: bool) -> None:
    """Print the metadata of one or more slides."""
    from ..slide import slide_info

    out = [slide_info(path, mpp=slide_mpp) for path in slides]
    if as_json:
        click.echo(json.dumps(out if len(out) > 1 else out[0], indent=2))
        return
    for d in out:
        click.echo(f"{d['path']}")
        click.echo(f"  backend           {d['backend']}")
        click.echo(f"  dimensions        {d['dimensions'][0]} x {d['dimensions'][1]} px")
        click.echo(f"  levels            {d['level_count']}")
        for i, (dims, ds) in enumerate(zip(d["level_dimensions"], d["level_downsamples"])):
            click.echo(f"    level {i}         {dims[0]} x {dims[1]} (downsample {ds:g})")
        mpp = "unknown (use --slide-mpp)" if d["mpp"] is None else f"{d['mpp'][0]:.4g} x {d['mpp'][1]:.4g} um/px ({d['mpp_source']})"
        click.echo(f"  microns per pixel {mpp}")
        click.echo(f"  objective power   {d['objective_power'] if d['objective_power'] is not None else 'unknown'}")
        click.echo(f"  associated images {', '.join(d['associated_images']) or 'none'}")

"""Options shared by several subcommands."""

from __future__ import annotations

import click

quiet = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
seed = click.option("--seed", type=int, default=0, show_default=True, help="Random seed (repeatable runs).")
slide_mpp = click.option(
    "--slide-mpp",
    type=float,
    default=None,
    help="Level-0 microns per pixel, for slides that do not record it (overrides the file).",
)
workers = click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Parallel per-slide jobs on a local Dask cluster."
)
scheduler = click.option(
    "--scheduler", default=None, metavar="tcp://HOST:PORT", help="Run per-slide jobs on an existing Dask cluster."
)


def apply_options(options: list):
    """A decorator applying a list of click options/arguments in their written order."""

    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def report_failures(results) -> int:
    """Print one line per failed job; return the exit status (0 when all succeeded)."""
    failed = [r for r in results if not r.ok]
    for r in failed:
        click.echo(f"histoscope: error: {r.error}", err=True)
    if failed:
        click.echo(f"{len(failed)} of {len(results)} slide(s) failed; the others completed.", err=True)
        return 1
    return 0

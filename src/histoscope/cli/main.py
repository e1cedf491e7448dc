"""Entry point of the ``histoscope`` command."""

from __future__ import annotations

import logging
import sys

import click

from .._version import __version__
from ..exceptions import HistoscopeError


class _Group(click.Group):
    """Turns histoscope's own errors into one clear line and exit status 2 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HistoscopeError as exc:
            click.echo(f"histoscope: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="histoscope")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--trust-checkpoint", is_flag=True, help="Load model checkpoints that need Python's pickle (it can run code in the file: only for files you trust).")
def cli(verbose: int, trust_checkpoint: bool) -> None:
    """histoscope: deep learning on H&E histopathology slides."""
    import os

    if trust_checkpoint:  # read by histoscope.train.engine.read_checkpoint, also in Dask workers
        os.environ["HISTOSCOPE_TRUST_CHECKPOINT"] = "1"
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from .analyze import analyze
    from .audit import audit
    from .nic import nic
    from .phh3 import phh3
    from .serve import serve
    from .view import view
    from .info import info
    from .mitosis import detect, train_atypical_cmd, train_mitosis_cmd
    from .stain import stain
    from .tile import tile
    from .train import evaluate, train

    cli.add_command(info)
    cli.add_command(tile)
    cli.add_command(analyze)
    cli.add_command(stain)
    train.add_command(train_mitosis_cmd)
    train.add_command(train_atypical_cmd)
    cli.add_command(train)
    cli.add_command(detect)
    cli.add_command(evaluate)
    cli.add_command(audit)
    cli.add_command(serve)
    cli.add_command(view)
    cli.add_command(phh3)
    cli.add_command(nic)


_register()


def main() -> None:  # console-script entry point
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()

"""``histoscope serve``: a model behind a REST API (FastAPI + uvicorn)."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--model", default=None, help="Bundled model name (e.g. mitosis_detector, colorectal_grader) or training checkpoint (default: the bundled mitosis_detector).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind. The server has no authentication: keep it on loopback or behind a trusted proxy.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind (0: a free one).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=100.0, show_default=True, help="Largest request body in MiB (HTTP 413 above).")
@click.option("--max-batch", type=click.IntRange(min=1), default=1024, show_default=True, help="Most patches in one .npy batch (HTTP 413 above).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads of each model call (default: torch's). 1 serves small patches faster under concurrent load on few cores.")
@click.pass_context
def serve(ctx: click.Context, model, host, port, device, max_body_mb, max_batch, threads):
    """Serve a model over HTTP: POST an .npy batch of patches or a PNG/JPEG/TIFF image
    to /predict for class probabilities (JSON); GET /info, /card, /card.md and /health.

    An image larger than the model's input size is cut into a grid of input-size
    patches and scored patch by patch. Global -v logs every request (-vv: debug).
    """
    from ..serve import create_app
    from ..utils.webserver import is_loopback, run_app

    verbose = ctx.find_root().params.get("verbose", 0) or 0
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        app = create_app(model, device=device, max_body_bytes=int(max_body_mb * 2**20), max_batch=max_batch)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    if not is_loopback(host):
        click.echo(f"histoscope: warning: binding {host} exposes the model to the network; the server has no authentication", err=True)

    def started(url: str) -> None:
        click.echo(f"serving {app.state.target.name} at {url} (POST /predict, GET /info /card /health; Ctrl-C stops)")

    log_level = "debug" if verbose >= 2 else "info" if verbose else "warning"
    try:
        run_app(app, host=host, port=port, log_level=log_level, access_log=verbose >= 1, on_start=started)
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

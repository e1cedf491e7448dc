"""``histoscope view REPORT_DIR|SLIDE``: a local web page to pan and zoom a slide with its analysis overlays."""

from __future__ import annotations

import click

from .options import slide_mpp


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--slide", "slide_path", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None, help="The slide file, when the report folder's recorded path has moved.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback exposes the slide to the network (no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: a free port.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
@slide_mpp
def view(source, slide_path, host, port, open_browser, slide_mpp) -> None:
    """Serve SOURCE (a report folder of `histoscope analyze`, or a slide file) as a zoomable web page.

    Deep Zoom tiles come from the slide at full resolution; the page (OpenSeadragon) toggles
    the tissue outline, the tissue-class map, mitosis detections and the hotspot. Stop with
    Ctrl-C.
    """
    from ..utils.webserver import is_loopback, run_app
    from ..viewer import ViewerData, create_viewer_app

    data = ViewerData(source, slide=slide_path, slide_mpp=slide_mpp)
    app = create_viewer_app(data)
    if not is_loopback(host):
        click.echo(f"warning: serving on {host}: anyone who can reach it can view the slide (no authentication)", err=True)

    def started(url: str) -> None:
        click.echo(f"viewing {data.slide.path} at {url}/ (Ctrl-C to stop)")
        if open_browser:
            import webbrowser

            webbrowser.open(f"{url}/")

    try:
        run_app(app, host=host, port=port, on_start=started)
    finally:
        data.close()

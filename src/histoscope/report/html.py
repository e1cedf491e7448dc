"""A self-contained HTML report (images embedded as base64, no external files or scripts)."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from .._version import __version__

__all__ = ["write_report", "png_data_uri", "Link"]


class Link(NamedTuple):
    """A table cell that links to ``href`` (a relative path or URL), shown as ``text``."""

    text: str
    href: str

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.sub{color:#666;margin-top:0}.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.5rem 1rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;
font-size:.9rem}th{background:#f4f4f4}.figs{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0;flex:1 1 360px;max-width:calc(50% - .5rem)}
figure img{width:100%;height:auto;border:1px solid #ccc;image-rendering:auto}
.plots figure{flex:0 1 480px}figcaption{font-size:.85rem;color:#555}
figure.wide{margin:1rem 0;max-width:none}details{margin:.4rem 0}summary{cursor:pointer;font-weight:600}
details pre{white-space:pre-wrap;background:#f8f8f8;border:1px solid #e4e4e4;padding:.6rem;font-size:.8rem}
td.ok{color:#1a7f37}td.failed{color:#b42318;font-weight:600}footer{margin-top:3rem;color:#888;font-size:.8rem}
"""


def png_data_uri(image: np.ndarray | bytes) -> str:
    """PNG bytes as a ``data:`` URI; an HxWx3 uint8 image (a photograph) is embedded as JPEG."""
    if isinstance(image, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=88)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def _table(rows: Mapping[str, Any] | Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    items = rows.items() if isinstance(rows, Mapping) else rows
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in items)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def _cell(v: Any) -> str:
    if isinstance(v, Link):
        return f"<td><a href='{html.escape(v.href, quote=True)}'>{html.escape(v.text)}</a></td>"
    text = html.escape(_fmt(v))
    return f"<td class='{text}'>{text}</td>" if text in ("ok", "failed") else f"<td>{text}</td>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return " x ".join(_fmt(x) for x in v) if all(isinstance(x, (int, float)) for x in v) else ", ".join(map(str, v))
    return "—" if v is None else str(v)


def write_report(
    path: str | Path,
    *,
    title: str,
    subtitle: str = "",
    warnings: Sequence[str] = (),
    figures: Sequence[tuple[str, np.ndarray | bytes]] = (),
    plots: Sequence[tuple[str, bytes]] = (),
    sections: Sequence[tuple[str, Mapping[str, Any] | Sequence[Sequence[Any]], Sequence[str] | None]] = (),
    galleries: Sequence[tuple[str, Sequence[tuple[str, bytes]]]] = (),
    details: Sequence[tuple[str, Sequence[tuple[str, str]]]] = (),
) -> Path:
    """Write a self-contained report.html.

    Parameters
    ----------
    figures : sequence of (caption, image)
        Slide images (HxWx3 uint8, embedded as JPEG, or PNG bytes), side by side.
    plots : sequence of (caption, png bytes)
        Charts, shown at their natural size.
    sections : sequence of (heading, rows, header)
        Tables: rows as a mapping (key/value table) or a list of rows with a header.
    galleries : sequence of (heading, [(caption, png bytes), ...])
        Wide figures (several panels each), one per row at the page width, after the tables.
    details : sequence of (heading, [(summary, text), ...])
        Long texts (e.g. model cards in Markdown), each folded under its summary line.

    The file is written under a temporary name and renamed, so it is complete or absent.
    """
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='sub'>{html.escape(subtitle)}</p>" if subtitle else "",
    ]
    parts += [f"<p class='warn'>{html.escape(w)}</p>" for w in warnings]
    if figures:
        parts.append("<h2>Slide</h2><div class='figs'>")
        for caption, img in figures:
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='{png_data_uri(img)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    if plots:
        parts.append("<h2>Plots</h2><div class='figs plots'>")
        for caption, png in plots:
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='{png_data_uri(png)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    for heading, rows, header in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{_table(rows, header)}")
    for heading, items in galleries:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for caption, png in items:
            parts.append(
                f"<figure class='wide'><img alt='{html.escape(caption)}' src='{png_data_uri(png)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    for heading, items in details:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for summary, text in items:
            parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
    parts.append(f"<footer>histoscope {__version__}</footer></body></html>")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text("".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path

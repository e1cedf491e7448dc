"""Writing matplotlib figures: the one place that does it (atomically, any format matplotlib knows)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["save_figure"]


def save_figure(fig: "Figure", path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically (temp file + rename); create the parent folder.

    The suffix picks the format (``.png``, ``.jpg``, ``.pdf``, ...).

    Raises
    ------
    ValueError
        If matplotlib cannot write that suffix (the message lists the ones it can).
    """
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"cannot write a figure as {out.name!r}: the suffix must be one of {sorted(supported)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".partial.{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format=fmt)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out

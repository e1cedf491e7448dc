"""Writing a zarr store completely or not at all: a temporary folder beside it, renamed when done."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["prepare_store", "publish_store"]


def prepare_store(out: str | Path, *, is_ours: Callable[[Path], bool], what: str) -> tuple[Path, Path]:
    """Check ``out`` and return it with a fresh temporary path beside it (``.NAME.partial``).

    ``out`` may be absent or a store that ``is_ours`` recognises (it will be replaced); any
    other existing path is refused, so nothing a user wrote is overwritten.
    """
    final = Path(out)
    if final.exists() and not is_ours(final):
        raise ValueError(f"{final}: exists and is not a {what}; refusing to overwrite it (choose a new path)")
    if not final.parent.is_dir():
        raise FileNotFoundError(f"{final.parent}: the folder for the {what} does not exist")
    tmp = final.with_name(f".{final.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    return final, tmp


def publish_store(tmp: Path, final: Path) -> None:
    """Move the finished temporary store into place (replacing an older one)."""
    import os

    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)

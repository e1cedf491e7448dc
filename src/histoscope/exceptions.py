"""The errors histoscope raises on purpose.

Every domain error derives from :class:`HistoscopeError` and from the built-in
exception that fits (``OSError`` for files that cannot be read, ``ValueError`` for
values the caller got wrong), so ``except ValueError`` keeps working for callers who
do not know histoscope. Messages name the file (when there is one), what is wrong,
and what to do about it.
"""

from __future__ import annotations

import os

__all__ = [
    "HistoscopeError",
    "SlideReadError",
    "SlideNotFoundError",
    "UnsupportedFormatError",
    "UnsupportedImageError",
    "MppUnavailableError",
    "RegionError",
    "MaskError",
    "StainWarning",
]


class HistoscopeError(Exception):
    """Base class of every error histoscope raises on purpose."""


class SlideReadError(HistoscopeError, OSError):
    """A slide file exists but cannot be read (corrupt, truncated, unreadable)."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}")

    def __reduce__(self):  # keep the exception picklable across Dask workers
        return (type(self), (self.path, self.problem))


class SlideNotFoundError(SlideReadError, FileNotFoundError):
    """The slide path does not exist or is not a regular file."""


class UnsupportedFormatError(SlideReadError, ValueError):
    """No backend can read this file format."""


class UnsupportedImageError(SlideReadError, ValueError):
    """The file is readable but its pixels are not 8-bit RGB brightfield (e.g. grayscale, 16-bit)."""


class MppUnavailableError(HistoscopeError, ValueError):
    """A physical resolution was requested but the slide does not know its microns per pixel."""


class RegionError(HistoscopeError, ValueError):
    """A requested region is empty, negative or entirely outside the slide."""


class MaskError(HistoscopeError, ValueError):
    """A mask does not fit the slide it is used with (shape, aspect ratio, dtype)."""


class StainWarning(UserWarning):
    """A stain estimate fell back to a reference (too little tissue, degenerate colours)."""


class ModelFileError(HistoscopeError, ValueError):
    """A model or encoder file that is missing, tampered with, unsafe to load or of the wrong kind."""

"""Giving freed memory back to the operating system between tiles.

Long tile loops (candidate detection over a gigapixel slide) allocate and free many
medium-sized arrays; glibc's allocator keeps the freed heap, so the resident memory of a
40,000 x 40,000 px analysis grew to 2.8 GB although no data was kept (measured:
benchmarks/analyze.py). :func:`release_memory` asks the allocator to return it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

__all__ = ["release_memory"]


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_memory() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``); False where unavailable."""
    fn = _malloc_trim()
    return bool(fn is not None and fn(0))

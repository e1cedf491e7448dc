"""A job that kills the process running it, for testing how Dask runs survive dead workers.

It lives in an importable module (not a test file) because Dask workers import a function
by its module to run it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def killing_job(item: str, marker_dir: str) -> str:
    """Run ``item``: ``"once:..."`` SIGKILLs its process the first time only (a marker file in
    ``marker_dir`` remembers), ``"always:..."`` every time, anything else just returns."""
    marker = Path(marker_dir) / f"{item.replace(':', '-')}.died"
    if item.startswith("always:") or (item.startswith("once:") and not marker.exists()):
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{item} done by {os.getpid()}"

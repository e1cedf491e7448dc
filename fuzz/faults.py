"""Fault injection helpers: a job that kills its own process (how Dask runs survive dead
workers; it lives in an importable module because Dask workers import a function by its
module), and the comparison of two ``histoscope analyze`` output folders with what
legitimately differs between runs (timings, memory, paths) removed.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

#: summary.json keys and cohort.csv columns that differ between identical runs.
VOLATILE_KEYS = {"timings_s", "peak_memory_mb", "report", "skipped"}
VOLATILE_COLUMNS = ["status", "seconds", "peak_memory_mb", "report"]


def killing_job(item: str, marker_dir: str) -> str:
    """Run ``item``: ``"once:..."`` SIGKILLs its process the first time only (a marker file in
    ``marker_dir`` remembers), ``"always:..."`` every time, anything else just returns."""
    marker = Path(marker_dir) / f"{item.replace(':', '-')}.died"
    if item.startswith("always:") or (item.startswith("once:") and not marker.exists()):
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{item} done by {os.getpid()}"


def _stable(d):
    """A JSON value without the volatile keys, at any depth (stages nest their own timings)."""
    if isinstance(d, dict):
        return {k: _stable(v) for k, v in d.items() if k not in VOLATILE_KEYS}
    if isinstance(d, list):
        return [_stable(v) for v in d]
    return d


def canonical(path: Path, out: Path | None = None) -> bytes:
    """A file's content with what legitimately differs between runs removed."""
    data = path.read_bytes()
    if path.name == "summary.json":
        return json.dumps(_stable(json.loads(data)), sort_keys=True).encode()
    if path.name == "cohort.csv":
        import pandas as pd

        df = pd.read_csv(path).drop(columns=VOLATILE_COLUMNS, errors="ignore")
        return df.to_csv(index=False).encode()
    if path.name == "cohort.html":  # the table without the columns that vary
        rows = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in re.findall(r"<tr>(.*?)</tr>", data.decode(), re.S)]
        keep = [i for i, h in enumerate(rows[0] if rows else []) if h not in ("status", "time (s)", "peak memory (MB)")]
        return json.dumps([[r[i] for i in keep if i < len(r)] for r in rows]).encode()
    if path.suffix == ".html":
        text = data.decode()
        text = re.sub(r"\d[\d,]*(\.\d+)? (s|MB)\b", "#", text)  # timings and memory
        if out is not None:
            text = text.replace(str(out.resolve()), "OUT").replace(str(out), "OUT")  # absolute output paths
        return text.encode()
    return data


def output_tree(out: Path) -> dict[str, bytes]:
    """Every visible output file (hidden partial folders excluded) -> canonical content."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[str(rel)] = canonical(p, out)
    return files

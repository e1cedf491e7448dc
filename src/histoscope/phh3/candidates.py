"""Mitotic candidates in a PHH3 (DAB) immunohistochemistry image or slide.

The whole-slide mitosis paper (Tellez et al., section III) restains the H&E section with PHH3,
an antibody that marks dividing nuclei brown.  Candidates are found by colour deconvolution
(the DAB channel, :func:`histoscope.stain.deconvolution.rgb_to_dab`), a threshold and
connected components.  Whole slides are processed tile by tile with a halo, each component
kept by the tile that holds its centroid, so memory stays bounded and no object is cut or
counted twice.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["dab_candidates", "DEFAULT_DAB_THRESHOLD", "candidate_patches", "write_candidates", "write_patch_folder"]

#: DAB optical density above which a pixel counts as stained (Ruifrok-Johnston H-DAB vectors).
DEFAULT_DAB_THRESHOLD = 0.9


def _components(dab: np.ndarray, threshold: float, sigma: float, min_px: float, max_px: float) -> pd.DataFrame:
    from scipy import ndimage
    from skimage.measure import label, regionprops_table

    smooth = ndimage.gaussian_filter(dab, sigma) if sigma > 0 else dab
    mask = smooth > threshold
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, iterations=1))
    lab = label(mask, connectivity=2)
    if lab.max() == 0:
        return pd.DataFrame(columns=["cy", "cx", "area", "mean_dab", "max_dab", "eccentricity", "solidity", "touches"])
    props = regionprops_table(lab, intensity_image=dab, properties=("label", "centroid", "area", "intensity_mean", "intensity_max", "eccentricity", "solidity", "bbox"))
    t = pd.DataFrame(props).rename(columns={"centroid-0": "cy", "centroid-1": "cx", "intensity_mean": "mean_dab", "intensity_max": "max_dab"})
    h, w = dab.shape
    t["touches"] = (t["bbox-0"] == 0) | (t["bbox-1"] == 0) | (t["bbox-2"] == h) | (t["bbox-3"] == w)
    t = t[(t["area"] >= min_px) & (t["area"] <= max_px)]
    return t[["cy", "cx", "area", "mean_dab", "max_dab", "eccentricity", "solidity", "touches"]]


def dab_candidates(
    source: Any,
    *,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    threshold: float = DEFAULT_DAB_THRESHOLD,
    sigma_um: float = 1.0,
    min_area_um2: float = 12.0,
    max_area_um2: float = 300.0,
    tile: int = 1024,
    verbose: bool = False,
) -> pd.DataFrame:
    """DAB-positive objects of nucleus size, as a table in level-0 pixel coordinates.

    Parameters
    ----------
    source : path, Slide or (H, W, 3) uint8 array
        The PHH3 image or slide.
    mpp : float, optional
        Resolution to analyse at (default: level 0).  Physical sizes need a known resolution:
        ``slide_mpp`` sets it for files that do not record it; without any, the size limits
        assume 0.5 um/px and ``area_um2`` is NaN (``histoscope phh3 candidates`` warns).
    threshold : float
        DAB optical density of a stained pixel (after Gaussian smoothing of ``sigma_um``).
    min_area_um2, max_area_um2 : float
        Size window of a candidate (a nucleus; clumps of membrane staining are larger).
    tile : int
        Tile side in analysis pixels; the halo is the largest object's diameter.

    Returns
    -------
    pandas.DataFrame
        ``x``, ``y`` (centroid, level-0 px), ``area_px`` (analysis px), ``area_um2``,
        ``mean_dab``, ``max_dab``, ``eccentricity``, ``solidity``.
    """
    from tqdm.auto import tqdm

    from ..slide import open_slide
    from ..stain.deconvolution import rgb_to_dab

    if not 0 < threshold:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if not 0 <= min_area_um2 < max_area_um2:
        raise ValueError(f"need 0 <= min_area_um2 < max_area_um2, got {min_area_um2}, {max_area_um2}")
    slide = open_slide(source, mpp=slide_mpp) if not hasattr(source, "read_region") else source
    level0 = slide.mpp[0] if slide.mpp else None
    known = level0 is not None
    step_mpp = mpp if mpp is not None else (level0 if known else None)
    ds = (step_mpp / level0) if (known and step_mpp) else 1.0
    px_mpp = step_mpp if step_mpp else 0.5
    w0, h0 = slide.dimensions
    wa, ha = int(round(w0 / ds)), int(round(h0 / ds))
    min_px, max_px = min_area_um2 / px_mpp**2, max_area_um2 / px_mpp**2
    halo = int(np.ceil(2 * np.sqrt(max_px / np.pi))) + 4
    sigma = sigma_um / px_mpp
    rows = []
    grid = [(x, y) for y in range(0, ha, tile) for x in range(0, wa, tile)]
    for x, y in tqdm(grid, desc="DAB candidates", unit="tile", disable=not verbose):
        x0, y0 = max(0, x - halo), max(0, y - halo)
        x1, y1 = min(wa, x + tile + halo), min(ha, y + tile + halo)
        if step_mpp is not None and known and abs(ds - 1) > 1e-6:
            rgb = slide.read_region((int(round(x0 * ds)), int(round(y0 * ds))), (x1 - x0, y1 - y0), mpp=step_mpp)
        else:
            rgb = slide.read_region((x0, y0), (x1 - x0, y1 - y0), level=0)
        t = _components(np.asarray(rgb_to_dab(rgb), dtype=np.float32), threshold, sigma, min_px, max_px)
        if t.empty:
            continue
        ax, ay = t["cx"] + x0, t["cy"] + y0  # analysis-pixel coordinates
        core = (ax >= x) & (ax < x + tile) & (ay >= y) & (ay < y + tile)
        # a component cut by the read region's edge (not the image's) would be partial: the halo prevents it
        inner_edge = t["touches"] & ~((x0 == 0) | (y0 == 0) | (x1 == wa) | (y1 == ha))
        keep = core & ~inner_edge
        for (_, r), cx, cy in zip(t[keep].iterrows(), ax[keep], ay[keep]):
            rows.append(
                {
                    "x": float(cx * ds),
                    "y": float(cy * ds),
                    "area_px": float(r["area"]),
                    "area_um2": float(r["area"] * px_mpp**2) if step_mpp else float("nan"),
                    "mean_dab": float(r["mean_dab"]),
                    "max_dab": float(r["max_dab"]),
                    "eccentricity": float(r["eccentricity"]),
                    "solidity": float(r["solidity"]),
                }
            )
    cols = ["x", "y", "area_px", "area_um2", "mean_dab", "max_dab", "eccentricity", "solidity"]
    out = pd.DataFrame(rows, columns=cols).sort_values(["y", "x"]).reset_index(drop=True)
    out.insert(0, "candidate", np.arange(len(out)))
    return out


def candidate_patches(source: Any, candidates: pd.DataFrame, *, size: int = 64, slide_mpp: float | None = None, mpp: float | None = None) -> np.ndarray:
    """``(N, size, size, 3)`` uint8 patches centred on the candidates (for the CNNs and for labelling)."""
    from ..slide import open_slide

    slide = open_slide(source, mpp=slide_mpp) if not hasattr(source, "read_region") else source
    level0 = slide.mpp[0] if slide.mpp else None
    ds = (mpp / level0) if (mpp is not None and level0) else 1.0
    out = np.empty((len(candidates), size, size, 3), np.uint8)
    for i, (x, y) in enumerate(zip(candidates["x"], candidates["y"])):
        loc = (int(round(x - size * ds / 2)), int(round(y - size * ds / 2)))
        out[i] = slide.read_region(loc, (size, size), mpp=mpp) if ds != 1.0 else slide.read_region(loc, (size, size), level=0)
    return out


def write_candidates(candidates: pd.DataFrame, out_dir: str | os.PathLike[str], *, name: str = "PHH3 candidate") -> tuple[str, str]:
    """``candidates.csv`` and ``candidates.geojson`` (QuPath points with the measurements)."""
    from pathlib import Path

    from ..report.geojson import points_feature_collection, write_geojson

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    candidates.to_csv(out / "candidates.csv", index=False)
    fc = points_feature_collection(candidates, name=name, color=(139, 69, 19), measurements=("area_um2", "mean_dab", "max_dab", "eccentricity", "solidity"))
    write_geojson(fc, out / "candidates.geojson")
    return str(out / "candidates.csv"), str(out / "candidates.geojson")


def write_patch_folder(source: Any, table: pd.DataFrame, out_dir: str | os.PathLike[str], *, label_column: str = "label", size: int = 80, slide_mpp: float | None = None) -> dict[str, int]:
    """Candidate patches as PNG files in one folder per class (``out_dir/<label>/<candidate>.png``):
    the training input of ``histoscope phh3 train``.  Returns the count per class."""
    from pathlib import Path

    from PIL import Image

    if label_column not in table.columns:
        raise ValueError(f"the table has no {label_column!r} column; columns: {list(table.columns)}")
    patches = candidate_patches(source, table, size=size, slide_mpp=slide_mpp)
    out = Path(out_dir)
    counts: dict[str, int] = {}
    ids = table["candidate"] if "candidate" in table.columns else pd.Series(range(len(table)))
    for p, lab, cid in zip(patches, table[label_column], ids):
        d = out / str(lab)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(d / f"candidate_{int(cid):05d}.png")
        counts[str(lab)] = counts.get(str(lab), 0) + 1
    return counts

"""``histoscope phh3 candidates|register``: the PHH3 reference standard's label transfer."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pandas as pd

from .options import quiet, seed


@click.group()
def phh3() -> None:
    """PHH3 restain -> mitotic candidates -> positions on the H&E section."""


@phh3.command("candidates")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True, help="DAB optical density of a stained pixel.")
@click.option("--min-area", type=click.FloatRange(min=0), default=12.0, show_default=True, help="Smallest candidate, um^2.")
@click.option("--max-area", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True, help="Largest candidate, um^2.")
@click.option("--mpp", type=float, default=None, help="Analyse at this resolution (default: level 0).")
@click.option("--slide-mpp", type=float, default=None, help="Level-0 microns per pixel for files that do not record it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-phh3", show_default=True)
@quiet
def candidates_cmd(image, threshold, min_area, max_area, mpp, slide_mpp, out, quiet):
    """DAB-positive candidates of IMAGE (a PHH3 slide or image): candidates.csv, candidates.geojson, overlay.png."""
    from ..phh3 import dab_candidates, write_candidates
    from ..report.overlay import draw_detections
    from ..slide import open_slide

    if min_area >= max_area:
        raise click.BadParameter(f"--min-area {min_area} must be below --max-area {max_area}")
    with open_slide(image, mpp=slide_mpp) as slide:
        if slide.mpp is None:
            click.echo(f"warning: {image} records no resolution; sizes assume 0.5 um/px (give --slide-mpp)", err=True)
        c = dab_candidates(slide, mpp=mpp, threshold=threshold, min_area_um2=min_area, max_area_um2=max_area, verbose=not quiet)
        csv, gj = write_candidates(c, out)
        thumb = slide.thumbnail(2048)
        ov = draw_detections(thumb, c, slide_dimensions=slide.dimensions, color=(0, 170, 255), ring_level0_px=(8 / slide.mpp[0]) if slide.mpp else 16)
        from PIL import Image

        Image.fromarray(ov).save(Path(out) / "overlay.png")
    click.echo(f"{len(c)} candidates -> {csv}, {gj}, {Path(out) / 'overlay.png'}")


def _read_rgb(path: str) -> np.ndarray:
    from ..slide import open_slide

    with open_slide(path) as s:
        w, h = s.dimensions
        if w * h > 60_000_000:
            raise click.BadParameter(f"{path}: {w} x {h} px is too large to register in memory; export the region of interest first", param_hint="images")
        return s.read_region((0, 0), (w, h), level=0)


@phh3.command("register")
@click.argument("he", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.argument("phh3_image", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--candidates", "cand_path", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None, help="candidates.csv of the PHH3 image (default: found with the default settings).")
@click.option("--pairs", type=click.IntRange(min=1), default=10, show_default=True, help="Tile pairs for the global shift.")
@click.option("--tile", type=click.IntRange(min=32), default=256, show_default=True)
@click.option("--local-size", type=click.IntRange(min=32), default=128, show_default=True, help="Tile pair side for each candidate's local shift.")
@click.option("--max-local-shift", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-phh3", show_default=True)
@seed
@quiet
def register_cmd(he, phh3_image, cand_path, pairs, tile, local_size, max_local_shift, out, seed, quiet):
    """Register PHH3_IMAGE onto HE (the same section restained): candidate positions in H&E
    coordinates (labels.csv, labels.geojson: mitosis training labels), shifts, overlay.png."""
    from PIL import Image

    from ..phh3 import RegistrationError, dab_candidates, register_points
    from ..report.geojson import points_feature_collection, write_geojson
    from ..report.overlay import draw_detections

    fixed, moving = _read_rgb(he), _read_rgb(phh3_image)
    if cand_path:
        cands = pd.read_csv(cand_path)
        if not {"x", "y"} <= set(cands.columns):
            raise click.BadParameter(f"{cand_path}: needs x and y columns", param_hint="--candidates")
    else:
        cands = dab_candidates(moving)
    try:
        labels, g = register_points(fixed, moving, cands, n_pairs=pairs, tile=tile, local_size=local_size, max_local_shift=max_local_shift, seed=seed)
    except RegistrationError as exc:
        raise click.UsageError(f"{he} / {phh3_image}: {exc}") from None
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    labels.to_csv(o / "labels.csv", index=False)
    pts = labels.rename(columns={"x": "x_phh3", "y": "y_phh3", "x_fixed": "x", "y_fixed": "y"})
    write_geojson(points_feature_collection(pts, name="Mitosis (PHH3)", color=(200, 0, 0), measurements=("mean_dab", "area_um2")), o / "labels.geojson")
    (o / "shift.json").write_text(json.dumps({"global_shift_dy_dx": g.shift.tolist(), "pair_shifts": g.pair_shifts.tolist(), "spread_px": g.spread, "local_ok": int(labels["local_ok"].sum()), "candidates": len(labels)}, indent=2))
    ring = max(8, min(fixed.shape[:2]) // 60)
    left = draw_detections(moving, cands, slide_dimensions=(moving.shape[1], moving.shape[0]), color=(0, 170, 255), radius=ring)
    right = draw_detections(fixed, pts, slide_dimensions=(fixed.shape[1], fixed.shape[0]), color=(0, 170, 255), radius=ring)
    h = max(left.shape[0], right.shape[0])
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
    Image.fromarray(np.concatenate([pad(left), np.full((h, 8, 3), 255, np.uint8), pad(right)], 1)).save(o / "overlay.png")
    click.echo(f"global shift (dy, dx) = ({g.shift[0]:.2f}, {g.shift[1]:.2f}) px (spread {g.spread:.2f}); {len(labels)} candidates -> {o / 'labels.csv'}")

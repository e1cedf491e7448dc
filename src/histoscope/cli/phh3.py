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


def _read_rgb(path: str, slide_mpp: float | None = None) -> tuple[np.ndarray, float | None]:
    """The whole image in memory and its level-0 microns per pixel (None if unknown)."""
    from ..slide import open_slide

    with open_slide(path, mpp=slide_mpp) as s:
        w, h = s.dimensions
        if w * h > 60_000_000:
            raise click.BadParameter(f"{path}: {w} x {h} px is too large to register in memory; export the region of interest first", param_hint="images")
        return s.read_region((0, 0), (w, h), level=0), (s.mpp[0] if s.mpp else None)


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
    from ..phh3 import dab_candidates

    (fixed, _), (moving, mpp) = _read_rgb(he), _read_rgb(phh3_image)
    if cand_path:
        cands = pd.read_csv(cand_path)
        if not {"x", "y"} <= set(cands.columns):
            raise click.BadParameter(f"{cand_path}: needs x and y columns", param_hint="--candidates")
    else:
        cands = dab_candidates(moving, slide_mpp=mpp)
    _register_and_write(he, phh3_image, fixed, moving, cands, pairs=pairs, tile=tile, local_size=local_size, max_local_shift=max_local_shift, out=out, seed=seed)


def _register_and_write(he, phh3_image, fixed, moving, cands, *, pairs, tile, local_size, max_local_shift, out, seed):
    from PIL import Image

    from ..phh3 import RegistrationError, register_points
    from ..report.geojson import points_feature_collection, write_geojson
    from ..report.overlay import draw_detections

    try:
        labels, g = register_points(fixed, moving, cands, n_pairs=pairs, tile=tile, local_size=local_size, max_local_shift=max_local_shift, seed=seed)
    except RegistrationError as exc:
        raise click.UsageError(f"{he} / {phh3_image}: {exc}") from None
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    labels.to_csv(o / "labels.csv", index=False)
    pts = labels.rename(columns={"x": "x_phh3", "y": "y_phh3", "x_fixed": "x", "y_fixed": "y"})
    meas = tuple(m for m in ("mean_dab", "area_um2", "p_artifact", "p_mitosis") if m in pts.columns)
    write_geojson(points_feature_collection(pts, name="Mitosis (PHH3)", color=(200, 0, 0), measurements=meas), o / "labels.geojson")
    (o / "shift.json").write_text(json.dumps({"global_shift_dy_dx": g.shift.tolist(), "pair_shifts": g.pair_shifts.tolist(), "spread_px": g.spread, "local_ok": int(labels["local_ok"].sum()), "candidates": len(labels)}, indent=2))
    ring = max(8, min(fixed.shape[:2]) // 60)
    left = draw_detections(moving, cands, slide_dimensions=(moving.shape[1], moving.shape[0]), color=(0, 170, 255), radius=ring)
    right = draw_detections(fixed, pts, slide_dimensions=(fixed.shape[1], fixed.shape[0]), color=(0, 170, 255), radius=ring)
    h = max(left.shape[0], right.shape[0])
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
    Image.fromarray(np.concatenate([pad(left), np.full((h, 8, 3), 255, np.uint8), pad(right)], 1)).save(o / "overlay.png")
    click.echo(f"global shift (dy, dx) = ({g.shift[0]:.2f}, {g.shift[1]:.2f}) px (spread {g.spread:.2f}); {len(labels)} candidates -> {o / 'labels.csv'}")


@phh3.command("train")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--task", type=click.Choice(["artifact", "mitosis"]), required=True, help="CNN1 (folders artifact/, non-artifact/) or CNN2 (mitosis/, non-mitosis/).")
@click.option("--size", type=click.IntRange(min=32), default=64, show_default=True, help="Network input (patches may be larger: the margin is used for translation).")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True, help="Width factor of the 64-128-256-512-1024 filters and the 2048 dense layer.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--augment", default="REB", show_default=True, help="Rotation/mirroring, elastic, blur (plus translation by random crops).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-phh3-cnn", show_default=True)
@seed
@quiet
def train_cmd(folder, task, size, width, epochs, batch_size, augment, device, out, seed, quiet):
    """Train CNN1 (artifact) or CNN2 (mitosis) on FOLDER/<class>/*.png candidate patches; OUT/best.pt."""
    from ..train.phh3 import train_candidate_cnn

    try:
        res = train_candidate_cnn(folder, task=task, size=size, width=width, epochs=epochs, batch_size=batch_size, augment=augment, seed=seed, device=device, out_dir=out, verbose=not quiet)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    m = res["metrics"]
    click.echo(f"{task}: validation accuracy {m['val_accuracy']:.3f}, balanced {m['val_balanced_accuracy']:.3f}, AUROC {m['val_auroc']:.3f} ({m['train']} train / {m['val']} val patches) -> {Path(out) / 'best.pt'}")


@phh3.command("label")
@click.argument("he", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.argument("phh3_image", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--artifact-model", default=None, help="CNN1 checkpoint: candidates it calls artifacts (p >= 0.5) are dropped.")
@click.option("--mitosis-model", default=None, help="CNN2 checkpoint: only candidates it calls mitoses (p >= 0.5) are kept.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True, help="DAB optical density of a stained pixel.")
@click.option("--slide-mpp", type=float, default=None, help="Level-0 microns per pixel of the PHH3 image if it does not record it.")
@click.option("--pairs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--tile", type=click.IntRange(min=32), default=256, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-phh3", show_default=True)
@seed
@quiet
def label_cmd(he, phh3_image, artifact_model, mitosis_model, threshold, slide_mpp, pairs, tile, out, seed, quiet):
    """The whole label transfer: PHH3 candidates -> CNN1 / CNN2 filters -> positions on the H&E
    (labels.csv / labels.geojson: mitosis training labels), with candidates.csv of every candidate."""
    import torch

    from ..phh3 import dab_candidates, write_candidates
    from ..phh3.candidates import candidate_patches
    from ..utils.convert import image_to_tensor

    (fixed, _), (moving, mpp) = _read_rgb(he), _read_rgb(phh3_image, slide_mpp)
    cands = dab_candidates(moving, slide_mpp=mpp, threshold=threshold, verbose=not quiet)
    keep = np.ones(len(cands), bool)
    for opt, path, col, want in (("--artifact-model", artifact_model, "p_artifact", False), ("--mitosis-model", mitosis_model, "p_mitosis", True)):
        if path is None or cands.empty:
            continue
        from ..models.pretrained import resolve_model

        try:
            model = resolve_model(path)
        except (ValueError, FileNotFoundError) as exc:
            raise click.BadParameter(str(exc), param_hint=opt) from None
        size = model.config.input_size
        x = image_to_tensor(candidate_patches(moving, cands, size=size))
        with torch.no_grad():
            p = torch.softmax(model(x), 1)[:, 1].numpy()
        cands[col] = p
        keep &= (p >= 0.5) == want
    write_candidates(cands, out)
    kept = cands[keep].reset_index(drop=True)
    click.echo(f"{len(cands)} candidates, {len(kept)} kept after the classifiers")
    if kept.empty:
        raise click.UsageError("no candidate left to register (lower --threshold or check the models)")
    _register_and_write(he, phh3_image, fixed, moving, kept, pairs=pairs, tile=tile, local_size=128, max_local_shift=16.0, out=out, seed=seed)


"""The main job: analyse a slide end to end and write a report folder.

At this stage a slide's analysis is: metadata, thumbnail, tissue mask, tile grid over the
tissue, overlays, timings, and a self-contained ``report.html``. Later stages (tissue
classes, mitoses, hotspot, grade, compression) add their results to the same folder.

A report folder is written under a temporary name and renamed when complete, so an
interrupted run never leaves a folder that looks finished.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .slide import open_slide, tissue_mask
from .tiles import TileSpec, save_tile_table, tile_grid

__all__ = ["AnalysisConfig", "analyze_slide", "analyze_slides", "write_cohort_table"]

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 1400


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of ``histoscope analyze`` (validated on creation)."""

    tile_size: int = 256
    mpp: float = 0.5
    overlap: float = 0.0
    min_tissue: float = 0.5
    slide_mpp: float | None = None
    seed: int = 0
    #: Bundled tissue classifier drawn as a class map ("" or None: no class map).
    tissue_model: str | None = "colorectal_grader"
    #: Bundled mitosis detector (None: no mitosis detection) and how it runs ("candidates":
    #: the CNN at H&E candidates, fast on a CPU; "dense": the fully convolutional map).
    mitosis_model: str | None = "mitosis_detector"
    mitosis_mode: str = "candidates"

    def __post_init__(self) -> None:
        TileSpec(size=self.tile_size, mpp=self.mpp, overlap=self.overlap)  # validates
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.slide_mpp is not None and not self.slide_mpp > 0:
            raise ValueError(f"slide_mpp must be positive, got {self.slide_mpp}")
        if self.mitosis_mode not in ("candidates", "dense"):
            raise ValueError(f"mitosis_mode must be 'candidates' or 'dense', got {self.mitosis_mode!r}")


class _Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = time.perf_counter() - t0


def _histogram_png(values: np.ndarray, threshold: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(values, bins=np.linspace(0, 1, 21), color="#3a6fd8", edgecolor="white")
    ax.axvline(threshold, color="#d83a3a", linestyle="--", label=f"kept if >= {threshold:g}")
    ax.set_xlabel("tissue fraction of tile")
    ax.set_ylabel("tiles")
    ax.legend(frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


#: Bundled atypical-versus-normal classifier applied to every detected mitosis, when present.
ATYPICAL_MODEL = "mitosis_atypical"


def _atypical_probabilities(slide: Any, det: Any, model: Any, *, batch: int = 128) -> np.ndarray:
    """Probability that each detected mitosis is atypical (patches centred on the detections)."""
    import torch

    from .utils.convert import image_to_tensor

    size, mpp = model.config.input_size, model.config.mpp
    ds = mpp / slide.mpp[0]
    half0 = size / 2 * ds
    out = []
    xy = det[["x", "y"]].to_numpy(float)
    for i in range(0, len(xy), batch):
        patches = np.stack([slide.read_region((int(round(x - half0)), int(round(y - half0))), (size, size), mpp=mpp) for x, y in xy[i : i + batch]])
        with torch.inference_mode():
            out.append(torch.softmax(model(image_to_tensor(patches)), 1)[:, 1].numpy())
    return np.concatenate(out)


def _mitosis_stage(slide: Any, mask: Any, thumb: np.ndarray, work: Path, config: AnalysisConfig, timer: _Timer, warnings: list[str], verbose: bool) -> tuple[Any, Any, dict[str, Any]]:
    """Mitosis detections, hotspot, grade and count per 10 HPF: files, a figure and a report section."""
    from PIL import Image

    from .mitosis.detect import detect_mitoses
    from .models.pretrained import load_pretrained
    from .report import draw_detections, points_feature_collection, write_geojson

    with timer.stage("mitosis detection"):
        model = load_pretrained(config.mitosis_model)
        res = detect_mitoses(slide, model, mask=mask, mode=config.mitosis_mode, out=work / "mitosis-prob.zarr" if config.mitosis_mode == "dense" else None, verbose=verbose)
    det = res.detections
    from .models.pretrained import list_pretrained

    atypical_share = None
    if ATYPICAL_MODEL in list_pretrained() and len(det):
        with timer.stage("atypical mitoses"):
            det = det.assign(p_atypical=_atypical_probabilities(slide, det, load_pretrained(ATYPICAL_MODEL)))
            atypical_share = float((det["p_atypical"] >= 0.5).mean())
    det.to_csv(work / "detections.csv", index=False)
    write_geojson(points_feature_collection(det, name="Mitosis", measurements=[c for c in ("prob", "p_atypical") if c in det]), work / "detections.geojson")
    h = res.hotspot
    img = draw_detections(thumb, det, slide_dimensions=slide.dimensions, hotspot_xy=None if h is None else h.centre_xy, hotspot_radius_px=None if h is None else h.radius_px, ring_level0_px=8.0 / slide.mpp[0])
    Image.fromarray(img).save(work / "mitoses.png")
    s = res.summary()
    if "histoscope synthetic" in str(slide.properties.get("tiff.ImageDescription", "")):
        warnings.append(
            "This is a synthetic slide: its drawn nuclei are not real tissue, and the mitosis detector (trained on real "
            "40x breast H&E) fires on many of them. The mitosis counts and grade here show the pipeline, not a result."
        )
    card = getattr(model, "card", {})
    f1 = (card.get("test_metrics") or {}).get("all", {}).get("f1")
    fp = ((card.get("detection") or {}).get("test_at_delta") or {}).get("fp_per_mm2_monuseg")
    if fp is None or fp > 10:
        rate = "not measured" if fp is None else f"{fp:.0f} false detections per mm²"
        warnings.append(
            f"The mitosis detector {config.mitosis_model!r} is experimental: on held-out tumour fields without annotated "
            f"mitoses (MoNuSeg) it makes {rate} (see its model card), so detections, hotspot counts and grades are "
            "over-estimated. Do not read them as a mitotic count."
        )
    fig = (
        f"Mitoses ({config.mitosis_model}, {config.mitosis_mode} mode): {len(det)} detections (vermilion rings); "
        f"hotspot of {2.0:g} mm² (blue circle)",
        img,
    )
    rows = [
        ("detections", len(det)),
        ("hotspot count (95th percentile of a 2 mm² circle)", "n/a" if s["hotspot_count"] is None else f"{s['hotspot_count']:.0f}"),
        ("proliferation score (the hotspot count)", "n/a" if s["proliferation_score"] is None else f"{s['proliferation_score']:.0f}"),
        ("mitotic grade (1 / 2 / 3; thresholds 6 and 20)", "n/a" if s["grade"] is None else s["grade"]),
        ("mitoses per 10 HPF (densest area)", "n/a" if s["mitoses_per_10hpf"] is None else f"{s['mitoses_per_10hpf']:.0f} ({s['mitotic_category']})"),
        ("share of detections classified atypical (p >= 0.5)", "n/a" if atypical_share is None else f"{atypical_share:.1%}"),
        ("detector F1 on held-out patients (patch level)", "n/a" if f1 is None else f"{f1:.3f}"),
        ("detector false detections per mm² on held-out tumour fields", "n/a" if fp is None else f"{fp:.0f}"),
    ]
    return ("Mitoses", rows, ["measure", "value"]), fig, s


def analyze_slide(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: AnalysisConfig | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Analyse one slide and write ``<out_dir>/<slide name>/`` with ``report.html``.

    Returns
    -------
    dict
        A summary (also written as ``summary.json``): slide metadata, tile counts,
        tissue fraction, timings and the report path.

    Raises
    ------
    HistoscopeError
        The slide cannot be read; nothing is left in ``out_dir`` for it.
    """
    from .report import draw_tiles, overlay_mask, write_report

    config = config or AnalysisConfig()
    timer = _Timer()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    with timer.stage("open"):
        slide = open_slide(source, mpp=config.slide_mpp)
    with slide:
        final = out_dir / slide.name
        work = out_dir / f".{slide.name}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        try:
            with timer.stage("thumbnail"):
                thumb = slide.thumbnail(THUMBNAIL_SIZE)
            with timer.stage("tissue mask"):
                mask = tissue_mask(slide)
            if slide.mpp is not None:
                spec = TileSpec(size=config.tile_size, mpp=config.mpp, overlap=config.overlap)
            else:
                spec = TileSpec(size=config.tile_size, mpp=None, downsample=1.0, overlap=config.overlap)
                warnings.append(
                    f"{slide.path}: the file does not record its resolution (microns per pixel). Tiles are "
                    f"{config.tile_size} level-0 pixels, not {config.tile_size} px at {config.mpp} um/px. "
                    "Rerun with --slide-mpp (e.g. 0.25 for 40x, 0.5 for 20x) for physical units."
                )
            with timer.stage("tile grid"):
                grid = tile_grid(slide, spec, tissue=mask)
                tiles = grid[grid["tissue"] >= config.min_tissue].reset_index(drop=True)
                save_tile_table(tiles, work / "tiles.csv")
            with timer.stage("overlays"):
                tissue_img = overlay_mask(thumb, mask)
                grid_img = draw_tiles(thumb, tiles, slide_dimensions=slide.dimensions)
                hist = _histogram_png(grid["tissue"].to_numpy(), config.min_tissue)
                from PIL import Image

                Image.fromarray(thumb).save(work / "thumbnail.png")
                Image.fromarray(tissue_img).save(work / "tissue-overlay.png")
                Image.fromarray(grid_img).save(work / "tile-grid.png")
                Image.fromarray(mask.to_image()).save(work / "tissue-mask.png")
            class_section = None
            class_fig = None
            if config.tissue_model:
                from .models.pretrained import list_pretrained, load_pretrained

                if config.tissue_model not in list_pretrained():
                    warnings.append(f"tissue model {config.tissue_model!r} is not bundled ({list_pretrained()}); no class map")
                elif slide.mpp is None:
                    warnings.append("no tissue-class map: the tissue model needs the slide's resolution (--slide-mpp)")
                else:
                    from .infer import class_fractions, classify_tiles
                    from .report import CLASS_COLOUR_NAMES, draw_class_map

                    with timer.stage("tissue classes"):
                        model = load_pretrained(config.tissue_model)
                        held_out = (model.card.get("test_metrics") or {}).get("image_mean", {}).get("accuracy")
                        if held_out is None or held_out < 0.5:
                            acc = "not measured" if held_out is None else f"{held_out:.2f}"
                            warnings.append(
                                f"The tissue model {config.tissue_model!r} is experimental: its image-level accuracy on "
                                f"held-out patients is {acc} (see its model card). Do not read the class map as a grading."
                            )
                        classes_ = list(model.config.classes)
                        ctab = classify_tiles(slide, model, tissue=mask, min_tissue=config.min_tissue, verbose=verbose)
                        save_tile_table(ctab, work / "tissue-classes.csv")
                        class_img = draw_class_map(thumb, ctab, slide_dimensions=slide.dimensions, classes=classes_)
                        from PIL import Image

                        Image.fromarray(class_img).save(work / "tissue-classes.png")
                        fr = class_fractions(ctab, classes_)
                        legend = "; ".join(f"{c} = {CLASS_COLOUR_NAMES[i % len(CLASS_COLOUR_NAMES)]}" for i, c in enumerate(classes_))
                        class_fig = (f"Tissue classes ({config.tissue_model}, {len(ctab)} tiles of {model.config.input_size} px at {model.config.mpp} um/px): {legend}", class_img)
                        class_section = (
                            f"Tissue classes ({config.tissue_model})",
                            [(r["class"], r["tiles"], f"{r['fraction']:.1%}", f"{r['mean_probability']:.3f}") for r in fr.to_dict("records")],
                            ["class", "tiles", "share of tiles", "mean probability"],
                        )
                        summary_classes = {r["class"]: r["fraction"] for r in fr.to_dict("records")}
            mitosis_section = mitosis_fig = None
            if config.mitosis_model:
                from .models.pretrained import list_pretrained

                if config.mitosis_model not in list_pretrained():
                    warnings.append(f"mitosis model {config.mitosis_model!r} is not bundled ({list_pretrained()}); no mitosis detection")
                elif slide.mpp is None:
                    warnings.append("no mitosis detection: the detector needs the slide's resolution (--slide-mpp)")
                elif slide.mpp[0] > 0.35:
                    warnings.append(
                        f"no mitosis detection: mitotic figures are counted on 40x scans (about 0.25 um/px); this slide's "
                        f"finest level is {slide.mpp[0]:.3g} um/px and histoscope does not upsample."
                    )
                else:
                    mitosis_section, mitosis_fig, summary_mitosis = _mitosis_stage(slide, mask, thumb, work, config, timer, warnings, verbose)
            info = slide.info()
            mpp = slide.mpp
            tissue_mm2 = (
                mask.fraction * slide.dimensions[0] * slide.dimensions[1] * mpp[0] * mpp[1] / 1e6 if mpp else None
            )
            summary: dict[str, Any] = {
                "slide": info,
                "histoscope_version": __version__,
                "config": config.__dict__,
                "tissue_fraction": mask.fraction,
                "tissue_area_mm2": tissue_mm2,
                "tissue_mask_mpp": mask.mpp,
                "tiles_in_grid": int(len(grid)),
                "tissue_tiles": int(len(tiles)),
                "tile_mpp": None if np.isnan(grid["mpp"].iloc[0]) else float(grid["mpp"].iloc[0]) if len(grid) else None,
                "warnings": warnings,
            }
            if class_section is not None:
                summary["tissue_classes"] = summary_classes
            if mitosis_section is not None:
                summary["mitosis"] = summary_mitosis
            with timer.stage("report"):
                W, H = slide.dimensions
                meta = {
                    "file": slide.path,
                    "backend": slide.backend,
                    "dimensions (level 0)": f"{W:,} x {H:,} px",
                    "levels": ", ".join(f"{w}x{h} (x{d:.3g})" for (w, h), d in zip(slide.level_dimensions, slide.level_downsamples)),
                    "microns per pixel": "unknown" if mpp is None else f"{mpp[0]:.4g} x {mpp[1]:.4g} ({slide.mpp_source})",
                    "objective power": slide.objective_power,
                    "physical size": "unknown" if mpp is None else f"{W * mpp[0] / 1000:.2f} x {H * mpp[1] / 1000:.2f} mm",
                    "associated images": ", ".join(info["associated_images"]) or "none",
                }
                tiles_rows = {
                    "tile size": f"{spec.size} px",
                    "tile resolution": "level-0 pixels" if spec.mpp is None else f"{summary['tile_mpp']:.4g} um/px (requested {spec.mpp})",
                    "stride": f"{spec.stride_px:g} px (overlap {config.overlap:g})",
                    "tiles in grid": len(grid),
                    f"tiles with >= {config.min_tissue:.0%} tissue": len(tiles),
                    "tissue fraction of slide": f"{mask.fraction:.1%}",
                    "tissue area": "unknown" if tissue_mm2 is None else f"{tissue_mm2:.2f} mm²",
                    "tissue mask resolution": "unknown" if mask.mpp is None else f"{mask.mpp:.3g} um/px",
                }
                timings = [(k, f"{v:.2f} s") for k, v in timer.stages.items() if k != "report"]
                timings.append(("total (before the report)", f"{sum(timer.stages.values()):.2f} s"))
                write_report(
                    work / "report.html",
                    title=f"histoscope report — {slide.name}",
                    subtitle=f"{slide.path}",
                    warnings=warnings,
                    figures=[
                        ("Thumbnail", thumb),
                        ("Tissue mask (green) over the thumbnail", tissue_img),
                        (f"Tile grid: {len(tiles)} tiles of {spec.size} px with >= {config.min_tissue:.0%} tissue", grid_img),
                        *([class_fig] if class_fig else []),
                        *([mitosis_fig] if mitosis_fig else []),
                    ],
                    plots=[("Tissue fraction of every tile of the grid", hist)],
                    sections=[
                        ("Slide metadata", meta, None),
                        ("Tiles", tiles_rows, None),
                        *([class_section] if class_section else []),
                        *([mitosis_section] if mitosis_section else []),
                        ("Timings", timings, ["stage", "time"]),
                    ],
                )
            summary["timings_s"] = dict(timer.stages)
            summary["report"] = str(final / "report.html")
            (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    log.info("wrote %s", final / "report.html")
    return summary


def analyze_slides(
    sources: list[str],
    out_dir: str | os.PathLike[str],
    *,
    config: AnalysisConfig | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    verbose: bool = True,
):
    """Analyse several slides as parallel Dask jobs; a failing slide does not stop the others.

    Returns the list of :class:`~histoscope.distributed.JobResult` and writes the cohort
    table ``<out_dir>/cohort.csv``.
    """
    from .distributed import run_jobs

    results = run_jobs(
        _analyze_job, sources, workers=workers, scheduler=scheduler, verbose=verbose, out_dir=str(out_dir), config=config
    )
    write_cohort_table(results, Path(out_dir) / "cohort.csv")
    return results


def _analyze_job(source: str, *, out_dir: str, config: AnalysisConfig | None) -> dict[str, Any]:
    return analyze_slide(source, out_dir, config=config, verbose=False)


def write_cohort_table(results, path: Path) -> Path:
    """One row per slide: status, tissue, tile counts, timings, error."""
    import pandas as pd

    rows = []
    for r in results:
        row: dict[str, Any] = {"slide": str(r.item), "status": "ok" if r.ok else "failed", "seconds": round(r.seconds, 3)}
        if r.ok:
            v = r.value
            row.update(
                name=v["slide"]["name"],
                width=v["slide"]["dimensions"][0],
                height=v["slide"]["dimensions"][1],
                mpp=None if v["slide"]["mpp"] is None else v["slide"]["mpp"][0],
                tissue_fraction=round(v["tissue_fraction"], 4),
                tissue_tiles=v["tissue_tiles"],
                report=v["report"],
                error="",
            )
        else:
            row["error"] = r.error
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


"""The main job: analyse a slide end to end and write a report folder.

Per slide: metadata, thumbnail, tissue mask, tile grid over the tissue, a tissue-class map
(bundled tissue classifier; CSV, zarr maps and QuPath GeoJSON), mitosis detections with the
2 mm^2 hotspot, grade and count per 10 HPF (bundled detector; CSV and QuPath GeoJSON),
timings and peak memory per stage, the model cards and software versions used, and a
self-contained ``report.html``.

A report folder is written under a temporary name and renamed when complete, so an
interrupted run never leaves a folder that looks finished; ``summary.json`` inside it records
the configuration and the slide file's size and modification time, and a cohort rerun skips
slides whose folder is complete for the same configuration and file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .slide import open_slide, tissue_mask
from .tiles import TileSpec, save_tile_table, tile_grid
from .utils.memory import release_memory

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
    #: NIC encoder (bundled name or encoder file) to compress the slide with (None: no
    #: compression); the report shows the embedding grid as a PCA picture.
    nic_encoder: str | None = None
    #: Slide model (``histoscope nic train``) applied to the compressed slide: a slide-level
    #: prediction and its Grad-CAM overlay (needs ``nic_encoder``).
    slide_model: str | None = None

    def __post_init__(self) -> None:
        TileSpec(size=self.tile_size, mpp=self.mpp, overlap=self.overlap)  # validates
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.slide_mpp is not None and not self.slide_mpp > 0:
            raise ValueError(f"slide_mpp must be positive, got {self.slide_mpp}")
        if self.mitosis_mode not in ("candidates", "dense"):
            raise ValueError(f"mitosis_mode must be 'candidates' or 'dense', got {self.mitosis_mode!r}")
        if self.slide_model and not self.nic_encoder:
            raise ValueError("a slide model works on a compressed slide: give nic_encoder too (--nic-encoder)")


class _Timer:
    """Seconds and peak resident memory (sampled every ``interval`` s by a thread) per stage."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.stages: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self._proc = psutil.Process()
        self._peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __enter__(self) -> "_Timer":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextmanager
    def stage(self, name: str):
        self._peak = self._proc.memory_info().rss
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = time.perf_counter() - t0
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.peak_mb[name] = self._peak / 2**20
            release_memory()


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
    from .models.pretrained import list_pretrained, load_pretrained
    from .models.rcnn import MitosRCNN
    from .report import circle_feature, draw_detections, points_feature_collection, write_geojson

    with timer.stage("mitosis detection"):
        model = load_pretrained(config.mitosis_model)
        if isinstance(model, MitosRCNN):  # boxes on sub-images; mitosis_mode is the dense CNN's
            from .mitosis.rcnn import detect_mitoses_rcnn

            res = detect_mitoses_rcnn(slide, model, mask=mask, verbose=verbose)
            how = "MITOS-RCNN"
        else:
            res = detect_mitoses(slide, model, mask=mask, mode=config.mitosis_mode, out=work / "mitosis-prob.zarr" if config.mitosis_mode == "dense" else None, verbose=verbose)
            how = f"{config.mitosis_mode} mode"
    det = res.detections
    atypical_share = None
    if ATYPICAL_MODEL in list_pretrained() and len(det):
        with timer.stage("atypical mitoses"):
            det = det.assign(p_atypical=_atypical_probabilities(slide, det, load_pretrained(ATYPICAL_MODEL)))
            atypical_share = float((det["p_atypical"] >= 0.5).mean())
    det.to_csv(work / "detections.csv", index=False)
    h = res.hotspot
    collection = points_feature_collection(det, name="Mitosis", measurements=[c for c in ("prob", "p_atypical") if c in det])
    if h is not None:
        from .mitosis.hotspot import HOTSPOT_AREA_MM2

        collection["features"].insert(0, circle_feature(h.centre_xy, h.radius_px, name="Mitotic hotspot", measurements={"hotspot_count": h.count, "max_count": h.max_count, "area_mm2": HOTSPOT_AREA_MM2}))
    write_geojson(collection, work / "detections.geojson")
    img = draw_detections(thumb, det, slide_dimensions=slide.dimensions, hotspot_xy=None if h is None else h.centre_xy, hotspot_radius_px=None if h is None else h.radius_px, ring_level0_px=8.0 / slide.mpp[0])
    Image.fromarray(img).save(work / "mitoses.png")
    s = res.summary()
    s["atypical_share"] = atypical_share
    if "histoscope synthetic" in str(slide.properties.get("tiff.ImageDescription", "")):
        warnings.append(
            "This is a synthetic slide: its drawn nuclei are not real tissue, and the mitosis detector (trained on real "
            "40x breast H&E) fires on many of them. The mitosis counts and grade here show the pipeline, not a result."
        )
    card = getattr(model, "card", {})
    f1 = (card.get("test_metrics") or {}).get("all", {}).get("f1")
    detection = card.get("detection") or {}
    at_threshold = detection.get("test_at_delta") or detection.get("test_at_threshold") or {}  # dense CNN's card / the R-CNN's
    f1_level = "patch level"
    if f1 is None and at_threshold.get("f1") is not None:  # the R-CNN's card: detections matched within 8 um
        f1, f1_level = at_threshold["f1"], "detections within 8 µm"
    fp = at_threshold.get("fp_per_mm2_monuseg")
    if fp is None or fp > 10:
        rate = "not measured" if fp is None else f"{fp:.0f} false detections per mm²"
        warnings.append(
            f"The mitosis detector {config.mitosis_model!r} is experimental: on held-out tumour fields without annotated "
            f"mitoses (MoNuSeg) it makes {rate} (see its model card), so detections, hotspot counts and grades are "
            "over-estimated. Do not read them as a mitotic count."
        )
    fig = (
        f"Mitoses ({config.mitosis_model}, {how}): {len(det)} detections (vermilion rings); "
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
        (f"detector F1 on held-out patients ({f1_level})", "n/a" if f1 is None else f"{f1:.3f}"),
        ("detector false detections per mm² on held-out tumour fields", "n/a" if fp is None else f"{fp:.0f}"),
    ]
    return ("Mitoses", rows, ["measure", "value"]), fig, s


def _class_stage(slide: Any, mask: Any, thumb: np.ndarray, work: Path, config: AnalysisConfig, timer: _Timer, warnings: list[str], verbose: bool) -> tuple[Any, Any, dict[str, float]]:
    """Tissue classes: tile table, class/probability maps (zarr), QuPath GeoJSON, a figure and a report section."""
    from PIL import Image

    from .infer import class_fractions, classify_tiles
    from .models.pretrained import load_pretrained
    from .report import CLASS_COLOUR_NAMES, CLASS_COLOURS, draw_class_map, tiles_feature_collection, write_geojson

    with timer.stage("tissue classes"):
        model = load_pretrained(config.tissue_model)
        held_out = (model.card.get("test_metrics") or {}).get("image_mean", {}).get("accuracy")
        if held_out is None or held_out < 0.5:
            acc = "not measured" if held_out is None else f"{held_out:.2f}"
            warnings.append(
                f"The tissue model {config.tissue_model!r} is experimental: its image-level accuracy on "
                f"held-out patients is {acc} (see its model card). Do not read the class map as a grading."
            )
        classes = list(model.config.classes)
        ctab = classify_tiles(slide, model, tissue=mask, min_tissue=config.min_tissue, verbose=verbose)
    with timer.stage("class maps"):
        save_tile_table(ctab, work / "tissue-classes.csv")
        write_class_maps(ctab, classes, work / "tissue-classes.zarr", attrs={"model": config.tissue_model, "slide": slide.path, "mpp": model.config.mpp, "slide_dimensions": list(slide.dimensions)})
        write_geojson(tiles_feature_collection(ctab, classes, colours=CLASS_COLOURS), work / "tissue-classes.geojson")
        class_img = draw_class_map(thumb, ctab, slide_dimensions=slide.dimensions, classes=classes)
        Image.fromarray(class_img).save(work / "tissue-classes.png")
    fr = class_fractions(ctab, classes)
    legend = "; ".join(f"{c} = {CLASS_COLOUR_NAMES[i % len(CLASS_COLOUR_NAMES)]}" for i, c in enumerate(classes))
    fig = (f"Tissue classes ({config.tissue_model}, {len(ctab)} tiles of {model.config.input_size} px at {model.config.mpp} um/px): {legend}", class_img)
    section = (
        f"Tissue classes ({config.tissue_model})",
        [(r["class"], r["tiles"], f"{r['fraction']:.1%}", f"{r['mean_probability']:.3f}") for r in fr.to_dict("records")],
        ["class", "tiles", "share of tiles", "mean probability"],
    )
    return section, fig, {r["class"]: r["fraction"] for r in fr.to_dict("records")}


def _nic_stage(slide: Any, mask: Any, thumb: np.ndarray, work: Path, config: AnalysisConfig, timer: _Timer, warnings: list[str], verbose: bool) -> tuple[list, list, dict[str, Any], list]:
    """NIC: the slide compressed to an embedding grid (zarr + PCA picture); with a slide model, its prediction and Grad-CAM."""
    from PIL import Image

    from .infer.compress import compress, embedding_rgb
    from .models.nic import load_encoder

    figures: list = []
    sections: list = []
    cards: list = []
    with timer.stage("NIC compression"):
        enc = load_encoder(config.nic_encoder)
        enc.name = config.nic_encoder
        comp = compress(slide, enc, tissue=mask, out=work / "embeddings.zarr", verbose=verbose)
        rgb = embedding_rgb(comp)
        h, w = thumb.shape[:2]
        on_slide = comp.to_slide_image(rgb, (w, h), fill=255)
        Image.fromarray(on_slide).save(work / "embedding.png")
    rows, cols, C = comp.shape
    figures.append((f"Embedding grid ({config.nic_encoder} encoder, {rows} x {cols} x {C}): first 3 principal components as RGB", on_slide))
    summary: dict[str, Any] = {"encoder": config.nic_encoder, "grid": [rows, cols, C], "patches_encoded": comp.attrs["patches_encoded"]}
    info = {"encoder": config.nic_encoder, "grid (rows x cols x C)": f"{rows} x {cols} x {C}",
            "patch / stride": f"{comp.attrs['patch']} / {comp.attrs['stride']} px at {comp.attrs['mpp']:.3g} um/px" if comp.attrs.get("mpp") else f"{comp.attrs['patch']} / {comp.attrs['stride']} px",
            "patches encoded": f"{comp.attrs['patches_encoded']:,} of {comp.attrs['patches_total']:,}"}
    card = getattr(enc, "card", None)
    if card:
        cards.append((f"NIC encoder {config.nic_encoder}: card", "\n".join(f"- {k}: {v}" for k, v in card.items() if k not in ("history",))))
    if config.slide_model:
        from .nic.gradcam import gradcam_overlay, slide_gradcam
        from .nic.model import load_slide_model
        from .nic.train import predict_slides

        with timer.stage("slide-level prediction"):
            model = load_slide_model(config.slide_model)
            if model.in_channels != C:
                raise ValueError(f"{config.slide_model}: the slide model takes C = {model.in_channels} codes, the {config.nic_encoder} encoder gives {C}")
            scores = np.asarray(predict_slides(model, [comp], crop=None, seed=config.seed))[0]
            heat = slide_gradcam(model, comp.load(), tissue=comp.tissue)
            heat_img = comp.to_slide_image(heat, (w, h), fill=0.0).astype(np.float32)
            over = gradcam_overlay(thumb, heat_img, alpha=0.45)
            import matplotlib

            rgba = (matplotlib.colormaps["jet"](heat_img) * 255).astype(np.uint8)
            rgba[..., 3] = np.round(np.clip(heat_img, 0, 1) * 200).astype(np.uint8)
            Image.fromarray(rgba, "RGBA").save(work / "gradcam.png")  # the viewer's Grad-CAM layer
        mcard = getattr(model, "card", None) or {}
        info["slide model"] = f"{config.slide_model}" + (f" (trained on {mcard['data']})" if mcard.get("data") else "")
        classes = mcard.get("classes") or [str(k) for k in range(len(np.atleast_1d(scores)))]
        if model.task == "classification":
            pred = {c: float(v) for c, v in zip(classes, np.atleast_1d(scores))}
            best = max(pred, key=pred.get)
            info["slide-level prediction"] = f"{best} (p = {pred[best]:.3f})"
            summary["prediction"] = pred
        else:
            info["slide-level prediction"] = f"{float(np.atleast_1d(scores)[0]):.4g}"
            summary["prediction"] = float(np.atleast_1d(scores)[0])
        figures.append((f"Grad-CAM of the slide model's first layer (eq. 7): where the evidence for '{info['slide-level prediction']}' lies", over))
    sections.append(("Neural Image Compression", info, None))
    return figures, sections, summary, cards


def write_class_maps(table: Any, classes: list[str], path: str | os.PathLike[str], *, attrs: dict[str, Any] | None = None) -> Path:
    """A classified tile table as zarr maps on the tile grid, written atomically.

    The group holds ``class`` (rows x cols int16, the predicted class index, -1 where no
    tile was classified) and ``probability`` (rows x cols x classes float32, NaN there);
    its attributes give the classes, their colours, the level-0 ``origin`` and ``stride``
    of the grid (floats: cell ``[r, c]`` starts at level-0 ``x = origin_x + c * stride``, to
    the rounding of the tile table) and the tile footprint ``tile_level0``, so that a map cell
    can be traced back to the slide.
    """
    import zarr

    from .report import CLASS_COLOURS

    path = Path(path)
    probs = table[[f"prob_{c}" for c in classes]].to_numpy(np.float32)
    if len(table):
        # the exact step of the grid (tiles sit at rounded multiples of it), not the rounded footprint
        stride = float(table["size"].iloc[0] * table["downsample"].iloc[0])
        x, y = table["x"].to_numpy(float), table["y"].to_numpy(float)
        ox = float(np.median(x - np.rint(x / stride) * stride))
        oy = float(np.median(y - np.rint(y / stride) * stride))
        col = np.rint((x - ox) / stride).astype(int)
        row = np.rint((y - oy) / stride).astype(int)
        ox, oy = ox + col.min() * stride, oy + row.min() * stride
        col, row = col - col.min(), row - row.min()
        shape = (int(row.max()) + 1, int(col.max()) + 1)
    else:
        stride, ox, oy, shape = 1.0, 0.0, 0.0, (0, 0)
        row = col = np.zeros(0, int)
    cls = np.full(shape, -1, np.int16)
    prob = np.full((*shape, len(classes)), np.nan, np.float32)
    cls[row, col] = table["pred"].to_numpy(np.int16) if len(table) else cls[row, col]
    prob[row, col] = probs
    tmp = path.with_name(f".{path.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    g = zarr.open_group(str(tmp), mode="w")
    chunk = (min(max(shape[0], 1), 512), min(max(shape[1], 1), 512))
    g.create_array("class", shape=shape, chunks=chunk, dtype="int16", fill_value=-1)[...] = cls
    g.create_array("probability", shape=prob.shape, chunks=(*chunk, max(len(classes), 1)), dtype="float32", fill_value=float("nan"))[...] = prob
    g.attrs.update(
        {
            "classes": list(classes),
            "colours": [list(CLASS_COLOURS[i % len(CLASS_COLOURS)]) for i in range(len(classes))],
            "origin": [ox, oy],
            "stride": stride,
            "tile_level0": int(table["w0"].iloc[0]) if len(table) else 0,
            **(attrs or {}),
        }
    )
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


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
    config = config or AnalysisConfig()
    with _Timer() as timer:
        return _analyze_slide(source, Path(out_dir), config, timer, verbose)


def _versions() -> dict[str, str]:
    """Versions of histoscope, Python and the libraries whose numbers a report depends on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"histoscope": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "numpy", "scipy", "scikit-image", "openslide-python", "tifffile", "zarr", "pandas", "dask"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        import openslide

        out["OpenSlide library"] = openslide.__library_version__
    except Exception:  # noqa: BLE001 - the library is optional for non-OpenSlide files
        out["OpenSlide library"] = "not available"
    import torch

    out["torch threads"] = str(torch.get_num_threads())
    return out


def source_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and modification time of a slide file: a rerun redoes a slide whose file changed."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _analyze_slide(source: str | os.PathLike[str], out_dir: Path, config: AnalysisConfig, timer: _Timer, verbose: bool) -> dict[str, Any]:
    from .models.pretrained import pretrained_card, render_card
    from .report import draw_tiles, overlay_mask, write_report

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
            class_section = class_fig = None
            models_used: list[str] = []
            if config.tissue_model:
                from .models.pretrained import list_pretrained

                if config.tissue_model not in list_pretrained():
                    warnings.append(f"tissue model {config.tissue_model!r} is not bundled ({list_pretrained()}); no class map")
                elif slide.mpp is None:
                    warnings.append("no tissue-class map: the tissue model needs the slide's resolution (--slide-mpp)")
                else:
                    class_section, class_fig, summary_classes = _class_stage(slide, mask, thumb, work, config, timer, warnings, verbose)
                    models_used.append(config.tissue_model)
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
                    models_used += [config.mitosis_model, *([ATYPICAL_MODEL] if summary_mitosis.get("atypical_share") is not None else [])]
            nic_figs: list = []
            nic_sections: list = []
            nic_cards: list = []
            if config.nic_encoder and slide.mpp is None:
                warnings.append("no NIC compression: the encoders work at a physical resolution and the slide records none (--slide-mpp)")
            elif config.nic_encoder:
                nic_figs, nic_sections, summary_nic, nic_cards = _nic_stage(slide, mask, thumb, work, config, timer, warnings, verbose)
            info = slide.info()
            mpp = slide.mpp
            tissue_mm2 = (
                mask.fraction * slide.dimensions[0] * slide.dimensions[1] * mpp[0] * mpp[1] / 1e6 if mpp else None
            )
            summary: dict[str, Any] = {
                "slide": info,
                "source": source_fingerprint(source) if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) else None,
                "histoscope_version": __version__,
                "versions": _versions(),
                "models": models_used,
                "config": dict(config.__dict__),
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
            if nic_sections:
                summary["nic"] = summary_nic
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
                timings = [(k, f"{v:.2f} s", f"{timer.peak_mb[k]:,.0f} MB") for k, v in timer.stages.items() if k != "report"]
                timings.append(("total (before the report)", f"{sum(timer.stages.values()):.2f} s", f"{max(timer.peak_mb.values()):,.0f} MB"))
                cards = [(f"{name}: model card", render_card(pretrained_card(name))) for name in models_used]
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
                        *nic_figs,
                    ],
                    plots=[("Tissue fraction of every tile of the grid", hist)],
                    sections=[
                        ("Slide metadata", meta, None),
                        ("Tiles", tiles_rows, None),
                        *([class_section] if class_section else []),
                        *([mitosis_section] if mitosis_section else []),
                        *nic_sections,
                        ("Timings and peak memory", timings, ["stage", "time", "peak resident memory"]),
                        ("Software", summary["versions"], None),
                    ],
                    details=[("Models used", cards + nic_cards)] if cards or nic_cards else (),
                )
            summary["timings_s"] = dict(timer.stages)
            summary["peak_memory_mb"] = dict(timer.peak_mb)
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


def completed_summary(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], config: AnalysisConfig) -> dict[str, Any] | None:
    """The summary of a finished analysis of ``source`` in ``out_dir`` with ``config``, or None.

    A slide's folder counts as finished when it exists under its final name (folders are
    renamed only once complete), holds ``summary.json`` and ``report.html``, and the summary
    records the same configuration, histoscope version and slide file (path, size and
    modification time). Anything else means the slide is analysed again.
    """
    from .slide.base import slide_name

    folder = Path(out_dir) / slide_name(source)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not (folder / "report.html").is_file() or summary.get("histoscope_version") != __version__:
        return None
    if summary.get("config") != json.loads(json.dumps(config.__dict__)):
        return None
    if not os.path.isfile(source) or summary.get("source") != source_fingerprint(source):
        return None
    return summary


def analyze_slides(
    sources: list[str],
    out_dir: str | os.PathLike[str],
    *,
    config: AnalysisConfig | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    verbose: bool = True,
    force: bool = False,
):
    """Analyse several slides as parallel Dask jobs; a failing slide does not stop the others.

    Slides whose report folder is already complete for this configuration and file (see
    :func:`completed_summary`) are skipped unless ``force``: an interrupted cohort run
    resumes where it stopped. Returns the list of
    :class:`~histoscope.distributed.JobResult` (in the order of ``sources``; a skipped
    slide's result has ``value["skipped"] = True``) and writes the cohort table
    ``<out_dir>/cohort.csv`` and ``cohort.html``.

    Raises
    ------
    HistoscopeError
        Two slides would write the same report folder (same file name in different folders).
    """
    from .distributed import JobResult, run_jobs
    from .exceptions import HistoscopeError
    from .slide.base import slide_name

    config = config or AnalysisConfig()
    seen: dict[str, str] = {}
    for src in sources:
        name = slide_name(src)
        if name in seen and os.path.abspath(seen[name]) != os.path.abspath(src):
            raise HistoscopeError(f"{src} and {seen[name]} would both write {Path(out_dir) / name}: rename one, or analyse them into different --out folders")
        seen[name] = src
    sources = list(dict.fromkeys(sources))
    done: dict[int, JobResult] = {}
    if not force:
        for i, src in enumerate(sources):
            summary = completed_summary(src, out_dir, config)
            if summary is not None:
                done[i] = JobResult(src, True, value={**summary, "skipped": True})
    if done and verbose:
        log.warning("%d of %d slide(s) already analysed with this configuration: skipped (use --force to redo them)", len(done), len(sources))
    todo = [src for i, src in enumerate(sources) if i not in done]
    ran = iter(run_jobs(_analyze_job, todo, workers=workers, scheduler=scheduler, verbose=verbose, out_dir=str(out_dir), config=config))
    results = [done[i] if i in done else next(ran) for i in range(len(sources))]
    write_cohort_table(results, Path(out_dir) / "cohort.csv")
    return results


def _analyze_job(source: str, *, out_dir: str, config: AnalysisConfig | None) -> dict[str, Any]:
    return analyze_slide(source, out_dir, config=config, verbose=False)


#: Columns of the cohort table, in order.
COHORT_COLUMNS = [
    "slide", "name", "status", "seconds", "width", "height", "mpp", "tissue_area_mm2", "tissue_tiles",
    "main_class", "main_class_share", "mitoses", "hotspot_count", "grade", "mitoses_per_10hpf",
    "mitotic_category", "atypical_share", "peak_memory_mb", "warnings", "report", "error",
]


_COHORT_LABELS = {
    "seconds": "time (s)", "mpp": "um/px", "tissue_area_mm2": "tissue (mm²)", "main_class_share": "its share",
    "hotspot_count": "hotspot count (2 mm²)", "mitoses_per_10hpf": "mitoses per 10 HPF", "peak_memory_mb": "peak memory (MB)",
}


def _cohort_row(r: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COHORT_COLUMNS)
    row.update(slide=str(r.item), seconds=round(r.seconds, 3), error="")
    if not r.ok:
        row.update(status="failed", error=r.error)
        return row
    v = r.value
    row["status"] = "skipped (complete)" if v.get("skipped") else "ok"
    if v.get("skipped"):
        row["seconds"] = round(sum(v.get("timings_s", {}).values()), 3)
    sl = v["slide"]
    row.update(
        name=sl["name"], width=sl["dimensions"][0], height=sl["dimensions"][1],
        mpp=None if sl["mpp"] is None else sl["mpp"][0],
        tissue_area_mm2=None if v.get("tissue_area_mm2") is None else round(v["tissue_area_mm2"], 3),
        tissue_tiles=v["tissue_tiles"], warnings=len(v.get("warnings", [])), report=v["report"],
        peak_memory_mb=round(max(v["peak_memory_mb"].values()), 1) if v.get("peak_memory_mb") else None,
    )
    if v.get("tissue_classes"):
        main = max(v["tissue_classes"], key=v["tissue_classes"].get)
        row.update(main_class=main, main_class_share=round(v["tissue_classes"][main], 4))
    m = v.get("mitosis")
    if m:
        row.update(
            mitoses=m["detections"], hotspot_count=m["hotspot_count"], grade=m["grade"],
            mitoses_per_10hpf=m["mitoses_per_10hpf"], mitotic_category=m["mitotic_category"],
            atypical_share=None if m.get("atypical_share") is None else round(m["atypical_share"], 4),
        )
    return row


def write_cohort_table(results, path: Path) -> Path:
    """One row per slide (status, tissue, classes, mitoses, grade, time, memory, error) as CSV and HTML.

    Both files are written under temporary names and renamed. The HTML table (``path``
    with the suffix ``.html``) links every slide's report relative to its own folder.
    """
    import pandas as pd

    from .report import Link, write_report

    path = Path(path)
    rows = [_cohort_row(r) for r in results]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows, columns=COHORT_COLUMNS).to_csv(tmp, index=False)
    os.replace(tmp, path)
    shown = ["name", "status", "seconds", "mpp", "tissue_area_mm2", "main_class", "main_class_share", "mitoses", "hotspot_count", "grade", "mitoses_per_10hpf", "warnings", "peak_memory_mb", "error"]
    table = []
    for row in rows:
        cells: list[Any] = [Link(row["name"] or Path(row["slide"]).name, os.path.relpath(row["report"], path.parent)) if row["report"] else Path(row["slide"]).name]
        cells += [row[c] for c in shown[1:]]
        table.append(cells)
    n_ok = sum(r.ok for r in results)
    write_report(
        path.with_suffix(".html"),
        title="histoscope cohort",
        subtitle=f"{len(rows)} slide(s): {n_ok} analysed or complete, {len(rows) - n_ok} failed",
        sections=[("Slides", table, ["slide (report)", *[_COHORT_LABELS.get(c, c.replace("_", " ")) for c in shown[1:]]])],
    )
    return path

"""Mitosis detection with MITOS-RCNN: sub-images -> boxes -> centroids -> hotspot, grade, count per 10 HPF.

The second detector beside the dense CNN of :mod:`histoscope.mitosis.detect`, with the same
output (:class:`~histoscope.mitosis.detect.MitosisResult`), so that the hotspot, grade, the
``detect mitosis`` command and the report work unchanged. An image is cut into sub-images
(default 288 px with 48 px overlap at the model's 0.25 um/px: a 1000 x 1000 field becomes
the paper's 16 sub-images), each is Macenko-normalised as in training, the network returns
boxes with softmax mitosis scores, box centres become detections, and detections closer
than ``min_distance_um`` (25 um, as the dense detector) are merged into the best-scoring one.

:func:`evaluate_rcnn_detection` follows :func:`histoscope.mitosis.detect.evaluate_detection`
exactly: the same held-out AMi-Br crops (one mitosis at the centre) and MoNuSeg fields
(every detection a false positive), the same scored region (detections within
``margin_px`` = 32 px of an image border, the dense CNN's half patch, are dropped), the same
pooled one-to-one matching within 8 um (:func:`histoscope.metrics.f1_threshold_curve`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from .postprocess import DEFAULT_MIN_DISTANCE_UM, suppress_close

__all__ = ["DEFAULT_RCNN_MODEL", "DEFAULT_TILE", "DEFAULT_OVERLAP", "detect_boxes", "boxes_to_detections", "detect_mitoses_rcnn", "evaluate_rcnn_detection"]

log = logging.getLogger(__name__)

#: The bundled MITOS-RCNN (cascade variant).
DEFAULT_RCNN_MODEL = "mitosis_rcnn"
#: Sub-image side and overlap (pixels at the model's resolution): 16 sub-images per 1000 px field.
DEFAULT_TILE = 288
DEFAULT_OVERLAP = 48
BOX_COLUMNS = ["x1", "y1", "x2", "y2", "score"]


def _check_model(model: torch.nn.Module) -> torch.nn.Module:
    from ..models.rcnn import MitosRCNN

    if not isinstance(model, MitosRCNN):
        raise TypeError(f"expected a MITOS-RCNN model (histoscope.models.rcnn.MitosRCNN), got {type(model).__name__}")
    return model


def detect_boxes(model: torch.nn.Module, images: list[np.ndarray], *, batch_size: int = 8, device: str = "cpu") -> list[pd.DataFrame]:
    """Boxes and mitosis scores of the model on same-size ``(H, W, 3)`` uint8 images.

    Each image is stain-normalised first when the model's config asks for it (Macenko, as
    in training). Returns one DataFrame per image with ``x1, y1, x2, y2, score``.
    """
    from ..models.registry import stain_transform
    from ..utils.convert import image_to_tensor

    net = _check_model(model).to(device).eval()
    norm = stain_transform(net.config)
    out: list[pd.DataFrame] = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            chunk = [np.asarray(im) for im in images[i : i + batch_size]]
            if len({c.shape for c in chunk}) != 1:
                raise ValueError(f"images of one call must share a size, got {sorted({c.shape for c in chunk})}")
            if norm is not None:
                chunk = [norm(c) for c in chunk]
            for det in net(image_to_tensor(np.stack(chunk)).to(device)):
                b, s = det["boxes"].float().cpu().numpy(), det["scores"].float().cpu().numpy()
                out.append(pd.DataFrame({"x1": b[:, 0], "y1": b[:, 1], "x2": b[:, 2], "y2": b[:, 3], "score": s}))
    return out


def boxes_to_detections(boxes: pd.DataFrame, *, min_distance_px: float) -> pd.DataFrame:
    """Box centres as detections (``x``, ``y``, ``prob``), best first, merged closer than ``min_distance_px``."""
    if boxes.empty:
        return pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float), "prob": pd.Series(dtype=float)})
    det = pd.DataFrame({"x": (boxes["x1"] + boxes["x2"]) / 2.0, "y": (boxes["y1"] + boxes["y2"]) / 2.0, "prob": boxes["score"].astype(float)})
    return suppress_close(det.sort_values("prob", ascending=False, kind="stable"), min_distance_px=min_distance_px).reset_index(drop=True)


def detect_mitoses_rcnn(
    slide: Any,
    model: str | os.PathLike[str] | torch.nn.Module | None = None,
    *,
    slide_mpp: float | None = None,
    detection_threshold: float | None = None,
    min_distance_um: float = DEFAULT_MIN_DISTANCE_UM,
    mask: Any = "auto",
    hotspot_area_mm2: float = 2.0,
    theta1: float | None = None,
    theta2: float | None = None,
    hpf_area_mm2: float | None = None,
    grade: bool = True,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str = "cpu",
    verbose: bool = False,
) -> Any:
    """Detect mitoses with MITOS-RCNN over a slide or image; hotspot, grade and count per 10 HPF.

    Parameters
    ----------
    slide : Slide, path or HxWx3 uint8 array
    model : str, path or torch.nn.Module, optional
        Bundled name (default ``"mitosis_rcnn"``), checkpoint (``best.pt``) or module.
    slide_mpp : float, optional
        Level-0 resolution for inputs that do not record it.
    detection_threshold : float, optional
        Keep detections scoring at least this. Default: the model card's threshold (chosen
        on validation patients), else 0.5.
    min_distance_um : float
        Detections closer than this are merged (as the dense detector's ``d``).
    mask : Mask, "auto" or None
        Tissue mask: only sub-images touching tissue are run.
    tile, overlap : int
        Sub-image side and overlap in pixels at the model's resolution.
    Other parameters as :func:`histoscope.mitosis.detect_mitoses`.

    Returns
    -------
    MitosisResult
        ``dense`` is None (there is no probability map).
    """
    from ..models.pretrained import resolve_model
    from ..slide import open_slide, tissue_mask
    from ..slide.base import Slide
    from ..tiles.grid import TileSpec, tile_grid
    from .detect import MitosisResult, slide_level_counts
    from .hotspot import GRADE_THETA1, GRADE_THETA2, HPF_AREA_MM2

    if tile < 64 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 64 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    times: dict[str, float] = {}
    net = _check_model(resolve_model(DEFAULT_RCNN_MODEL if model is None else model, device=device))
    if detection_threshold is None:
        detection_threshold = float(getattr(net, "card", {}).get("detection_threshold", 0.5))
    own = not isinstance(slide, Slide)
    s = open_slide(slide, mpp=slide_mpp) if own else slide
    try:
        t = time.perf_counter()
        m = tissue_mask(s) if isinstance(mask, str) and mask == "auto" else mask
        times["tissue mask"] = time.perf_counter() - t
        level0_mpp = s.mpp[0] if s.mpp else None
        mpp = net.config.mpp if level0_mpp else None  # without a resolution, level-0 pixels are taken as they are
        ds = (mpp / level0_mpp) if mpp and level0_mpp else 1.0
        W, H = s.dimensions
        t = time.perf_counter()
        w_out, h_out = int(round(W / ds)), int(round(H / ds))
        if w_out <= tile and h_out <= tile:  # one sub-image: the image itself, unpadded (e.g. a 128 px crop)
            tiles = pd.DataFrame({"x": [0], "y": [0], "w": [w_out], "h": [h_out]})
        else:
            grid = tile_grid(s, TileSpec(size=tile, mpp=mpp, stride=tile - overlap) if mpp else TileSpec(size=tile, mpp=None, level=0, stride=tile - overlap), tissue=m, min_tissue=1e-6 if m is not None else 0.0, edge="pad")
            tiles = grid[["x", "y"]].assign(w=tile, h=tile)
        from tqdm.auto import tqdm

        found: list[pd.DataFrame] = []
        kw = {"mpp": mpp} if mpp else {"level": 0}
        for (w, h), group in tiles.groupby(["w", "h"]):
            rows = list(group.itertuples())
            for i in tqdm(range(0, len(rows), batch_size), desc="MITOS-RCNN sub-images", disable=not verbose):
                chunk = rows[i : i + batch_size]
                pixels = [s.read_region((int(r.x), int(r.y)), (int(w), int(h)), **kw) for r in chunk]
                with warnings.catch_warnings():
                    from ..exceptions import StainWarning

                    warnings.simplefilter("ignore", StainWarning)  # glass-only sub-images keep the reference stains
                    for r, b in zip(chunk, detect_boxes(net, pixels, batch_size=batch_size, device=device)):
                        b[["x1", "x2"]] = b[["x1", "x2"]] * ds + r.x
                        b[["y1", "y2"]] = b[["y1", "y2"]] * ds + r.y
                        found.append(b)
        boxes = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=BOX_COLUMNS, dtype=float)
        times["MITOS-RCNN"] = time.perf_counter() - t
        min_px = min_distance_um / level0_mpp if level0_mpp else min_distance_um / (net.config.mpp or 0.25)
        det = boxes_to_detections(boxes, min_distance_px=min_px)
        det = det[det["prob"] >= detection_threshold].reset_index(drop=True)
        hs = per = grade_ = None
        if level0_mpp and grade:
            t = time.perf_counter()
            hs, per, grade_ = slide_level_counts(
                det, s, m, level0_mpp, hotspot_area_mm2=hotspot_area_mm2, hpf_area_mm2=hpf_area_mm2 or HPF_AREA_MM2,
                theta1=GRADE_THETA1 if theta1 is None else theta1, theta2=GRADE_THETA2 if theta2 is None else theta2,
            )
            times["hotspot"] = time.perf_counter() - t
    finally:
        if own:
            s.close()
    return MitosisResult(det, None, hs, per, grade_, times)


def evaluate_rcnn_detection(
    model: torch.nn.Module,
    data: Any,
    *,
    split: str = "test",
    radius_um: float = 8.0,
    margin_px: float = 32.0,
    thresholds: np.ndarray | None = None,
    min_distance_um: float = DEFAULT_MIN_DISTANCE_UM,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 16,
    device: str = "cpu",
    verbose: bool = False,
) -> dict[str, Any]:
    """Detection F1 within ``radius_um`` on the held-out images of ``split``: the protocol of
    :func:`histoscope.mitosis.detect.evaluate_detection`, with MITOS-RCNN detections.

    Every AMi-Br crop of the split (one annotated mitosis at its centre) runs whole; every
    MoNuSeg field of the split (no annotated mitosis) runs as sub-images
    (:func:`detect_mitoses_rcnn`); detections within ``margin_px`` of a border are dropped
    (32 px: the region the dense CNN scores, so that both detectors are scored over the same
    pixels); precision / recall / F1 pool every image, a MoNuSeg detection is a false positive.

    Returns
    -------
    dict
        As ``evaluate_detection``: ``curve`` (threshold, precision, recall, f1, tp, fp, fn,
        fp_per_mm2_monuseg), ``at_0.8``, ``best``, ``monuseg_area_mm2``, ``n_amibr``,
        ``n_monuseg``, ``predictions``.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from ..exceptions import StainWarning
    from ..metrics.detection import f1_threshold_curve
    from ..slide import open_slide

    net = _check_model(model).to(device).eval()
    mpp = float(data.images.mpp)
    rows = data.subset(split)
    table = data.images.table
    amibr_items = sorted(set(rows.loc[rows["kind"] == "mitosis", "item"]))
    monuseg_items = sorted(set(rows.loc[rows["kind"].str.startswith("monuseg"), "item"]))
    min_px = min_distance_um / mpp
    preds, truth, area_mm2 = [], [], 0.0

    def keep_inside(det: pd.DataFrame, W: int, H: int) -> pd.DataFrame:
        return det[(det["x"] >= margin_px) & (det["x"] <= W - margin_px) & (det["y"] >= margin_px) & (det["y"] <= H - margin_px)]

    crops = [np.asarray(Image.open(table.loc[i, "image"]).convert("RGB")) for i in amibr_items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StainWarning)
        boxes = []
        for i in tqdm(range(0, len(crops), batch_size), desc="AMi-Br crops", disable=not verbose):
            boxes += detect_boxes(net, crops[i : i + batch_size], batch_size=batch_size, device=device)
    for item, crop, b in zip(amibr_items, crops, boxes):
        det = boxes_to_detections(b, min_distance_px=min_px)
        preds.append(keep_inside(det, crop.shape[1], crop.shape[0]).assign(image=item, kind="amibr", score=lambda d: d["prob"]))
        truth.append({"image": item, "x": crop.shape[1] / 2.0, "y": crop.shape[0] / 2.0})
    for item in tqdm(monuseg_items, desc="MoNuSeg fields", disable=not verbose):
        with open_slide(table.loc[item, "image"], mpp=mpp) as s:
            W, H = s.dimensions
            res = detect_mitoses_rcnn(s, net, detection_threshold=0.0, min_distance_um=min_distance_um, mask=None, grade=False, tile=tile, overlap=overlap, device=device)
        preds.append(keep_inside(res.detections, W, H).assign(image=item, kind="monuseg", score=lambda d: d["prob"]))
        area_mm2 += (W - 2 * margin_px) * (H - 2 * margin_px) * mpp * mpp / 1e6
    pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=["x", "y", "prob", "image", "kind", "score"])
    thr = np.round(np.arange(0.02, 1.0, 0.02), 4) if thresholds is None else np.asarray(thresholds)
    curve = f1_threshold_curve(pred[["image", "x", "y", "score"]], pd.DataFrame(truth), mpp=mpp, radius_um=radius_um, thresholds=thr)
    mon = pred[pred["kind"] == "monuseg"]
    curve["fp_per_mm2_monuseg"] = [float((mon["score"] >= t).sum() / area_mm2) if area_mm2 else float("nan") for t in curve["threshold"]]
    at = curve.iloc[int(np.argmin(np.abs(curve["threshold"].to_numpy() - 0.8)))]
    best = curve.iloc[int(np.nanargmax(curve["f1"].to_numpy()))] if curve["f1"].notna().any() else at
    return {"curve": curve, "at_0.8": at.to_dict(), "best": best.to_dict(), "monuseg_area_mm2": area_mm2, "n_amibr": len(amibr_items), "n_monuseg": len(monuseg_items), "predictions": pred}

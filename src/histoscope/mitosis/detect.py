"""Whole-slide mitosis detection: dense CNN map -> detections -> hotspot, grade and count per 10 HPF.

The pipeline of Tellez et al. (whole-slide mitosis paper): the distilled fully
convolutional CNN runs densely over the tissue (:func:`histoscope.infer.dense_map`), the
map is thresholded at 0.8, connected components become detections, detections closer than
``d`` are suppressed (:func:`histoscope.mitosis.detections_from_map`); a 2 mm^2 circle
slid over the slide gives the hotspot count (95th percentile), the proliferation score and
the grade (:func:`histoscope.mitosis.hotspot`); MITOS-RCNN's mitotic count per 10 HPF and
its low / moderate / severe category come from the same counting.

:func:`evaluate_detection` measures detection precision / recall / F1 with one-to-one
matching within 8 um (both papers) on held-out AMi-Br crops, and false detections per mm^2
on MoNuSeg fields that contain no annotated mitosis.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from .hotspot import GRADE_THETA1, GRADE_THETA2, HPF_AREA_MM2, Hotspot, MitoticCount, grade_from_count, hotspot, mitotic_count_per_10hpf
from .candidates import detect_candidates_slide
from .postprocess import DEFAULT_MAP_THRESHOLD, DEFAULT_MIN_DISTANCE_UM, detections_from_map, suppress_close

__all__ = ["MitosisResult", "resolve_mitosis_model", "detect_mitoses", "dense_crops", "evaluate_detection", "DEFAULT_MODEL"]

log = logging.getLogger(__name__)

Mode = Literal["dense", "candidates"]

#: The bundled distilled detector used when no model is named.
DEFAULT_MODEL = "mitosis_detector"


@dataclass
class MitosisResult:
    """Mitosis detections over one slide or image and what is derived from them.

    Attributes
    ----------
    detections : pandas.DataFrame
        ``x``, ``y`` (level-0 pixels) and ``prob``, most probable first.
    dense : DenseMap
        The probability map (in memory or zarr).
    hotspot : Hotspot or None
        The 2 mm^2 hotspot (None when the slide's resolution is unknown or no tissue).
    per_10hpf : MitoticCount or None
        The densest 10 HPF area's count and category (low / moderate / severe).
    grade : int or None
        1, 2 or 3 from the hotspot count (thresholds theta1, theta2).
    timings : dict
        Seconds per stage.
    """

    detections: pd.DataFrame
    dense: Any
    hotspot: Hotspot | None
    per_10hpf: MitoticCount | None
    grade: int | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def proliferation_score(self) -> float | None:
        """The paper's proliferation score: the hotspot count."""
        return None if self.hotspot is None else float(self.hotspot.count)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays)."""
        h, c = self.hotspot, self.per_10hpf
        return {
            "detections": int(len(self.detections)),
            "hotspot_count": None if h is None else float(h.count),
            "hotspot_max_count": None if h is None else float(h.max_count),
            "hotspot_centre_xy": None if h is None else [float(v) for v in h.centre_xy],
            "hotspot_radius_px": None if h is None else float(h.radius_px),
            "grade": self.grade,
            "proliferation_score": self.proliferation_score,
            "mitoses_per_10hpf": None if c is None else float(c.count),
            "mitotic_category": None if c is None else c.category,
            "hpf_area_mm2": None if c is None else float(c.hpf_area_mm2),
            "timings_s": dict(self.timings),
        }


def _scorer(net: torch.nn.Module, device: str, batch: int = 256) -> Any:
    """``(N, S, S, 3) uint8 -> (N,)`` mitosis probabilities of ``net``."""
    from ..utils.convert import image_to_tensor

    def score(crops: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), batch):
                x = image_to_tensor(crops[i : i + batch]).to(device)
                out.append(torch.softmax(net(x).float(), 1)[:, 1].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return score


def resolve_mitosis_model(model: str | os.PathLike[str] | torch.nn.Module | None = None, *, device: str = "cpu") -> torch.nn.Module:
    """A detector from a bundled name, a checkpoint path (``best.pt``) or a module (None: the bundled default)."""
    from ..models.pretrained import resolve_model

    return resolve_model(DEFAULT_MODEL if model is None else model, device=device)


def detect_mitoses(
    slide: Any,
    model: str | os.PathLike[str] | torch.nn.Module | None = None,
    *,
    slide_mpp: float | None = None,
    threshold: float = DEFAULT_MAP_THRESHOLD,
    detection_threshold: float | None = None,
    min_distance_um: float = DEFAULT_MIN_DISTANCE_UM,
    mask: Any = "auto",
    out: str | os.PathLike[str] | None = None,
    hotspot_area_mm2: float = 2.0,
    theta1: float = GRADE_THETA1,
    theta2: float = GRADE_THETA2,
    hpf_area_mm2: float = HPF_AREA_MM2,
    mode: Mode = "dense",
    grade: bool = True,
    tile: int = 1024,
    batch_size: int = 4,
    device: str = "cpu",
    verbose: bool = False,
) -> MitosisResult:
    """Detect mitoses over a slide or image and derive the hotspot, grade and count per 10 HPF.

    Parameters
    ----------
    slide : Slide, path or HxWx3 uint8 array
    model : str, path or torch.nn.Module, optional
        Bundled name (default ``"mitosis_detector"``), checkpoint or module.
    slide_mpp : float, optional
        Level-0 resolution for inputs that do not record it.
    threshold : float
        Probability-map threshold before connected components (0.8 in the paper).
    detection_threshold : float, optional
        Keep detections whose peak probability is at least this (the paper's delta).
        Default: the bundled model's ``detection_threshold`` (chosen on its validation
        patients), if it has one.
    min_distance_um : float
        Detections closer than this are merged (the paper's ``d``).
    mask : Mask, "auto" or None
        Tissue mask: the map is computed only over tissue, and the hotspot slides over tissue.
    out : path, optional
        Write the probability map to this zarr store.
    hotspot_area_mm2, theta1, theta2, hpf_area_mm2 : float
        Hotspot circle area, grade thresholds, area of one high-power field.
    mode : {"dense", "candidates"}
        ``dense``: the paper's fully convolutional map over all tissue (zarr with ``out``).
        ``candidates``: the CNN scores only patches centred on the H&E candidates
        (:func:`histoscope.mitosis.detect_candidates_slide`: dark-blob minima, recall 98 %
        of AMi-Br mitoses within 8 um) — many times faster on a CPU; ``dense`` is then None.
    grade : bool
        Compute the hotspot, grade and count per 10 HPF (needs the slide's resolution).
    tile, batch_size, device, verbose
        Passed to :func:`histoscope.infer.dense_map`.
    """
    from ..infer.dense import dense_map
    from ..slide import open_slide, tissue_mask
    from ..slide.base import Slide

    times: dict[str, float] = {}
    net = resolve_mitosis_model(model, device=device)
    if detection_threshold is None:  # the model's delta, chosen on its validation patients
        detection_threshold = getattr(net, "card", {}).get("detection_threshold")
    own = not isinstance(slide, Slide)
    s = open_slide(slide, mpp=slide_mpp) if own else slide
    try:
        t = time.perf_counter()
        m = tissue_mask(s) if isinstance(mask, str) and mask == "auto" else mask
        times["tissue mask"] = time.perf_counter() - t
        level0_mpp = s.mpp[0] if s.mpp else None
        dm = None
        if mode == "dense":
            t = time.perf_counter()
            dm = dense_map(s, net, mask=m, out=out, tile=tile, batch_size=batch_size, device=device, verbose=verbose)
            times["dense inference"] = time.perf_counter() - t
            t = time.perf_counter()
            level0_mpp = dm.level0_mpp or level0_mpp
            det = detections_from_map(
                np.asarray(dm.probs[:]),
                stride=dm.stride_px,
                origin=dm.origin_px,
                mpp=level0_mpp if level0_mpp else (dm.mpp or 1.0),
                threshold=threshold,
                min_distance_um=min_distance_um,
                detection_threshold=detection_threshold,
            )
            times["detections"] = time.perf_counter() - t
        elif mode == "candidates":
            if level0_mpp is None:
                raise ValueError(f"{getattr(s, 'path', 'image')}: candidate mode needs the slide's resolution (pass slide_mpp)")
            t = time.perf_counter()
            cand = detect_candidates_slide(s, mpp=net.config.mpp or level0_mpp, mask=m, score=_scorer(net, device), patch=net.config.input_size, verbose=verbose)
            times["candidates + CNN"] = time.perf_counter() - t
            det = cand.loc[cand["score"] >= threshold, ["x", "y", "score"]].rename(columns={"score": "prob"}).astype({"x": float, "y": float})
            det = suppress_close(det.sort_values("prob", ascending=False), min_distance_px=min_distance_um / level0_mpp)
            if detection_threshold is not None:
                det = det[det["prob"] >= detection_threshold]
            det = det.reset_index(drop=True)
        else:
            raise ValueError(f"mode must be 'dense' or 'candidates', got {mode!r}")
        hs = per = grade_ = None
        if level0_mpp and grade:
            t = time.perf_counter()
            hs, per, grade_ = slide_level_counts(det, s, m, level0_mpp, hotspot_area_mm2=hotspot_area_mm2, hpf_area_mm2=hpf_area_mm2, theta1=theta1, theta2=theta2)
            times["hotspot"] = time.perf_counter() - t
    finally:
        if own:
            s.close()
    return MitosisResult(det, dm, hs, per, grade_, times)


def slide_level_counts(
    det: pd.DataFrame,
    slide: Any,
    mask: Any,
    level0_mpp: float,
    *,
    hotspot_area_mm2: float = 2.0,
    hpf_area_mm2: float = HPF_AREA_MM2,
    theta1: float = GRADE_THETA1,
    theta2: float = GRADE_THETA2,
) -> tuple[Hotspot | None, MitoticCount | None, int | None]:
    """Hotspot, count per 10 HPF and grade of a slide's detections (level-0 ``x``, ``y``).

    ``(None, None, None)`` with a logged warning when there is no tissue or the slide is
    smaller than the hotspot grid allows. Shared by every detector.
    """
    W, H = slide.dimensions
    xy = det[["x", "y"]].to_numpy(float)
    xy = np.clip(xy, 0, [W - 1e-6, H - 1e-6]) if len(xy) else np.zeros((0, 2))
    try:
        hs = hotspot(xy, slide_shape=(H, W), mpp=level0_mpp, tissue_mask=mask, area_mm2=hotspot_area_mm2)
        per = mitotic_count_per_10hpf(xy, slide_shape=(H, W), mpp=level0_mpp, tissue_mask=mask, hpf_area_mm2=hpf_area_mm2)
        return hs, per, int(grade_from_count(hs.count, theta1=theta1, theta2=theta2))
    except ValueError as exc:  # no tissue, or a slide smaller than the hotspot grid allows
        log.warning("%s: no hotspot (%s)", getattr(slide, "path", "image"), exc)
        return None, None, None


def dense_crops(model: torch.nn.Module, crops: np.ndarray, *, batch_size: int = 32, device: str = "cpu", verbose: bool = False) -> np.ndarray:
    """Dense mitosis maps of many same-size images at once, with :func:`histoscope.infer.dense_map`'s geometry.

    Each ``(H, W, 3)`` uint8 crop is padded by ``S // 2`` white pixels on every side and run
    through ``forward_dense`` in batches; element ``(i, j)`` of a map is the probability of the
    patch centred at pixel ``(stride * j, stride * i)`` of its crop (map origin 0, stride
    ``model.stride``) — the same numbers ``dense_map`` gives for the crop, without its
    per-image set-up (test-suite checked).

    Returns
    -------
    numpy.ndarray
        ``(N, h, w)`` float32 mitosis probabilities.
    """
    from tqdm.auto import tqdm

    from ..utils.convert import image_to_tensor

    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 crops, got {crops.shape} {crops.dtype}")
    pad = model.config.input_size // 2
    st = model.stride
    h, w = -(-crops.shape[1] // st), -(-crops.shape[2] // st)  # ceil: elements centred inside the crop
    out = []
    net = model.to(device).eval()
    with torch.inference_mode():
        for i in tqdm(range(0, len(crops), batch_size), desc="dense crops", disable=not verbose):
            x = np.pad(crops[i : i + batch_size], ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=255)
            logits = net.forward_dense(image_to_tensor(x).to(device))
            out.append(torch.softmax(logits.float(), 1)[:, 1, :h, :w].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)


def evaluate_detection(
    model: torch.nn.Module,
    data: Any,
    *,
    split: str = "test",
    radius_um: float = 8.0,
    map_threshold: float = 0.5,
    thresholds: np.ndarray | None = None,
    min_distance_um: float = DEFAULT_MIN_DISTANCE_UM,
    mode: Mode = "dense",
    device: str = "cpu",
    verbose: bool = False,
) -> dict[str, Any]:
    """Detection F1 within ``radius_um`` on held-out images, and false detections per mm^2.

    Runs ``model`` densely over every AMi-Br crop of ``split`` (one annotated mitosis at its
    centre) and every MoNuSeg field of ``split`` (no annotated mitosis); detections are
    kept only where the model's whole patch lies inside the image (no padding is scored).
    Detections are extracted at ``map_threshold`` and the detection threshold is swept
    (their Fig. 7).

    Precision, recall and F1 pool every image: recall counts the AMi-Br mitoses found, false
    positives are detections away from them *and every detection on a MoNuSeg field* (a
    field without annotated mitosis; a crop alone can hold only one detection inside its
    scored centre, so crops alone would make precision meaningless).

    Returns
    -------
    dict
        ``curve`` (DataFrame: threshold, precision, recall, f1, tp, fp, fn, pooled),
        ``at_0.8`` and ``best`` rows, ``fp_per_mm2`` (MoNuSeg, per threshold in the curve),
        ``predictions`` (DataFrame of every detection).
    """
    from tqdm.auto import tqdm

    from ..metrics.detection import f1_threshold_curve
    from ..slide import open_slide

    mpp = float(data.images.mpp)
    rows = data.subset(split)
    table = data.images.table
    amibr_items = sorted(set(rows.loc[rows["kind"] == "mitosis", "item"]))
    monuseg_items = sorted(set(rows.loc[rows["kind"].str.startswith("monuseg"), "item"]))
    half = model.config.input_size / 2
    preds, truth, area_mm2 = [], [], 0.0
    net = model.to(device).eval()
    from PIL import Image

    def keep_inside(det: pd.DataFrame, W: int, H: int) -> pd.DataFrame:
        return det[(det["x"] >= half) & (det["x"] <= W - half) & (det["y"] >= half) & (det["y"] <= H - half)]

    # the AMi-Br crops share one size: in dense mode they run as batches through dense_crops
    crops = np.stack([np.asarray(Image.open(table.loc[i, "image"]).convert("RGB")) for i in amibr_items]) if amibr_items else np.zeros((0, 1, 1, 3), np.uint8)
    if mode == "dense" and len(crops):
        maps = dense_crops(net, crops, device=device, verbose=verbose)
        for item, pm in zip(amibr_items, maps):
            det = detections_from_map(pm, stride=float(net.stride), origin=(0.0, 0.0), mpp=mpp, threshold=map_threshold, min_distance_um=min_distance_um)
            preds.append(keep_inside(det, crops.shape[2], crops.shape[1]).assign(image=item, kind="amibr", score=lambda d: d["prob"]))
    else:
        for item, crop in zip(tqdm(amibr_items, desc="candidate detection", disable=not verbose), crops):
            res = detect_mitoses(crop, net, slide_mpp=mpp, threshold=map_threshold, min_distance_um=min_distance_um, mask=None, mode=mode, grade=False, detection_threshold=0.0, device=device)
            preds.append(keep_inside(res.detections, crop.shape[1], crop.shape[0]).assign(image=item, kind="amibr", score=lambda d: d["prob"]))
    for item in amibr_items:
        truth.append({"image": item, "x": crops.shape[2] / 2.0, "y": crops.shape[1] / 2.0})
    for item in tqdm(monuseg_items, desc="MoNuSeg fields", disable=not verbose):
        with open_slide(table.loc[item, "image"], mpp=mpp) as s:
            W, H = s.dimensions
            res = detect_mitoses(s, net, threshold=map_threshold, min_distance_um=min_distance_um, mask=None, mode=mode, grade=False, detection_threshold=0.0, device=device)
        preds.append(keep_inside(res.detections, W, H).assign(image=item, kind="monuseg", score=lambda d: d["prob"]))
        area_mm2 += (W - 2 * half) * (H - 2 * half) * mpp * mpp / 1e6
    pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=["x", "y", "prob", "image", "kind", "score"])
    thr = np.round(np.arange(map_threshold, 1.0, 0.02), 4) if thresholds is None else np.asarray(thresholds)
    # pooled over every image: a detection on a MoNuSeg field (no mitosis) is a false positive
    curve = f1_threshold_curve(pred[["image", "x", "y", "score"]], pd.DataFrame(truth), mpp=mpp, radius_um=radius_um, thresholds=thr)
    m = pred[pred["kind"] == "monuseg"]
    curve["fp_per_mm2_monuseg"] = [float((m["score"] >= t).sum() / area_mm2) if area_mm2 else float("nan") for t in curve["threshold"]]
    at = curve.iloc[int(np.argmin(np.abs(curve["threshold"].to_numpy() - 0.8)))]
    best = curve.iloc[int(np.nanargmax(curve["f1"].to_numpy()))] if curve["f1"].notna().any() else at
    return {
        "curve": curve,
        "at_0.8": at.to_dict(),
        "best": best.to_dict(),
        "monuseg_area_mm2": area_mm2,
        "n_amibr": len(amibr_items),
        "n_monuseg": len(monuseg_items),
        "predictions": pred,
    }



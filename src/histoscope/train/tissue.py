"""Tissue classification workflow: patches -> training -> patch- and image-level evaluation.

Implements the colorectal paper's protocol for any class list: patches from annotated regions
(sliding window, overlap 0.3, >= 50 % annotated, plus random ones), stain + morphology
augmentation, patient-level splits only, per-class precision / recall / specificity / NPV,
AUROC, confusion matrices, image-level prediction by aggregating patches, and a benign
versus malignant summary.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..tiles.labelled import LabelledImages, PatchDataset, annotated_patches, whole_image_patches
from .engine import TrainConfig, fit, predict

__all__ = ["PatchConfig", "PRESETS", "patient_folds", "train_tissue", "evaluate_tissue", "cross_validate"]

#: Data presets: how to read a known dataset's label table (the class list is configuration).
PRESETS: dict[str, dict[str, Any]] = {
    "glas": {
        "label_column": "grade_sirinukunwattana",
        "group_column": "patient_id",
        "annotation_column": "annotation",
        "classes": [
            "healthy",
            "adenomatous",
            "moderately differentiated",
            "moderately-to-poorly differentated",  # sic: the official GlaS grade file's spelling
            "poorly differentiated",
        ],
        "image_mpp": 0.62,  # GlaS: 20x, 0.62005 um/px
        "positive_classes": [2, 3, 4],  # malignant (benign = healthy + adenomatous)
    }
}


@dataclass
class PatchConfig:
    """How patches are cut (Kim et al., Fig. 4) and augmented.

    Attributes
    ----------
    size : int
        Patch side in pixels.
    mpp : float or None
        Patch resolution (None: the images' own).
    overlap : float
        Sliding-window overlap (0.3 in the paper).
    min_annotation : float
        Minimum annotated fraction (0.5).
    n_random : int
        Extra randomly placed patches per image.
    augment : str
        Augmentation letters (``histoscope.stain.Augmentation``) applied while training.
    stain : {"macenko"} or None
        Stain normalisation of every patch (training and inference; recorded in the model).
    """

    size: int = 96
    mpp: float | None = None
    overlap: float = 0.3
    min_annotation: float = 0.5
    n_random: int = 8
    augment: str = "RCSHBG"
    stain: str | None = None


def patient_folds(groups: Sequence[Any], labels: Sequence[int], k: int, *, seed: int = 0) -> list[np.ndarray]:
    """``k`` folds of image indices; a patient never appears in two folds (stratified when possible)."""
    import warnings

    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray([str(g) for g in groups])
    n_groups = len(set(groups))
    if k < 2 or k > n_groups:
        raise ValueError(f"k must be in [2, {n_groups}] (the number of patients), got {k}")
    X = np.zeros(len(groups))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only ... members"
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            return [test for _, test in splitter.split(X, np.asarray(labels), groups)]
    except ValueError:  # too few patients per class to stratify (e.g. leave-one-patient-out)
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [test for _, test in splitter.split(X, groups=groups)]


def _split_validation(images: LabelledImages, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``fraction`` of the patients for checkpoint selection."""
    groups = images.table["group"].astype(str).to_numpy()
    uniq = np.array(sorted(set(groups)))
    rng = np.random.default_rng(seed)
    n_val = max(1, round(fraction * len(uniq))) if len(uniq) > 1 else 0
    val_groups = set(rng.choice(uniq, n_val, replace=False)) if n_val else set()
    is_val = np.array([g in val_groups for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _datasets(images: LabelledImages, patch: PatchConfig, seed: int, *, train: bool) -> PatchDataset:
    from ..stain.transforms import Augmentation

    has_masks = images.table["annotation"].notna().all() and len(images)
    if has_masks:
        table = annotated_patches(images, size=patch.size, mpp=patch.mpp, overlap=patch.overlap, min_annotation=patch.min_annotation, n_random=patch.n_random if train else 0, rng=seed)
    else:  # no annotation masks: the whole image is the labelled region
        table = whole_image_patches(images, size=patch.size, mpp=patch.mpp, overlap=patch.overlap)
    from ..models.registry import ModelConfig, stain_transform

    aug = Augmentation(patch.augment, seed=seed) if train and patch.augment else None
    pixels = stain_transform(ModelConfig(arch="-", num_classes=1, stain=patch.stain))
    return PatchDataset(images, table, transform=aug, pixels=pixels)


def train_tissue(
    images: LabelledImages,
    *,
    arch: str = "small_cnn",
    patch: PatchConfig | None = None,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str],
    val_fraction: float = 0.2,
    weights: str | None = None,
    resume: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train a tissue classifier on ``images`` (patients held out for validation).

    Returns a dict with the model, the training result and the split.
    """
    from ..models import create_model

    patch = patch or PatchConfig()
    config = config or TrainConfig()
    tr, va = _split_validation(images, val_fraction, config.seed)
    train_ds = _datasets(images.subset(tr), patch, config.seed, train=True)
    val_ds = _datasets(images.subset(va), patch, config.seed, train=False)
    mpp = patch.mpp if patch.mpp is not None else images.mpp
    model = create_model(arch, num_classes=len(images.classes), classes=images.classes, input_size=patch.size, mpp=mpp, stain=patch.stain, weights=weights)
    result = fit(model, train_ds, val_ds, config, out_dir, resume=resume, verbose=verbose)
    split = {"train_groups": sorted(set(images.table["group"].iloc[tr].astype(str))), "val_groups": sorted(set(images.table["group"].iloc[va].astype(str)))}
    Path(out_dir, "split.json").write_text(json.dumps({**split, "patch": asdict(patch)}, indent=2))
    return {"model": model, "result": result, "split": split, "train_patches": len(train_ds), "val_patches": len(val_ds)}


def evaluate_tissue(
    model: Any,
    images: LabelledImages,
    *,
    patch: PatchConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    positive_classes: Sequence[int] | None = None,
    device: str = "cpu",
    verbose: bool = False,
) -> dict[str, Any]:
    """Patch- and image-level metrics of ``model`` on annotated patches of ``images``.

    Image-level predictions aggregate the image's patches by mean probability and by
    majority vote. ``positive_classes`` (e.g. the malignant grades) adds a binary summary.
    Writes tables and plots to ``out_dir`` when given.
    """
    from ..metrics import aggregate_predictions, binary_from_classes, classification_report
    from ..metrics.plots import plot_confusion_matrix, plot_roc_curves

    patch = patch or PatchConfig()
    ds = _datasets(images, patch, 0, train=False)
    probs, labels = predict(model, ds, device=device, verbose=verbose)
    classes = list(images.classes)
    patch_report = classification_report(labels, probs, classes=classes)
    groups = ds.patches["name"].to_numpy()
    image_labels = images.table.set_index("name")["label"]
    out: dict[str, Any] = {"patch": patch_report, "n_patches": len(labels)}
    no_patch = sorted(set(images.table["name"]) - set(groups))
    out["images_without_patches"] = no_patch
    if no_patch:
        import logging

        logging.getLogger(__name__).warning(
            "%d image(s) yield no patch at this size/resolution and are left out of image-level metrics: %s", len(no_patch), no_patch[:5]
        )
    for method in ("mean", "vote"):
        agg = aggregate_predictions(probs, groups, method=method, classes=classes)
        y_img = image_labels.loc[agg.index].to_numpy(int)
        p_img = agg[[f"prob_{c}" for c in classes]].to_numpy()
        rep = classification_report(y_img, p_img, classes=classes)
        if method == "vote":  # the vote decides the class; report it on the vote, not the mean
            out["image_vote_accuracy"] = float((agg["pred"].to_numpy(int) == y_img).mean())
        out[f"image_{method}"] = rep
        out[f"image_{method}_table"] = agg.assign(true=y_img)
        if positive_classes is not None:
            out[f"binary_{method}"] = binary_from_classes(y_img, agg["pred"].to_numpy(int), positive=positive_classes, n_classes=len(classes))
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        plot_confusion_matrix(patch_report.confusion, classes, d / "confusion_patch.png", title="patch level")
        plot_confusion_matrix(out["image_mean"].confusion, classes, d / "confusion_image.png", title="image level (mean probability)")
        plot_roc_curves(labels, probs, classes, d / "roc_patch.png")
        pd.DataFrame({"name": groups, "label": labels, "pred": probs.argmax(1), **{f"p_{c}": probs[:, i] for i, c in enumerate(classes)}}).to_csv(d / "patch_predictions.csv", index=False)
        cam_grid(model, ds, probs, labels, classes, d / "cam.png", device=device)
    return out


def cam_grid(model: Any, ds: PatchDataset, probs: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, *, per_class: int = 2, device: str = "cpu") -> Path | None:
    """A figure like Kim et al.'s Fig. 9: per class, its most confident patches with their CAM."""
    import torch

    from ..explain import cam_figure, class_activation_map
    from ..utils.convert import image_to_tensor

    picks = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        picks += list(idx[np.argsort(-probs[idx, c])][:per_class])
    if not picks:
        return None
    images = np.stack([ds.read(int(i)) for i in picks])
    x = image_to_tensor(images).to(device)
    with torch.enable_grad():
        cams = class_activation_map(model, x).cpu().numpy()
    titles = [f"true: {classes[labels[i]]}\npred: {classes[int(probs[i].argmax())]} {probs[i].max():.2f}" for i in picks]
    return cam_figure(images, cams, path, titles=titles, ncols=4)


def cross_validate(
    images: LabelledImages,
    *,
    arch: str = "small_cnn",
    folds: int = 3,
    patch: PatchConfig | None = None,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str],
    positive_classes: Sequence[int] | None = None,
    verbose: bool = True,
) -> pd.DataFrame:
    """Patient-level k-fold cross-validation: train on k-1 folds, test on the held-out patients.

    Returns one row per fold (and a mean row) of patch- and image-level accuracy, macro
    precision / recall / specificity / NPV, macro AUROC and (with ``positive_classes``) the
    binary accuracy; writes per-fold outputs and ``cv_summary.csv`` / ``cv_per_class.csv``.
    """
    patch = patch or PatchConfig()
    config = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = patient_folds(images.table["group"], images.table["label"], folds, seed=config.seed)
    rows, per_class = [], []
    for k, test_idx in enumerate(parts):
        train_idx = np.setdiff1d(np.arange(len(images)), test_idx)
        fold_dir = out / f"fold{k + 1}"
        trained = train_tissue(images.subset(train_idx), arch=arch, patch=patch, config=config, out_dir=fold_dir, verbose=verbose)
        ev = evaluate_tissue(trained["model"], images.subset(test_idx), patch=patch, out_dir=fold_dir, positive_classes=positive_classes, device=config.device)
        row = {"fold": k + 1, "test_patients": ",".join(sorted(set(images.table["group"].iloc[test_idx].astype(str)))), "test_images": len(test_idx), "test_patches": ev["n_patches"]}
        for level, rep in (("patch", ev["patch"]), ("image", ev["image_mean"])):
            row[f"{level}_accuracy"] = rep.accuracy
            macro = rep.per_class.loc["macro"]
            for m in ("precision", "recall", "specificity", "npv"):
                row[f"{level}_{m}"] = float(macro[m])
            row[f"{level}_auroc"] = rep.auroc_macro
        row["image_vote_accuracy"] = ev["image_vote_accuracy"]
        if positive_classes is not None:
            row["binary_accuracy"] = ev["binary_mean"].accuracy
        rows.append(row)
        pc = ev["patch"].per_class.drop(index=[i for i in ("macro", "weighted") if i in ev["patch"].per_class.index]).copy()
        pc["fold"] = k + 1
        per_class.append(pc.reset_index().rename(columns={"index": "class"}))
    summary = pd.DataFrame(rows)
    mean = summary.drop(columns=["fold", "test_patients"]).mean(numeric_only=True)
    summary = pd.concat([summary, pd.DataFrame([{"fold": "mean", **mean.to_dict()}])], ignore_index=True)
    summary.to_csv(out / "cv_summary.csv", index=False)
    pcs = pd.concat(per_class, ignore_index=True)
    pcs.to_csv(out / "cv_per_class.csv", index=False)
    return summary

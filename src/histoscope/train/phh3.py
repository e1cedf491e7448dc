"""Training the PHH3 candidate classifiers (CNN1 artifact, CNN2 mitosis) and the multi-observer vote.

Input: a folder of labelled candidate patches, one sub-folder per class (``artifact/`` and
``non-artifact/``, or ``mitosis/`` and ``non-mitosis/``).  Patches may be larger than the
network's input: the margin is used for the paper's *translation* augmentation (random crops),
beside rotation / mirroring, elastic deformation and blur (letters ``R E B``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..tiles.labelled import LabelledImages, PatchDataset, read_class_folders
from .engine import TrainConfig, fit, predict

__all__ = ["majority_vote", "train_candidate_cnn", "TASK_CLASSES"]

#: Class folders of the two tasks (negative first, so that column 1 is the positive class).
TASK_CLASSES: dict[str, list[str]] = {"artifact": ["non-artifact", "artifact"], "mitosis": ["non-mitosis", "mitosis"]}


def majority_vote(labels: pd.DataFrame, observers: Sequence[str] | None = None, *, min_agree: int = 3) -> pd.DataFrame:
    """Keep the samples on which at least ``min_agree`` observers give the same label.

    ``labels`` has one row per sample and one column per observer (``observers``; default:
    every column starting with ``observer``); missing readings (NaN) do not vote.  Returns
    the kept rows with ``label`` (the majority) and ``agree`` (its votes) added.
    """
    cols = list(observers) if observers is not None else [c for c in labels.columns if str(c).startswith("observer")]
    if not cols:
        raise ValueError(f"no observer columns (give observers=, or name them observer_*); columns: {list(labels.columns)}")
    if min_agree < 1 or min_agree > len(cols):
        raise ValueError(f"min_agree must be in 1..{len(cols)} for {len(cols)} observers, got {min_agree}")
    votes = labels[cols]
    best, count = [], []
    for _, row in votes.iterrows():
        vc = row.dropna().value_counts()
        if vc.empty:
            best.append(None)
            count.append(0)
            continue
        top = vc.iloc[0]
        tied = (vc == top).sum() > 1
        best.append(None if tied else vc.index[0])
        count.append(0 if tied else int(top))
    out = labels.assign(label=best, agree=count)
    return out[out["agree"] >= min_agree].reset_index(drop=True)


def _centre_table(images: LabelledImages, size: int) -> pd.DataFrame:
    from PIL import Image

    rows = []
    for i, r in images.table.iterrows():
        with Image.open(r["image"]) as im:
            w, h = im.size
        if w < size or h < size:
            raise ValueError(f"{r['image']}: {w} x {h} px is smaller than the {size} px input")
        rows.append({"item": i, "x": (w - size) // 2, "y": (h - size) // 2, "size": size, "label": int(r["label"]), "downsample": 1.0, "margin": min(w, h) - size})
    return pd.DataFrame(rows)


class _Translated(Dataset):
    """The whole stored patch, augmented, then randomly cropped to ``size`` (translation)."""

    def __init__(self, images: LabelledImages, table: pd.DataFrame, size: int, letters: str, seed: int) -> None:
        from ..stain.transforms import Augmentation

        m = table["margin"].clip(upper=32) // 2 * 2  # up to +-16 px of translation
        full = table.assign(x=table["x"] - m // 2, y=table["y"] - m // 2, size=table["size"] + m)
        self.base = PatchDataset(images, full)
        self.aug = Augmentation(letters, crop=size, seed=seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.base[i]
        return self.aug(x[None])[0], y


def train_candidate_cnn(
    folder: str | os.PathLike[str],
    *,
    task: str = "artifact",
    size: int = 64,
    width: float = 0.25,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 1e-3,
    augment: str = "REB",
    val_fraction: float = 0.25,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | os.PathLike[str] = "histoscope-phh3-cnn",
    verbose: bool = True,
) -> dict[str, Any]:
    """Train CNN1 (``task="artifact"``) or CNN2 (``task="mitosis"``) on a folder of patches.

    A stratified random ``val_fraction`` of the patches selects the epoch; returns the model
    and its validation metrics (accuracy, balanced accuracy, AUROC), also in ``out_dir``.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from ..models import create_model
    from ..utils.seed import seed_everything

    if task not in TASK_CLASSES:
        raise ValueError(f"task must be one of {sorted(TASK_CLASSES)}, got {task!r}")
    classes = TASK_CLASSES[task]
    images = read_class_folders(folder, classes=classes)
    labels = images.table["label"].to_numpy(int)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"{folder}: need at least 2 patches per class, got {dict(zip(classes, counts.tolist()))}")
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val[idx[: max(1, int(round(len(idx) * val_fraction)))]] = True
    table = _centre_table(images, size)
    train_ds = _Translated(images, table[~val].reset_index(drop=True), size, augment, seed)
    val_ds = PatchDataset(images, table[val].reset_index(drop=True))
    seed_everything(seed)
    model = create_model("phh3_cnn", num_classes=2, classes=classes, input_size=size, width=width)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", schedule="exponential", lr_final=lr / 30, select="val_loss", seed=seed, device=device, num_workers=0)
    fit(model, train_ds, val_ds, cfg, out_dir, verbose=verbose)
    p, y = predict(model.eval(), val_ds, device=device)
    metrics = {
        "task": task,
        "classes": classes,
        "train": int((~val).sum()),
        "val": int(val.sum()),
        "val_accuracy": float((p.argmax(1) == y).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(y, p.argmax(1))),
        "val_auroc": float(roc_auc_score(y, p[:, 1])) if len(set(y)) == 2 else float("nan"),
    }
    Path(out_dir, "val_metrics.json").write_text(json.dumps(metrics, indent=2))
    return {"model": model.eval(), "metrics": metrics}

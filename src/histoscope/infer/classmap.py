"""Tissue-class maps: a tissue classifier run over every tissue tile of a slide.

Tiles come from the one grid function at the model's own resolution and input size
(``model.config.mpp`` / ``input_size``); reading overlaps with inference (threads), and
the result is a tile table with one probability column per class and the predicted class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..slide.base import Slide
from ..slide.mask import Mask
from ..tiles import TileSpec, iter_tiles, tile_grid
from ..utils.convert import image_to_tensor

__all__ = ["classify_tiles", "class_fractions"]


def classify_tiles(
    slide: Slide,
    model: torch.nn.Module,
    *,
    tissue: Mask | None = None,
    min_tissue: float = 0.5,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 2,
    verbose: bool = False,
) -> pd.DataFrame:
    """Classify every tissue tile of ``slide`` with ``model``.

    Parameters
    ----------
    slide : Slide
    model : torch.nn.Module
        With ``config`` (classes, input_size, mpp), e.g. ``load_pretrained("colorectal_grader")``.
    tissue : Mask, optional
        Tissue mask (tiles below ``min_tissue`` are skipped).
    batch_size, device, workers, verbose :
        Inference batch, torch device, reader threads, progress bar.

    Returns
    -------
    pandas.DataFrame
        The tile table plus ``prob_<class>`` columns and ``pred`` (class id).

    Raises
    ------
    MppUnavailableError
        The model has a resolution and the slide records none (pass ``mpp=`` when opening).
    """
    cfg = model.config
    if cfg.mpp is not None:
        slide.require_mpp()
        spec = TileSpec(size=cfg.input_size, mpp=cfg.mpp)
    else:
        spec = TileSpec(size=cfg.input_size, mpp=None, downsample=1.0)
    table = tile_grid(slide, spec, tissue=tissue, min_tissue=min_tissue if tissue is not None else 0.0)
    dev = torch.device(device)
    model = model.to(dev).eval()
    probs = np.zeros((len(table), cfg.num_classes), dtype=np.float32)
    batch: list[np.ndarray] = []
    start = 0

    def flush() -> None:
        nonlocal start, batch
        if not batch:
            return
        with torch.inference_mode():
            p = torch.softmax(model(image_to_tensor(np.stack(batch)).to(dev)).float(), 1).cpu().numpy()
        probs[start : start + len(batch)] = p
        start += len(batch)
        batch = []

    from ..models.registry import stain_transform

    pixels = stain_transform(cfg)
    for tile in iter_tiles(slide, table, workers=workers, verbose=verbose, desc=f"classify {slide.name}"):
        batch.append(pixels(tile) if pixels is not None else tile)
        if len(batch) == batch_size:
            flush()
    flush()
    out = table.copy()
    for i, c in enumerate(cfg.classes):
        out[f"prob_{c}"] = probs[:, i]
    out["pred"] = probs.argmax(1) if len(out) else np.zeros(0, int)
    return out


def class_fractions(table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Share of tiles predicted as each class (and the mean probability)."""
    n = max(len(table), 1)
    rows = []
    for i, c in enumerate(classes):
        rows.append({"class": c, "tiles": int((table["pred"] == i).sum()), "fraction": float((table["pred"] == i).sum() / n), "mean_probability": float(table[f"prob_{c}"].mean()) if len(table) else float("nan")})
    return pd.DataFrame(rows)

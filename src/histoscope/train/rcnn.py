"""Training MITOS-RCNN on the real mitosis data (MITOS-BOXES), with checkpoint selection by validation F1.

The paper's optimiser (SGD, momentum 0.9, weight decay 5e-4) on a schedule sized for a CPU:
``epochs`` passes over the training AMi-Br crops (random 96 px windows, rotations), each
batch a quarter MoNuSeg sub-images (no mitosis), a linear warm-up, the learning rate
divided by 10 for the last quarter of the epochs. After every epoch the model detects on
the validation patients (:func:`histoscope.mitosis.rcnn.evaluate_rcnn_detection`) and the
epoch with the best detection F1 within 8 um is kept (``best.pt``, loadable with
:func:`histoscope.train.load_checkpoint`: tensors and plain values only).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..datasets.mitosis import DATA_MPP, MITOSIS_CLASSES, MitosisData
from ..models.rcnn import VARIANTS

__all__ = ["RcnnTrainConfig", "train_rcnn", "new_rcnn", "select_threshold"]


@dataclass
class RcnnTrainConfig:
    """Settings of :func:`train_rcnn`.

    Attributes
    ----------
    variant : {"conv5", "conv4", "cascade"}
    width : float
        VGG-16 channel multiplier.
    epochs : int
    iterations : int or None
        Iterations per epoch (default: one pass over the training AMi-Br crops).
    batch_size : int
        Images per step; ``round(batch_size * monuseg_fraction)`` of them MoNuSeg sub-images.
    lr, momentum, weight_decay : float
        SGD (the paper: momentum 0.9, weight decay 5e-4).
    warmup : int
        Iterations of linear learning-rate warm-up.
    window : int
        Training window side in pixels (at 0.25 um/px).
    box_um : float
        MITOS-BOXES box side in microns.
    monuseg_fraction : float
    stain : {"macenko"} or None
    box_weight : float
        Lambda of eq. 2.
    seed : int
    device : str
    """

    variant: str = "cascade"
    width: float = 0.25
    epochs: int = 6
    iterations: int | None = None
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: int = 100
    window: int = 96
    box_um: float = 8.0
    monuseg_fraction: float = 0.25
    stain: str | None = "macenko"
    box_weight: float = 10.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown MITOS-RCNN variant {self.variant!r}; choose one of {list(VARIANTS)}")
        if self.epochs < 1 or self.batch_size < 1 or (self.iterations is not None and self.iterations < 1):
            raise ValueError(f"epochs, batch_size and iterations must be >= 1, got {self.epochs}, {self.batch_size}, {self.iterations}")
        if not (self.lr > 0 and self.width > 0 and self.box_um > 0):
            raise ValueError(f"lr, width and box_um must be positive, got {self.lr}, {self.width}, {self.box_um}")
        if not 0 <= self.monuseg_fraction < 1:
            raise ValueError(f"monuseg_fraction must be in [0, 1), got {self.monuseg_fraction}")
        if self.window < 64:
            raise ValueError(f"window must be >= 64 px, got {self.window}")

    def lr_at(self, epoch: int, step: int) -> float:
        """Learning rate at (0-based) ``epoch`` and global ``step``."""
        lr = self.lr * (0.1 if self.epochs > 1 and epoch >= math.ceil(0.75 * self.epochs) else 1.0)
        return lr * min(1.0, (step + 1) / self.warmup) if self.warmup else lr


def new_rcnn(config: RcnnTrainConfig) -> torch.nn.Module:
    """A freshly initialised MITOS-RCNN for ``config`` (registry name ``mitos_rcnn``)."""
    from ..models import create_model

    return create_model(
        "mitos_rcnn", num_classes=2, classes=["background", MITOSIS_CLASSES[1]], input_size=config.window, mpp=DATA_MPP,
        stain=config.stain, variant=config.variant, width=config.width, box_weight=config.box_weight,
    )  # fmt: skip


def select_threshold(val: dict[str, Any]) -> float:
    """The detection threshold with the best validation F1 (ties: the higher threshold)."""
    c = val["curve"]
    f1 = c["f1"].fillna(-1).to_numpy()
    return float(c["threshold"].to_numpy()[np.flatnonzero(f1 == f1.max())[-1]])


def _batches(n_pos: int, n_neg: int, config: RcnnTrainConfig, epoch: int) -> list[list[int]]:
    """Index batches of one epoch: positives (AMi-Br) in a fresh permutation, MoNuSeg sub-images at random."""
    rng = np.random.default_rng([config.seed, epoch, 7])
    k_neg = int(round(config.batch_size * config.monuseg_fraction)) if n_neg else 0
    k_pos = config.batch_size - k_neg
    order = rng.permutation(n_pos)
    iters = config.iterations or max(1, math.ceil(n_pos / max(k_pos, 1)))
    out = []
    for i in range(iters):
        pos = [int(order[(i * k_pos + j) % n_pos]) for j in range(k_pos)]
        neg = [n_pos + int(v) for v in rng.integers(0, n_neg, k_neg)] if k_neg else []
        out.append(pos + neg)
    return out


def train_rcnn(data: MitosisData, config: RcnnTrainConfig, out_dir: str | os.PathLike[str], *, verbose: bool = True, train_images: Any = None, validate: bool = True) -> dict[str, Any]:
    """Train MITOS-RCNN on the training patients of ``data``; keep the epoch with the best validation F1.

    Parameters
    ----------
    data : MitosisData
        From :func:`histoscope.datasets.mitosis.mitosis_samples` (its patient split is used).
    config : RcnnTrainConfig
    out_dir : path
        Receives ``best.pt``, ``last.pt``, ``metrics.csv`` / ``metrics.json``.
    train_images : list of BoxImage, optional
        Use these instead of the training split's (tests: a couple of crops).
    validate : bool
        Detect on the validation patients after each epoch (False: keep the last epoch).

    Returns
    -------
    dict
        ``model`` (best epoch, eval mode), ``history`` (DataFrame), ``best_epoch``,
        ``best_path``, ``val`` (the best epoch's validation evaluation or None).
    """
    from tqdm.auto import tqdm

    from ..datasets.mitosis_boxes import MitosisBoxes, box_images, collate
    from ..mitosis.rcnn import evaluate_rcnn_detection
    from ..utils.device import resolve_device
    from ..utils.seed import seed_everything
    from .engine import _plain, _save, read_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if train_images is None:
        train_images = box_images(data, "train", stain=config.stain)
    pos = [b for b in train_images if b.kind != "monuseg"]
    neg = [b for b in train_images if b.kind == "monuseg"]
    if not pos:
        raise ValueError("no training images with a mitosis")
    ds = MitosisBoxes(pos + neg, window=config.window, box_um=config.box_um, seed=config.seed)
    model = new_rcnn(config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    model_cfg = model.config.to_dict()
    history: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    best_val = None
    step = 0
    best_path, last_path = out / "best.pt", out / "last.pt"
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        model.train()
        ds.set_epoch(epoch)
        batches = _batches(len(pos), len(neg), config, epoch)
        sums: dict[str, float] = {}
        bar = tqdm(batches, desc=f"{config.variant} epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not verbose, leave=False)
        for idx in bar:
            x, targets = collate([ds[i] for i in idx])
            x = x.to(device)
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            for g in opt.param_groups:
                g["lr"] = config.lr_at(epoch, step)
            losses = model(x, targets)
            loss = model.loss(losses)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}, step {step}: the loss became {float(loss.detach())}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            step += 1
            for k, v in {"loss": loss, **losses}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{sums['loss'] / (bar.n + 1):.3f}")
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **{f"train_{k}": v / len(batches) for k, v in sums.items()}}
        val = None
        if validate:
            val = evaluate_rcnn_detection(model, data, split="val", device=str(device))
            row.update({"val_f1": float(val["best"]["f1"]), "val_threshold": float(val["best"]["threshold"]), "val_precision": float(val["best"]["precision"]), "val_recall": float(val["best"]["recall"])})
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        score = (row.get("val_f1", float(epoch)), epoch + 1)
        score = (-1.0 if np.isnan(score[0]) else score[0], score[1])
        payload = {"model": model.state_dict(), "config": model_cfg, "epoch": epoch + 1, "metrics": _plain(row), "train_config": _plain(asdict(config))}
        if best is None or score[0] > best[0]:
            best, best_val = score, val
            _save(best_path, payload)
        _save(last_path, payload)
        pd.DataFrame(history).to_csv(out / "metrics.csv", index=False)
        (out / "metrics.json").write_text(json.dumps({"history": history, "best_epoch": best[1], "train_config": asdict(config)}, indent=2, default=str))
        if verbose:
            tqdm.write(
                f"{config.variant} epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.3f}"
                + (f" | val F1 {row['val_f1']:.3f} at {row['val_threshold']:.2f}" if validate else "")
                + f" | {row['seconds']:.0f} s"
            )
    model.load_state_dict(read_checkpoint(best_path, map_location=device)["model"])
    return {
        "model": model.eval(), "history": pd.DataFrame(history), "best_epoch": best[1] if best else 0, "best_path": best_path, "val": best_val,
        "steps_per_epoch": len(batches), "positives": len(pos), "negatives": len(neg),  # steps: the same every epoch
    }  # fmt: skip

"""Training the mitosis detector: hard-negative mining, bagging ensemble, knowledge distillation.

Tellez et al. (whole-slide mitosis paper, section V): the all-convolutional CNN
(:mod:`histoscope.models.mitosis`) trains on balanced mini-batches of 64 with Adam, L2
1e-5, a learning rate decayed exponentially from 1e-3 to 3e-5, keeps the checkpoint of
best validation F1 and augments by letter string (their ablation RSEB / RCSEB / RCSEHBG).

1. an *easy* model on uniformly sampled negatives;
2. negatives resampled in proportion to the easy model's mitosis probability (hard negatives);
3. a bagging ensemble of ``k`` networks, each on its own bootstrap of the negatives;
4. a *student* of width ``gamma`` trained on the ensemble's averaged probabilities.

Everything here goes through the one training engine (:func:`histoscope.train.engine.fit`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..datasets.mitosis import MITOSIS_CLASSES, MitosisData
from ..tiles.labelled import PatchDataset
from .engine import TrainConfig, fit, predict
from .sampling import BalancedBatchSampler, bootstrap_negatives, hard_negative_weights

__all__ = ["MitosisTrainConfig", "Ensemble", "ATYPICAL_CLASSES", "train_mitosis", "train_detector", "train_atypical", "evaluate_patches", "colour_baselines", "count_parameters"]

log = logging.getLogger(__name__)


@dataclass
class MitosisTrainConfig:
    """Settings of :func:`train_mitosis` (defaults: the paper's, on a CPU-sized schedule).

    Attributes
    ----------
    width : float
        Width factor gamma of the ensemble members.
    augment : str
        Augmentation letters (``histoscope.stain.Augmentation``): ``RCSEHBG`` is the
        paper's best; ``""`` none.
    epochs : int
        Passes over the training positives.
    batch_size : int
        Balanced: half positives (64 in the paper).
    lr, lr_final, weight_decay : float
        Adam with L2 1e-5, exponential decay 1e-3 -> 3e-5.
    hard_negatives : bool
        Train the easy model first and resample negatives by its probabilities.
    ensemble : int
        Bagging members (``k``); 1 = a single CNN.
    distill_width : float or None
        Width of the distilled student (None: no student).
    strides : tuple of 8 ints or None
        Strides of every network's 3x3 layers (None: Table II's;
        ``histoscope.models.mitosis.STRIDE2_FIRST``: the one-pixel paper's stride-2 variant).
    seed : int
    device : str
    num_workers : int
    """

    width: float = 1.0
    augment: str = "RCSEHBG"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    lr_final: float = 3e-5
    weight_decay: float = 1e-5
    hard_negatives: bool = True
    ensemble: int = 1
    distill_width: float | None = None
    strides: tuple[int, ...] | None = None
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")
        if self.distill_width is not None and not self.distill_width > 0:
            raise ValueError(f"distill_width must be > 0, got {self.distill_width}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")

    def engine(self, seed_offset: int = 0) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_final=self.lr_final,
            schedule="exponential",
            optimizer="adam",
            weight_decay=self.weight_decay,
            select="val_f1",
            seed=self.seed + seed_offset,
            device=self.device,
            num_workers=self.num_workers,
        )


class Ensemble(torch.nn.Module):
    """Averaged probabilities of ``members`` (returned as log-probabilities, i.e. logits).

    ``softmax(Ensemble(x))`` is the mean of the members' softmax outputs, so every
    caller that takes logits (predict, dense inference, the one-pixel audit) takes it.
    """

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    def _mean(self, outs: list[torch.Tensor]) -> torch.Tensor:
        return torch.log(torch.stack([torch.softmax(o, 1) for o in outs]).mean(0).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mean([m(x) for m in self.members])

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self._mean([m.forward_dense(x) for m in self.members])

    @property
    def stride(self) -> int:
        return self.members[0].stride


class _SoftTargets(Dataset):
    """Items of ``base`` with their label replaced by a probability vector (distillation)."""

    def __init__(self, base: PatchDataset, probs: np.ndarray) -> None:
        self.base, self.probs = base, torch.as_tensor(np.stack([1 - probs, probs], 1), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[i][0], self.probs[i]


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _dataset(data: MitosisData, rows: pd.DataFrame, augment: str | None, seed: int) -> PatchDataset:
    from ..stain.transforms import Augmentation

    aug = Augmentation(augment, seed=seed) if augment else None
    return PatchDataset(data.images, rows, transform=aug)


def _new_model(width: float, patch: int, mpp: float | None, **arch: Any) -> torch.nn.Module:
    from ..models import create_model

    return create_model("mitosis_cnn", num_classes=2, classes=list(MITOSIS_CLASSES), input_size=patch, mpp=mpp, width=width, **arch)


def train_detector(
    data: MitosisData,
    *,
    out_dir: str | os.PathLike[str],
    width: float,
    config: MitosisTrainConfig,
    negative_weights: np.ndarray | None = None,
    soft_targets: np.ndarray | None = None,
    seed_offset: int = 0,
    resume: bool = False,
    verbose: bool = True,
    **arch: Any,
) -> torch.nn.Module:
    """One mitosis CNN on the ``train`` split (checkpoint on ``val`` F1): the building block.

    ``negative_weights`` (one per training negative, dataset order) sets how negatives are
    drawn into the balanced batches; ``soft_targets`` (one mitosis probability per
    training item) turns the run into distillation.
    """
    train_rows, val_rows = data.subset("train"), data.subset("val")
    patch = int(train_rows["size"].iloc[0])
    train_ds: Dataset = _dataset(data, train_rows, config.augment, config.seed + seed_offset)
    if soft_targets is not None:
        train_ds = _SoftTargets(train_ds, np.asarray(soft_targets, dtype=np.float32))
    val_ds = _dataset(data, val_rows, None, 0)
    cfg = config.engine(seed_offset)
    sampler = BalancedBatchSampler(train_rows["label"].to_numpy(), batch_size=cfg.batch_size, negative_weights=negative_weights, seed=cfg.seed)
    from ..utils.seed import seed_everything

    seed_everything(cfg.seed)  # the initial weights are part of the run's seed
    if config.strides is not None:
        arch.setdefault("strides", tuple(config.strides))
    model = _new_model(width, patch, data.images.mpp, **arch)
    fit(model, train_ds, val_ds, cfg, out_dir, resume=resume, verbose=verbose, batch_sampler=sampler)
    return model.eval()


def _probs(model: torch.nn.Module, data: MitosisData, rows: pd.DataFrame, config: MitosisTrainConfig, verbose: bool) -> np.ndarray:
    p, _ = predict(model, _dataset(data, rows, None, 0), batch_size=256, device=config.device, verbose=verbose)
    return p[:, 1]


def train_mitosis(
    data: MitosisData,
    config: MitosisTrainConfig | None = None,
    *,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """The paper's whole recipe: easy model -> hard negatives -> bagging ensemble -> distilled student.

    Writes one engine folder per network (``easy/``, ``member_<i>/``, ``student/``) and
    ``summary.json`` into ``out_dir``.

    Returns
    -------
    dict
        ``easy``, ``members``, ``ensemble`` (an :class:`Ensemble`), ``student`` (or None),
        ``negative_weights``.
    """
    config = config or MitosisTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_rows = data.subset("train")
    negatives = train_rows["label"].to_numpy() != 1
    result: dict[str, Any] = {"config": asdict(config)}
    weights = None
    easy = None
    if config.hard_negatives:
        if verbose:
            log.info("easy model (uniform negatives)")
        easy = train_detector(data, out_dir=out / "easy", width=config.width, config=config, seed_offset=100, resume=resume, verbose=verbose)
        p_easy = _probs(easy, data, train_rows[negatives], config, verbose)
        weights = hard_negative_weights(p_easy)
        result["hard_negative_share_p_over_0.5"] = float((p_easy > 0.5).mean())
    members = []
    for k in range(config.ensemble):
        w = weights if config.ensemble == 1 else bootstrap_negatives(weights if weights is not None else np.ones(int(negatives.sum())), rng=config.seed + k)
        members.append(train_detector(data, out_dir=out / f"member_{k}", width=config.width, config=config, negative_weights=w, seed_offset=k, resume=resume, verbose=verbose))
    ensemble = Ensemble(members).eval() if len(members) > 1 else members[0]
    student = None
    if config.distill_width is not None:
        soft = _probs(ensemble, data, train_rows, config, verbose)
        student = train_detector(data, out_dir=out / "student", width=config.distill_width, config=config, negative_weights=weights, soft_targets=soft, seed_offset=50, resume=resume, verbose=verbose)
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    return {"easy": easy, "members": members, "ensemble": ensemble, "student": student, "negative_weights": weights, **result}


# -- evaluation ---------------------------------------------------------------------------------


def _f1_block(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = p >= threshold
    tp, fp, fn = int((pred & (y == 1)).sum()), int((pred & (y != 1)).sum()), int((~pred & (y == 1)).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")
    return {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate_patches(model: torch.nn.Module, data: MitosisData, *, split: str = "test", threshold: float = 0.5, device: str = "cpu", verbose: bool = False) -> dict[str, Any]:
    """Patch-level metrics on a split, with the source-shortcut checks of DESIGN.md.

    * ``all``: precision / recall / F1 at ``threshold`` and AUROC over every test patch;
    * ``same_source``: mitoses versus the corners of the *same* AMi-Br crops (no colour
      difference to exploit) — AUROC and F1;
    * ``cross_source``: mitoses versus MoNuSeg nuclei and random MoNuSeg positions;
    * ``scores``: mean / 95th percentile of the mitosis score per patch kind.
    """
    from sklearn.metrics import roc_auc_score

    rows = data.subset(split)
    p = _probs(model, data, rows, MitosisTrainConfig(device=device), verbose)
    y = rows["label"].to_numpy()
    kinds = rows["kind"].to_numpy()
    out: dict[str, Any] = {"n": int(len(y)), "threshold": threshold}

    def block(mask: np.ndarray) -> dict[str, float]:
        b = _f1_block(y[mask], p[mask], threshold)
        b["auroc"] = float(roc_auc_score(y[mask], p[mask])) if len(set(y[mask])) == 2 else float("nan")
        return b

    out["all"] = block(np.ones(len(y), bool))
    out["same_source"] = block(np.isin(kinds, ["mitosis", "amibr_offcentre"]))
    out["cross_source"] = block(np.isin(kinds, ["mitosis", "monuseg_nucleus", "monuseg_random", "monuseg_candidate"]))
    out["scores"] = {k: {"mean": float(p[kinds == k].mean()), "p95": float(np.percentile(p[kinds == k], 95)), "n": int((kinds == k).sum())} for k in sorted(set(kinds))}
    out["probs"] = p
    return out


def colour_baselines(data: MitosisData, *, split: str = "test", train_split: str = "train", seed: int = 0) -> dict[str, float]:
    """What colour alone achieves (DESIGN.md's shortcut checks), for the report beside the model.

    * ``dark_centre_auroc``: mitoses versus same-crop corners scored by how dark the
      central 16 x 16 pixels are (no learning) — a model must beat it;
    * ``colour_source_auroc``: a logistic regression on per-patch colour statistics (mean,
      SD, 10th / 90th percentile per channel) separating mitoses from MoNuSeg negatives,
      trained on ``train_split`` — how much of the cross-source task colour explains.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def feats(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ds = _dataset(data, rows, None, 0)
        F, D = [], []
        for i in range(len(rows)):
            im = ds.read(i).astype(np.float32)
            flat = im.reshape(-1, 3)
            F.append(np.concatenate([flat.mean(0), flat.std(0), np.percentile(flat, 10, 0), np.percentile(flat, 90, 0)]))
            c = im.shape[0] // 2
            D.append(255.0 - im[c - 8 : c + 8, c - 8 : c + 8].mean())
        return np.asarray(F), np.asarray(D), rows["label"].to_numpy()

    test = data.subset(split)
    same = test[test["kind"].isin(["mitosis", "amibr_offcentre"])]
    _, dark, ys = feats(same)
    cross_kinds = ["mitosis", "monuseg_nucleus", "monuseg_random"]
    tr = data.subset(train_split, kinds=cross_kinds)
    tr = pd.concat([g.sample(min(len(g), 600), random_state=seed) for _, g in tr.groupby("label")])
    Ftr, _, ytr = feats(tr)
    Fte, _, yte = feats(test[test["kind"].isin(cross_kinds)])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Ftr, ytr)
    return {
        "dark_centre_auroc": float(roc_auc_score(ys, dark)),
        "colour_source_auroc": float(roc_auc_score(yte, clf.predict_proba(Fte)[:, 1])),
    }


# -- atypical versus normal mitoses ---------------------------------------------------------------

ATYPICAL_CLASSES = ["normal mitosis", "atypical mitosis"]


def _atypical_rows(data: MitosisData, split: str) -> pd.DataFrame:
    rows = data.subset(split, kinds=["mitosis"]).copy()
    rows["label"] = rows["atypical"].astype(int)
    return rows


def train_atypical(
    data: MitosisData,
    *,
    out_dir: str | os.PathLike[str],
    arch: str = "small_cnn",
    augment: str = "RCSEHBG",
    config: TrainConfig | None = None,
    resume: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """A second model on detected mitoses: atypical versus normal (AMi-Br's expert majority labels).

    Trains on the mitosis patches of the ``train`` patients (the detector's split, so no
    test patient is ever seen), picks the checkpoint on ``val`` and reports the ``test``
    patients with the metrics module (per-class precision / recall / specificity / NPV,
    AUROC, balanced accuracy: atypical mitoses are a third of the data).

    Returns
    -------
    dict
        ``model``, ``report`` (:class:`histoscope.metrics.ClassificationReport`), ``result``.
    """
    from ..metrics import classification_report
    from ..models import create_model

    config = config or TrainConfig(epochs=12, batch_size=32, select="val_loss")
    tr, va, te = (_atypical_rows(data, s) for s in ("train", "val", "test"))
    patch = int(tr["size"].iloc[0])
    from ..utils.seed import seed_everything

    seed_everything(config.seed)
    model = create_model(arch, num_classes=2, classes=list(ATYPICAL_CLASSES), input_size=patch, mpp=data.images.mpp)
    # the minority class (atypical) is drawn as often as the majority one
    sampler = BalancedBatchSampler(tr["label"].to_numpy(), batch_size=config.batch_size, seed=config.seed)
    result = fit(model, _dataset(data, tr, augment, config.seed), _dataset(data, va, None, 0), config, out_dir, resume=resume, verbose=verbose, batch_sampler=sampler)
    probs, labels = predict(model.eval(), _dataset(data, te, None, 0), batch_size=256, device=config.device)
    report = classification_report(labels, probs, classes=list(ATYPICAL_CLASSES))
    out = Path(out_dir)
    (out / "test_metrics.json").write_text(json.dumps({"report": report.to_dict(), "n_test": int(len(labels)), "test_patients": int(te["group"].nunique())}, indent=2, default=str))
    return {"model": model, "report": report, "result": result, "n_test": int(len(labels))}

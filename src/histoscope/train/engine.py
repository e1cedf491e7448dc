"""The training engine every histoscope model trains with (tissue classifiers, mitosis CNNs, NIC).

One loop: optimiser chosen per architecture (Adam; RMSProp with label smoothing and the
auxiliary head for Inception-v3), the colorectal paper's step schedule (learning rate divided
by 10 at 40 %, 60 %, 80 % and 90 % of training — their epochs 80/120/160/180 of 200), best
checkpoint on validation, resume from the last checkpoint, seeded data order, a progress bar,
a metrics log (CSV + JSON) and loss/accuracy curves (PNG).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..utils.device import resolve_device  # noqa: F401  (re-exported: histoscope.train.engine.resolve_device)
from torch.utils.data import DataLoader, Dataset

from ..utils.seed import seed_everything, worker_init_fn

__all__ = ["TrainConfig", "TrainResult", "fit", "predict", "load_checkpoint", "read_checkpoint", "resolve_device"]

log = logging.getLogger(__name__)

#: Below this many validation items, checkpoint selection keeps the last epoch.
MIN_VALIDATION = 32


@dataclass
class TrainConfig:
    """Training settings (defaults: the colorectal paper's, on a short schedule).

    Attributes
    ----------
    epochs : int
    batch_size : int
        32 in the paper.
    lr : float
        Initial learning rate (1e-3).
    optimizer : {"auto", "adam", "rmsprop", "sgd"}
        ``auto``: RMSProp for Inception-v3, Adam otherwise.
    milestones : tuple of float
        Fractions of ``epochs`` at which the learning rate is multiplied by ``gamma``.
    gamma : float
    label_smoothing : float or None
        None: 0.1 for Inception-v3, 0 otherwise.
    aux_weight : float
        Weight of Inception-v3's auxiliary loss (when the model has its auxiliary head).
    weight_decay : float
    schedule : {"step", "exponential"}
        ``step``: multiply by ``gamma`` at ``milestones`` (the colorectal paper);
        ``exponential``: decay every epoch from ``lr`` to ``lr_final`` at the last epoch
        (the whole-slide mitosis paper: 1e-3 to 3e-5).
    lr_final : float
        Final learning rate of the exponential schedule.
    select : {"val_acc", "val_loss", "val_f1"}
        What picks the best checkpoint (ties go to the lower loss); ``val_f1`` is the F1
        of class 1 (the positive class of a binary detector, e.g. mitosis).
    seed : int
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    num_workers : int
        DataLoader worker processes (1 by default: per-image augmentation runs beside
        the training step; a worker uses one thread, which for small per-image tensor
        operations is several times faster than two).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: Literal["auto", "adam", "rmsprop", "sgd"] = "auto"
    milestones: tuple[float, ...] = (0.4, 0.6, 0.8, 0.9)
    gamma: float = 0.1
    schedule: Literal["step", "exponential"] = "step"
    lr_final: float = 3e-5
    label_smoothing: float | None = None
    aux_weight: float = 0.4
    weight_decay: float = 0.0
    select: Literal["val_acc", "val_loss", "val_f1"] = "val_acc"
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("auto", "adam", "rmsprop", "sgd"):
            raise ValueError(f"optimizer must be auto, adam, rmsprop or sgd, got {self.optimizer!r}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions in (0, 1), got {self.milestones}")
        if self.select not in ("val_acc", "val_loss", "val_f1"):
            raise ValueError(f"select must be val_acc, val_loss or val_f1, got {self.select!r}")
        if self.schedule not in ("step", "exponential"):
            raise ValueError(f"schedule must be step or exponential, got {self.schedule!r}")
        if not 0 < self.lr_final <= self.lr:
            raise ValueError(f"lr_final must be in (0, lr={self.lr}], got {self.lr_final}")

    def milestone_epochs(self) -> list[int]:
        """Epochs (0-based, at whose start) the learning rate drops."""
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones if round(m * self.epochs) < self.epochs})

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch`` under this schedule."""
        if self.schedule == "exponential":
            return self.lr * self._exp_factor() ** epoch
        from bisect import bisect_right

        return self.lr * self.gamma ** bisect_right(self.milestone_epochs(), epoch)

    def _exp_factor(self) -> float:
        return (self.lr_final / self.lr) ** (1.0 / max(self.epochs - 1, 1))


@dataclass
class TrainResult:
    """What :func:`fit` produced."""

    history: pd.DataFrame
    best_epoch: int
    best_path: Path
    last_path: Path
    out_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


def _is_inception(model: torch.nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "arch", "") == "inception_v3"


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    kind = cfg.optimizer
    if kind == "auto":
        kind = "rmsprop" if _is_inception(model) else "adam"
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if kind == "rmsprop":
        # Szegedy et al. 2016: RMSProp with decay 0.9; eps larger than torch's default for stability
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, eps=1e-3, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def _loader(ds: Dataset, cfg: TrainConfig, *, shuffle: bool, batch_sampler: Any = None) -> DataLoader:
    """The training loader, created once (persistent workers); reseed ``loader.generator`` per epoch."""
    g = torch.Generator()
    g.manual_seed(cfg.seed * 1000)
    if batch_sampler is not None:
        return DataLoader(
            ds,
            batch_sampler=batch_sampler,
            num_workers=cfg.num_workers,
            worker_init_fn=worker_init_fn if cfg.num_workers else None,
            persistent_workers=cfg.num_workers > 0,
        )
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=cfg.num_workers,
        worker_init_fn=worker_init_fn if cfg.num_workers else None,
        persistent_workers=cfg.num_workers > 0,
    )


def _loss(model: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, smoothing: float) -> torch.Tensor:
    loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)
    aux = getattr(model, "aux_logits", None)
    aux_out = aux() if callable(aux) else None
    if model.training and aux_out is not None:
        loss = loss + cfg.aux_weight * torch.nn.functional.cross_entropy(aux_out, y, label_smoothing=smoothing)
    return loss


def _evaluate(model: torch.nn.Module, ds: Dataset, cfg: TrainConfig, device: torch.device, smoothing: float) -> tuple[float, float, float]:
    """Validation loss, accuracy and the F1 of class 1 (NaN when undefined)."""
    probs, labels, loss = _run(model, ds, cfg.batch_size, device, 0, smoothing=smoothing)
    if not len(labels):
        return loss, float("nan"), float("nan")
    if labels.ndim == 2:  # soft targets
        labels = labels.argmax(1)
    pred = probs.argmax(1)
    tp, fp, fn = int(((pred == 1) & (labels == 1)).sum()), int(((pred == 1) & (labels != 1)).sum()), int(((pred != 1) & (labels == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    return loss, float((pred == labels).mean()), f1


def _run(model: torch.nn.Module, ds: Dataset, batch_size: int, device: torch.device, num_workers: int = 0, *, smoothing: float = 0.0, verbose: bool = False, desc: str = "predict") -> tuple[np.ndarray, np.ndarray, float]:
    from tqdm.auto import tqdm

    model.eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    probs, labels, total, n = [], [], 0.0, 0
    with torch.no_grad():
        for x, y in tqdm(loader, desc=desc, unit="batch", disable=not verbose, leave=False):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            logits = model(x)
            total += float(torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing, reduction="sum"))
            n += len(y)
            probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
            labels.append(y.cpu().numpy())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, int), float("nan")
    return np.concatenate(probs), np.concatenate(labels), total / max(n, 1)


def predict(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 64, device: str = "cpu", num_workers: int = 0, verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, K)`` and the dataset's labels ``(N,)``, in dataset order."""
    dev = resolve_device(device)
    model.to(dev)
    probs, labels, _ = _run(model, dataset, batch_size, dev, num_workers, verbose=verbose)
    return probs, labels


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and tuples turned into Python numbers, lists and tensors,
    so that the checkpoint loads with ``torch.load(weights_only=True)``."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    import random

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    n, py = state["numpy"], state["python"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))


def trust_checkpoints_by_default() -> bool:
    """Whether pickled checkpoints are loaded without asking: the ``--trust-checkpoint`` option of
    the ``histoscope`` command (environment ``HISTOSCOPE_TRUST_CHECKPOINT=1``)."""
    return os.environ.get("HISTOSCOPE_TRUST_CHECKPOINT", "") == "1"


def read_checkpoint(path: str | os.PathLike[str], *, trust: bool | None = None, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a histoscope checkpoint without executing code in it.

    Checkpoints written by this version hold only tensors, numbers, strings, lists and
    dicts and load with ``torch.load(weights_only=True)``. A file that needs pickle (an old
    checkpoint, a checkpoint from elsewhere, or a malicious file) is refused with
    :class:`~histoscope.exceptions.ModelFileError` unless ``trust`` is True (default:
    :func:`trust_checkpoints_by_default`), because unpickling can run arbitrary code.
    """
    import pickle

    from ..exceptions import ModelFileError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    trust = trust_checkpoints_by_default() if trust is None else trust
    import zipfile

    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; anything else is not a checkpoint of ours
        raise ModelFileError(f"{p}: not a readable PyTorch checkpoint (not the zip archive torch.save writes)")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"{p}: this checkpoint needs Python's pickle to load, which can run arbitrary code, so it is refused "
                f"({first[:160]}). If you made this file or trust where it came from, pass --trust-checkpoint "
                f"(trust=True in Python)."
            ) from None
        log.warning("%s: loading a pickled checkpoint because it is trusted (--trust-checkpoint)", p)
        try:
            ck = torch.load(p, map_location=map_location, weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - name the file
            raise ModelFileError(f"{p}: not a readable PyTorch checkpoint ({exc2.__class__.__name__}: {exc2})") from None
    except Exception as exc:  # noqa: BLE001 - truncated, not a zip/pickle at all, ...
        raise ModelFileError(f"{p}: not a readable PyTorch checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(ck, dict):
        raise ModelFileError(f"{p}: not a histoscope checkpoint (a {type(ck).__name__}, not a dict)")
    return ck


def fit(
    model: torch.nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    verbose: bool = True,
    batch_sampler: Any = None,
) -> TrainResult:
    """Train ``model`` on ``train_ds``, selecting the best epoch on ``val_ds``.

    Writes into ``out_dir``: ``last.pt`` (everything needed to resume), ``best.pt``,
    ``metrics.csv`` / ``metrics.json`` (one row per epoch) and ``curves.png``.

    Parameters
    ----------
    model : torch.nn.Module
        Items of the datasets are ``(image, label)``; the model maps images to logits.
        A label is a class index, or a float vector of class probabilities (soft
        targets, as in knowledge distillation).
    train_ds, val_ds : Dataset
    config : TrainConfig
    out_dir : path
    resume : bool
        Continue from ``out_dir/last.pt`` (same data, model and config) if it exists.
    verbose : bool
        Progress bar per epoch.
    batch_sampler : optional
        Yields the index batches of an epoch (e.g. :class:`BalancedBatchSampler`); its
        ``set_epoch(epoch)`` is called before each epoch.  Default: shuffled batches.

    Returns
    -------
    TrainResult
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    opt = _optimizer(model, config)
    smoothing = config.label_smoothing if config.label_smoothing is not None else (0.1 if _is_inception(model) else 0.0)
    history: list[dict[str, Any]] = []
    start = 0
    best_score: tuple[float, float] | None = None
    best_epoch = -1
    last_path, best_path = out / "last.pt", out / "best.pt"
    model_cfg = model.config.to_dict() if hasattr(model, "config") and hasattr(model.config, "to_dict") else None
    if resume and last_path.is_file():
        ck = read_checkpoint(last_path, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        history = ck["history"]
        start = ck["epoch"] + 1
        # the schedule follows *this* config (e.g. more epochs than the first run): the
        # learning rate of each epoch is recomputed from it below
        old_epochs = ck.get("train_config", {}).get("epochs")
        if old_epochs is not None and old_epochs != config.epochs:
            log.warning("resuming a %d-epoch run as %d epochs: the schedule is recomputed", old_epochs, config.epochs)
        best_epoch = ck["best_epoch"]
        best_score = tuple(ck["best_score"]) if ck["best_score"] is not None else None
        _set_rng_state(ck["rng"])
        log.info("resuming from %s at epoch %d", last_path, start)
    train_loader = _loader(train_ds, config, shuffle=True, batch_sampler=batch_sampler)
    # a validation set of a few patches picks noise: keep the last epoch then, and say so
    tiny_val = len(val_ds) < MIN_VALIDATION
    if tiny_val:
        log.warning("only %d validation items (< %d): the last epoch is kept instead of the best on validation", len(val_ds), MIN_VALIDATION)
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        model.train()
        total, correct, n = 0.0, 0, 0
        # epoch order independent of resume
        if batch_sampler is not None:
            batch_sampler.set_epoch(epoch)
        else:
            train_loader.generator.manual_seed(config.seed * 1000 + epoch)
        for g in opt.param_groups:
            g["lr"] = config.lr_at(epoch)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not verbose, leave=False)
        for x, y in bar:
            x, y = x.to(device), torch.as_tensor(y).to(device)
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = _loss(model, logits, y, config, smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}: the training loss became {float(loss.detach())}; lower the learning rate")
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == (y.argmax(1) if y.is_floating_point() else y)).sum())
            n += len(y)
            bar.set_postfix(loss=f"{total / n:.3f}", acc=f"{correct / n:.3f}")
        lr = opt.param_groups[0]["lr"]
        val_loss, val_acc, val_f1 = _evaluate(model, val_ds, config, device, smoothing)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": total / max(n, 1),
            "train_acc": correct / max(n, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            **({"val_f1": val_f1} if config.select == "val_f1" else {}),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        score = {"val_acc": (val_acc, -val_loss), "val_loss": (-val_loss, val_acc), "val_f1": (val_f1, -val_loss)}[config.select]
        score = tuple(-np.inf if np.isnan(v) else v for v in score)
        if tiny_val:
            score = (float(epoch), 0.0)
        if best_score is None or score > best_score:
            best_score, best_epoch = score, epoch + 1
            _save(best_path, {"model": model.state_dict(), "config": model_cfg, "epoch": epoch + 1, "metrics": _plain(row)})
        _save(
            last_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "history": _plain(history),
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_score": [float(v) for v in best_score] if best_score else None,
                "rng": _rng_state(),
                "config": model_cfg,
                "train_config": _plain(asdict(config)),
            },
        )
        frame = pd.DataFrame(history)
        frame.to_csv(out / "metrics.csv", index=False)
        (out / "metrics.json").write_text(json.dumps({"history": history, "best_epoch": best_epoch, "train_config": asdict(config)}, indent=2, default=str))
        if verbose:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f} | {row['seconds']:.0f} s")
    frame = pd.DataFrame(history)
    if len(frame):
        from ..metrics.plots import plot_training_curves

        plot_training_curves(frame, out / "curves.png")
    if best_path.is_file():
        model.load_state_dict(read_checkpoint(best_path, map_location=device)["model"])
    return TrainResult(frame, best_epoch, best_path, last_path, out)


def load_checkpoint(path: str | os.PathLike[str], *, device: str = "cpu", trust: bool | None = None) -> torch.nn.Module:
    """A model from a histoscope checkpoint (``best.pt`` / ``last.pt``), built from its recorded config.

    Read with :func:`read_checkpoint`: no code in the file runs unless ``trust`` (or
    ``--trust-checkpoint``) allows a pickled checkpoint.
    """
    from ..models.registry import ModelConfig, create_model

    p = Path(path)
    ck = read_checkpoint(p, trust=trust)
    if ck.get("config") is None:
        from ..exceptions import ModelFileError

        raise ModelFileError(f"{p}: not a histoscope checkpoint (no model config inside)")
    cfg = ModelConfig.from_dict(ck["config"])
    model = create_model(cfg.arch, **cfg.build_kwargs())
    model.load_state_dict(ck["model"])
    return model.to(resolve_device(device)).eval()

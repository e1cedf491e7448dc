"""Training, prediction and cross-validation of the slide CNN on compressed slides.

Tellez et al. [1]_ (Sec. III-D and IV) train the slide-level CNN on random ``R x R``
crops of the compressed slides, sampled where there is tissue, with random rotations
and mirrors (the 8 elements of D4); at test time they average the predictions of ``T``
crops in each of the 8 orientations.  They evaluate by cross-validation over 4 folds:
two folds train, one validates (model selection), one tests, rotated so that every fold
is the test fold once.  Classification is scored with the AUC (and here accuracy),
regression with Spearman's rank correlation.

A slide is given as a tuple ``(emb, tissue)`` or ``(emb, tissue, y)`` of a float32
``(H, W, C)`` embedding grid and a ``(H, W)`` tissue fraction in [0, 1] (``tissue``
may be ``None``: all tissue), or as an object with ``embeddings`` and ``tissue``
attributes (a :class:`~histoscope.infer.compress.CompressedSlide`).

Randomness comes only from ``seed``: crop origins and orientations from a numpy
generator, weight initialisation and dropout from torch's generator inside
:func:`torch.random.fork_rng` (the caller's global torch state is left untouched).
On a CPU, the same seed gives the same model and the same predictions.

References
----------
.. [1] D. Tellez, G. Litjens, J. van der Laak, F. Ciompi, "Neural Image Compression
       for Gigapixel Histopathology Image Analysis", IEEE TPAMI 2019 (arXiv:1811.02840).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .crops import D4, check_grid, d4, sample_crop_origins
from .crops import crop as crop_grid
from .model import SlideCNN, Task, check_task

__all__ = [
    "fit_slide_model",
    "predict_slides",
    "cross_validate",
    "fold_rotation",
    "assign_folds",
    "slide_metrics",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs


def _as_grid(slide: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """``(emb, tissue)`` float32 arrays of one slide given in any accepted form."""
    if hasattr(slide, "embeddings") and hasattr(slide, "tissue"):  # a CompressedSlide
        emb = slide.load() if callable(getattr(slide, "load", None)) else slide.embeddings
        tissue = slide.tissue
    elif isinstance(slide, (tuple, list)) and len(slide) in (2, 3):
        emb, tissue = slide[0], slide[1]
    elif isinstance(slide, np.ndarray):
        emb, tissue = slide, None
    else:
        raise TypeError(
            f"slides[{i}] must be (emb, tissue), (emb, tissue, y), an (H, W, C) array or a CompressedSlide, "
            f"got {type(slide).__name__}"
        )
    emb = np.asarray(emb[...] if hasattr(emb, "oindex") else emb)  # zarr arrays: read once
    tissue = None if tissue is None else np.asarray(tissue[...] if hasattr(tissue, "oindex") else tissue)
    return check_grid(emb, tissue, name=f"slides[{i}] embeddings")


def _grids(slides: Sequence[Any], name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(slides, (np.ndarray, tuple)) and not isinstance(slides, list):
        slides = list(slides)
    if len(slides) == 0:
        raise ValueError(f"{name} holds no slides")
    grids = [_as_grid(s, i) for i, s in enumerate(slides)]
    channels = {g[0].shape[2] for g in grids}
    if len(channels) != 1:
        raise ValueError(f"{name}: all grids must have the same code size C, got {sorted(channels)}")
    return grids


def _labels_of(slides: Sequence[Any], name: str) -> list[Any]:
    ys = []
    for i, s in enumerate(slides):
        if not (isinstance(s, (tuple, list)) and len(s) == 3):
            raise ValueError(f"{name}[{i}] must be a tuple (emb, tissue, y) with its label y")
        ys.append(s[2])
    return ys


def _targets(ys: Sequence[Any], task: str, name: str, n_outputs: int | None = None) -> np.ndarray:
    if task == "classification":
        y = np.asarray(ys)
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
            if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise ValueError(f"{name}: classification labels must be integer class indices, got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
        if y.min() < 0 or (n_outputs is not None and y.max() >= n_outputs):
            raise ValueError(f"{name}: class indices must lie in [0, {n_outputs or 'K'}), got [{y.min()}, {y.max()}]")
        return y
    y = np.asarray(ys, dtype=np.float32)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or not np.isfinite(y).all():
        raise ValueError(f"{name}: regression targets must be finite numbers (one or a vector per slide), got {y.shape}")
    return y


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _standardisation(grids: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Tissue-weighted per-channel mean and standard deviation of the codes (float64)."""
    c = grids[0][0].shape[2]
    w_sum, s1, s2 = 0.0, np.zeros(c), np.zeros(c)
    for emb, tissue in grids:
        w = tissue.astype(np.float64) if tissue.sum() > 0 else np.ones(tissue.shape)
        e = emb.astype(np.float64)
        w_sum += w.sum()
        s1 += np.einsum("hw,hwc->c", w, e)
        s2 += np.einsum("hw,hwc->c", w, e * e)
    mean = s1 / w_sum
    std = np.sqrt(np.maximum(s2 / w_sum - mean**2, 0.0))
    return mean, std


# --------------------------------------------------------------------------- metrics


def slide_metrics(y_true: Any, scores: Any, *, task: Task = "classification") -> dict[str, float]:
    """The paper's slide-level scores of predictions.

    Classification: ``auc`` by :func:`sklearn.metrics.roc_auc_score` (binary: on the
    probability of class 1; more classes: one-vs-rest macro average; NaN when ``y_true``
    holds one class only) and ``accuracy`` by :func:`sklearn.metrics.accuracy_score` of
    the argmax.  Regression: ``spearman`` and ``spearman_p`` by
    :func:`scipy.stats.spearmanr` (NaN when either side is constant).  Both add ``n``.

    Parameters
    ----------
    y_true : array_like
        ``(N,)`` class indices or regression targets.
    scores : array_like
        ``(N, K)`` class probabilities, or ``(N,)`` regression values, as returned by
        :func:`predict_slides`.
    task : {"classification", "regression"}

    Returns
    -------
    dict
    """
    check_task(task)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y_true)
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} entries but scores {len(s)}")
    if task == "classification":
        from sklearn.metrics import accuracy_score, roc_auc_score

        if s.ndim != 2:
            raise ValueError(f"classification scores must be (N, K) probabilities, got shape {s.shape}")
        y = y.astype(np.int64)
        auc = float("nan")
        if len(np.unique(y)) > 1:
            if s.shape[1] == 2:
                auc = float(roc_auc_score(y, s[:, 1]))
            else:
                auc = float(roc_auc_score(y, s, multi_class="ovr", labels=np.arange(s.shape[1])))
        return {"auc": auc, "accuracy": float(accuracy_score(y, s.argmax(1))), "n": int(len(y))}
    from scipy.stats import spearmanr

    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    y = y.astype(np.float64).reshape(len(y), -1)
    if y.shape[1] == 1:
        y = y[:, 0]
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"Spearman needs one regression target per slide, got scores {s.shape}")
    if len(y) < 2 or np.ptp(y) == 0 or np.ptp(s) == 0:
        rho, p = float("nan"), float("nan")
    else:
        res = spearmanr(y, s)
        rho, p = float(res.statistic), float(res.pvalue)
    return {"spearman": rho, "spearman_p": p, "n": int(len(y))}


def _selection_key(task: str, y: np.ndarray, scores: np.ndarray) -> tuple[float, float, dict[str, float]]:
    """(metric, loss, metrics) of validation predictions; larger metric and smaller loss are better."""
    if task == "classification":
        from sklearn.metrics import log_loss

        m = slide_metrics(y, scores, task=task)
        loss = float(log_loss(y, scores, labels=np.arange(scores.shape[1])))
        return m["auc"], loss, m
    from sklearn.metrics import mean_squared_error

    s = scores.reshape(len(y), -1)
    loss = float(mean_squared_error(y, s))
    m = slide_metrics(y[:, 0], s[:, 0], task=task) if y.shape[1] == 1 else {"spearman": float("nan")}
    return m["spearman"], loss, m


# --------------------------------------------------------------------------- training


def fit_slide_model(
    train: Sequence[Any],
    val: Sequence[Any] | None = None,
    *,
    task: Task = "classification",
    n_outputs: int | None = None,
    crop: int = 64,
    epochs: int = 20,
    crops_per_epoch: int | None = None,
    batch_size: int = 16,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    depth: int = 4,
    dropout: float = 0.2,
    pool: str = "max",
    val_crops: int = 2,
    val_tta: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[SlideCNN, dict[str, Any]]:
    """Train a :class:`~histoscope.nic.model.SlideCNN` on random crops of compressed slides.

    Each step takes ``batch_size`` crops: a slide (every slide once per pass, in a
    random order), an ``R x R`` crop origin drawn in proportion to tissue density
    (:func:`~histoscope.nic.crops.sample_crop_origins`) and one of the 8 rotations /
    mirrors (:func:`~histoscope.nic.crops.d4`) at random.  Loss: cross-entropy
    (classification) or mean squared error on standardised targets (regression);
    Adam.  The codes are standardised by the tissue-weighted per-channel mean and
    standard deviation of the training grids (stored in the model).

    With ``val`` slides, the model is evaluated after every epoch with
    :func:`predict_slides` (``val_crops`` crops per slide, all 8 orientations when
    ``val_tta``) and the epoch with the best validation AUC (classification) or
    Spearman (regression) is kept, ties broken by the lower validation loss (log loss
    or MSE); when the metric is undefined (one class in ``val``) the loss alone decides.
    Without ``val`` the last epoch is kept.

    Parameters
    ----------
    train : sequence of (emb, tissue, y)
        Training slides: ``(H, W, C)`` float32 grid, ``(H, W)`` tissue in [0, 1] (or
        ``None``), and the label: a class index (classification) or a number or vector
        (regression).
    val : sequence of (emb, tissue, y), optional
        Validation slides for model selection.
    task : {"classification", "regression"}
    n_outputs : int, optional
        Classes (default: largest training label + 1, at least 2) or regression
        targets (default: their length).
    crop : int
        Crop size ``R`` in grid cells.
    epochs : int
    crops_per_epoch : int, optional
        Crops per epoch (default: ``2 * len(train)``).
    batch_size, lr, weight_decay : optional
        Optimisation (Adam).
    width, depth, dropout, pool : optional
        Architecture, see :class:`~histoscope.nic.model.SlideCNN`.
    val_crops : int
        ``T`` for the validation predictions.
    val_tta : bool
        Average the 8 orientations in validation (8x slower).
    seed : int
        Seeds crops, orientations, initialisation and dropout.
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    verbose : bool
        Progress bar over epochs.

    Returns
    -------
    model : SlideCNN
        In eval mode, with the selected weights.
    history : dict
        ``epoch``, ``train_loss``, ``val_loss``, ``val_metric`` (lists per epoch; the
        validation ones empty without ``val``), ``metric`` (``"auc"`` or
        ``"spearman"``), ``best_epoch``, ``seconds``, ``crops_seen``.

    Raises
    ------
    ValueError
        On inconsistent grids, labels out of range or bad settings.

    Notes
    -----
    Speed: with the defaults, 75 training + 25 validation grids of 100 x 100 x 32 and
    ``crop=64`` (3,000 crops) train in 20-30 s on one busy CPU core (measured).  On a machine
    whose cores are shared with other jobs, ``torch.set_num_threads(1)`` can be an order
    of magnitude faster than several threads that wait for each other.
    """
    from tqdm.auto import tqdm

    from ..utils.device import resolve_device

    task = check_task(task)  # type: ignore[assignment]
    for name, value, low in (("crop", crop, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1),
                             ("val_crops", val_crops, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    train = list(train)
    grids = _grids(train, "train")
    y = _targets(_labels_of(train, "train"), task, "train", n_outputs)
    if task == "classification":
        k = int(n_outputs) if n_outputs is not None else max(2, int(y.max()) + 1)
    else:
        k = int(n_outputs) if n_outputs is not None else y.shape[1]
        if y.shape[1] != k:
            raise ValueError(f"train: regression targets have {y.shape[1]} values per slide but n_outputs = {k}")
    val_grids, y_val = None, None
    if val is not None and len(val) > 0:
        val = list(val)
        val_grids = _grids(val, "val")
        y_val = _targets(_labels_of(val, "val"), task, "val", k if task == "classification" else None)
        if val_grids[0][0].shape[2] != grids[0][0].shape[2]:
            raise ValueError(f"val grids have C = {val_grids[0][0].shape[2]}, train grids C = {grids[0][0].shape[2]}")
    n_per_epoch = int(crops_per_epoch) if crops_per_epoch is not None else 2 * len(grids)
    if n_per_epoch < 1:
        raise ValueError(f"crops_per_epoch must be >= 1, got {crops_per_epoch}")
    dev = resolve_device(device)
    rng = np.random.default_rng(seed)
    c = grids[0][0].shape[2]
    mean, std = _standardisation(grids)

    history: dict[str, Any] = {"epoch": [], "train_loss": [], "val_loss": [], "val_metric": [],
                               "metric": "auc" if task == "classification" else "spearman",
                               "best_epoch": None, "crops_seen": 0}
    t0 = time.perf_counter()
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = SlideCNN(c, k, task=task, width=width, depth=depth, dropout=dropout, pool=pool)  # type: ignore[arg-type]
        if task == "regression":
            t_mean, t_std = y.mean(0), y.std(0)
        else:
            t_mean, t_std = None, None
        model.set_standardisation(torch.from_numpy(mean).float(), torch.from_numpy(std).float(),
                                  target_mean=None if t_mean is None else torch.from_numpy(t_mean),
                                  target_std=None if t_std is None else torch.from_numpy(t_std))
        # channels-last memory is 1.4-2x faster for depthwise/pointwise convolutions on CPU
        model.to(dev, memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        best_key: tuple[float, float] | None = None
        best_state = None
        bar = tqdm(range(1, epochs + 1), desc="slide CNN", unit="epoch", disable=not verbose)
        for epoch in bar:
            model.train()
            order = np.concatenate([rng.permutation(len(grids)) for _ in range(-(-n_per_epoch // len(grids)))])
            order = order[:n_per_epoch]
            # this epoch's crops: origins drawn per slide in one call, orientations per crop
            origins = np.empty((n_per_epoch, 2), np.int64)
            for s in np.unique(order):
                where = np.flatnonzero(order == s)
                origins[where] = sample_crop_origins(grids[s][1], crop, len(where), rng)
            turns = rng.integers(8, size=n_per_epoch)
            losses = []
            for start in range(0, n_per_epoch, batch_size):
                idx = order[start : start + batch_size]
                views = np.empty((len(idx), c, crop, crop), np.float32)
                for j, n in enumerate(range(start, start + len(idx))):
                    views[j] = d4(crop_grid(grids[order[n]][0], origins[n], crop).transpose(2, 0, 1), int(turns[n]))
                xb = torch.from_numpy(views).to(dev).contiguous(memory_format=torch.channels_last)
                out = model(xb)
                if task == "classification":
                    loss = F.cross_entropy(out, torch.from_numpy(y[idx]).to(dev))
                else:
                    target = torch.from_numpy(y[idx]).to(dev)
                    loss = (((out - target) / model.target_std) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                history["crops_seen"] += len(idx)
            history["epoch"].append(epoch)
            history["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
            if val_grids is not None:
                scores = predict_slides(model, val_grids, crop=crop, n_crops=val_crops, tta=val_tta, seed=seed)
                metric, vloss, _ = _selection_key(task, y_val, scores)  # type: ignore[arg-type]
                history["val_loss"].append(vloss)
                history["val_metric"].append(metric)
                key = (metric if np.isfinite(metric) else -np.inf, -vloss)
                if best_key is None or key > best_key:
                    best_key, best_state = key, copy.deepcopy(model.state_dict())
                    history["best_epoch"] = epoch
                bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", val=f"{metric:.3f}")
            else:
                bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}")
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            history["best_epoch"] = epochs
        model.to(memory_format=torch.contiguous_format)
    history["seconds"] = time.perf_counter() - t0
    logger.info("slide CNN: %d epochs, %d crops in %.1f s (best epoch %s)", epochs, history["crops_seen"],
                history["seconds"], history["best_epoch"])
    return model.eval(), history


# --------------------------------------------------------------------------- prediction


def _forward_views(model: SlideCNN, views: list[np.ndarray], batch_size: int, dev: torch.device) -> torch.Tensor:
    """Outputs ``(V, K)`` (probabilities or values) of ``(C, h, w)`` views, batching views of one shape."""
    outs: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i + 1
        while j < len(views) and j - i < batch_size and views[j].shape == views[i].shape:
            j += 1
        xb = torch.from_numpy(np.stack(views[i:j])).to(dev).contiguous(memory_format=torch.channels_last)
        out = model(xb).double()
        outs.append(out.softmax(1) if model.task == "classification" else out)
        i = j
    return torch.cat(outs).cpu()


def predict_slides(
    model: SlideCNN,
    slides: Sequence[Any],
    *,
    crop: int | None = None,
    n_crops: int = 8,
    tta: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    return_origins: bool = False,
    verbose: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
    """Slide-level predictions: ``T`` crops x 8 orientations averaged (paper Sec. III-D).

    For slide ``i``, ``n_crops`` origins are drawn in proportion to tissue density
    with the generator ``numpy.random.default_rng([seed, i])`` (so a slide's crops do
    not depend on the other slides), each crop is seen in the 8 orientations of D4
    (``tta=True``) or as is, and the outputs are averaged: softmax probabilities for
    classification (the mean of probabilities, not of logits), values for regression.
    With ``crop=None`` the whole grid is one view (``n_crops`` is ignored): 8 forward
    passes with ``tta``, one without.

    Parameters
    ----------
    model : SlideCNN
        Run in eval mode on the device of its parameters (its mode is restored).
    slides : sequence
        ``(emb, tissue)`` or ``(emb, tissue, y)`` tuples, ``(H, W, C)`` arrays or
        CompressedSlides.
    crop : int, optional
        Crop size ``R``; ``None``: the whole grid.
    n_crops : int
        ``T``, crops per slide.
    tta : bool
        Average the 8 rotations / mirrors.
    seed : int
        Seeds the crop origins.
    batch_size : int
        Views per forward pass.
    return_origins : bool
        Also return the ``(T, 2)`` origins of each slide (``[[0, 0]]`` with
        ``crop=None``).
    verbose : bool
        Progress bar over slides.

    Returns
    -------
    numpy.ndarray
        Classification: ``(N, K)`` float64 class probabilities (rows sum to 1).
        Regression: ``(N,)`` values (``(N, n_outputs)`` for several targets).
    list of numpy.ndarray
        The origins, only with ``return_origins=True``.
    """
    from tqdm.auto import tqdm

    if not isinstance(model, SlideCNN):
        raise TypeError(f"model must be a SlideCNN, got {type(model).__name__}")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 1):
        raise ValueError(f"crop must be None (whole grid) or an int >= 1, got {crop!r}")
    if isinstance(n_crops, bool) or not isinstance(n_crops, (int, np.integer)) or n_crops < 1:
        raise ValueError(f"n_crops must be an int >= 1, got {n_crops!r}")
    grids = _grids(list(slides), "slides")
    if grids[0][0].shape[2] != model.in_channels:
        raise ValueError(f"the model reads C = {model.in_channels} codes, the grids have C = {grids[0][0].shape[2]}")
    dev = _device_of(model)
    ks = D4 if tta else (0,)
    was_training = model.training
    model.eval()
    preds, all_origins = [], []
    try:
        with torch.no_grad():
            for i, (emb, tissue) in enumerate(tqdm(grids, desc="predict slides", unit="slide", disable=not verbose)):
                if crop is None:
                    origins = np.zeros((1, 2), np.int64)
                    bases = [emb.transpose(2, 0, 1)]
                else:
                    origins = sample_crop_origins(tissue, int(crop), int(n_crops), np.random.default_rng([seed, i]))
                    bases = [crop_grid(emb, o, int(crop)).transpose(2, 0, 1) for o in origins]
                views = [d4(b, k) for b in bases for k in ks]
                preds.append(_forward_views(model, views, batch_size, dev).double().mean(0).numpy())
                all_origins.append(origins)
    finally:
        model.train(was_training)
    out = np.stack(preds)
    if model.task == "regression" and out.shape[1] == 1:
        out = out[:, 0]
    return (out, all_origins) if return_origins else out


# --------------------------------------------------------------------------- cross-validation


def fold_rotation(folds: int = 4) -> list[tuple[tuple[int, ...], int, int]]:
    """The paper's fold rotation: ``(train_folds, val_fold, test_fold)`` for each run.

    Run ``i`` tests on fold ``i``, validates on fold ``(i + 1) % folds`` and trains on
    the others (with 4 folds: two train, one validates, one tests), so every fold is the
    test fold exactly once and the validation fold once.

    Examples
    --------
    >>> fold_rotation(4)[0]
    ((2, 3), 1, 0)
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 3:
        raise ValueError(f"folds must be an int >= 3 (train, validation and test folds), got {folds!r}")
    runs = []
    for test in range(folds):
        val = (test + 1) % folds
        runs.append((tuple(f for f in range(folds) if f not in (test, val)), val, test))
    return runs


def assign_folds(labels: Any, folds: int = 4, *, task: Task = "classification", seed: int = 0, groups: Any = None) -> np.ndarray:
    """Fold index (0..folds-1) of every slide: stratified by class for classification
    (:class:`sklearn.model_selection.StratifiedKFold`), shuffled :class:`~sklearn.model_selection.KFold`
    for regression; ``seed`` shuffles.

    With ``groups`` (e.g. the patient of each slide) all slides of a group fall in one fold
    (:class:`~sklearn.model_selection.StratifiedGroupKFold` / ``GroupKFold``), so no patient is
    both trained and tested on."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    check_task(task)
    y = np.asarray(labels)
    n = len(y)
    if n < folds:
        raise ValueError(f"{n} slides cannot fill {folds} folds")
    splitter = (StratifiedKFold if task == "classification" else KFold)(n_splits=folds, shuffle=True,
                                                                         random_state=int(seed) % 2**32)
    fold_of = np.full(n, -1, np.int64)
    split_y = y if task == "classification" else np.zeros(n)
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != n:
            raise ValueError(f"got {len(g)} groups for {n} slides")
        if len(set(g.tolist())) < folds:
            raise ValueError(f"{len(set(g.tolist()))} groups (patients) cannot fill {folds} folds")
        if task == "classification":
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=int(seed) % 2**32)
        else:
            splitter = GroupKFold(n_splits=folds)
    for f, (_, test) in enumerate(splitter.split(np.zeros(n), split_y, groups)):
        fold_of[test] = f
    return fold_of


def cross_validate(
    slides: Sequence[Any],
    labels: Any,
    *,
    folds: int = 4,
    task: Task = "classification",
    crop: int = 64,
    n_crops: int = 8,
    tta: bool = True,
    seed: int = 0,
    return_models: bool = False,
    groups: Any = None,
    verbose: bool = False,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """k-fold cross-validation with the paper's rotation (2 train, 1 validation, 1 test folds).

    Slides are split into ``folds`` folds (:func:`assign_folds`); for each run of
    :func:`fold_rotation` a model is trained on the train folds with
    :func:`fit_slide_model`, selected on the validation fold, and predicts the test
    fold with :func:`predict_slides` (``n_crops`` crops x 8 orientations).  Every slide
    is thus predicted once, by the model for which it was unseen test data.

    Parameters
    ----------
    slides : sequence
        ``(emb, tissue)`` tuples (or arrays / CompressedSlides), one per slide.
    labels : array_like
        ``(N,)`` class indices or regression targets.
    folds : int
        Number of folds, >= 3 (the paper: 4).
    task : {"classification", "regression"}
    crop, n_crops, tta : optional
        Crop size ``R``, test crops ``T`` and test-time D4 averaging.
    seed : int
        Seeds the folds and every model (run ``i`` trains with ``seed + i``).
    return_models : bool
        Also return the trained models.
    groups : array_like, optional
        Patient (or other group) of each slide: a group's slides share one fold.
    verbose : bool
        Progress bar over runs.
    **fit_kwargs
        Passed to :func:`fit_slide_model` (``epochs``, ``width``, ``lr``, ...).

    Returns
    -------
    dict
        ``task``; ``folds``; ``fold_of`` (``(N,)`` fold of each slide); ``rotation``
        (:func:`fold_rotation`); ``predictions`` (the pooled test predictions, as
        :func:`predict_slides` returns them, in slide order); ``metrics`` (pooled
        :func:`slide_metrics`: ``auc`` and ``accuracy``, or ``spearman``); ``per_fold``
        (one dict per run: ``train_folds``, ``val_fold``, ``test_fold``,
        ``test_index``, ``metrics``, ``history``); ``models`` with ``return_models``.
    """
    from tqdm.auto import tqdm

    task = check_task(task)  # type: ignore[assignment]
    slides = list(slides)
    y = np.asarray(labels)
    if len(y) != len(slides):
        raise ValueError(f"got {len(slides)} slides but {len(y)} labels")
    grids = _grids(slides, "slides")
    fold_of = assign_folds(y, folds, task=task, seed=seed, groups=groups)
    rotation = fold_rotation(folds)
    n_outputs = fit_kwargs.pop("n_outputs", None)
    if task == "classification" and n_outputs is None:
        n_outputs = max(2, int(y.max()) + 1)
    predictions: np.ndarray | None = None
    per_fold, models = [], []
    for run, (train_folds, val_fold, test_fold) in enumerate(tqdm(rotation, desc="cross-validation", unit="fold",
                                                                  disable=not verbose)):
        tr = np.flatnonzero(np.isin(fold_of, train_folds))
        va = np.flatnonzero(fold_of == val_fold)
        te = np.flatnonzero(fold_of == test_fold)
        model, hist = fit_slide_model(
            [(*grids[i], y[i]) for i in tr],
            [(*grids[i], y[i]) for i in va],
            task=task, n_outputs=n_outputs, crop=crop, seed=seed + run, **fit_kwargs,
        )
        pred = predict_slides(model, [grids[i] for i in te], crop=crop, n_crops=n_crops, tta=tta, seed=seed)
        if predictions is None:
            predictions = np.full((len(slides),) + pred.shape[1:], np.nan)
        predictions[te] = pred
        metrics = slide_metrics(y[te], pred, task=task)
        per_fold.append({"train_folds": train_folds, "val_fold": val_fold, "test_fold": test_fold,
                         "train_index": tr, "val_index": va, "test_index": te,
                         "metrics": metrics, "history": hist})
        logger.info("fold %d: %s", test_fold, metrics)
        if return_models:
            models.append(model)
    assert predictions is not None
    result: dict[str, Any] = {
        "task": task,
        "folds": folds,
        "fold_of": fold_of,
        "rotation": rotation,
        "predictions": predictions,
        "metrics": slide_metrics(y, predictions, task=task),
        "per_fold": per_fold,
    }
    if return_models:
        result["models"] = models
    return result

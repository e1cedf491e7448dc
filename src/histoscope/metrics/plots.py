"""Figures of classifier and detector results: confusion matrix, ROC curves, training curves, F1 curves.

Each function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas
(no pyplot state, no GUI backend, safe in worker threads), writes the image
atomically (a temporary file in the same folder, then :func:`os.replace`), creates
missing parent folders and returns the path. The suffix of ``path`` picks the format
(``.png``, ``.pdf``, ``.svg``, ...). matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .classification import _as_labels, _as_probs, _class_names

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix", "plot_f1_curve", "plot_roc_curves", "plot_training_curves"]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    from ..utils.figures import save_figure

    return save_figure(fig, path, dpi=dpi)


def plot_confusion_matrix(
    cm: ArrayLike,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    normalize: bool = True,
    title: str | None = None,
    cmap: str = "Blues",
    dpi: int = 150,
) -> Path:
    """Draw a confusion matrix with counts and row percentages in every cell.

    Parameters
    ----------
    cm : array_like of int, shape (K, K)
        Rows true classes, columns predicted classes (as from
        :func:`~histoscope.metrics.confusion_matrix`).
    classes : sequence of str
        The K class names.
    path : str or os.PathLike
        Output image; missing parent folders are created.
    normalize : bool, optional
        Colour the cells by the fraction of their row (the recall of the diagonal),
        so that rare classes are as visible as common ones; ``False`` colours by count.
        The cells show the count and the row percentage either way.
    title : str, optional
        Default: "Confusion matrix" with the number of samples.
    cmap : str, optional
        matplotlib colour map.
    dpi : int, optional
        Resolution of raster formats.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If ``cm`` is not square with K rows, has negative or non-finite entries, or the
        suffix of ``path`` is not an image format matplotlib writes.
    """
    m = np.asarray(cm)
    if m.dtype.kind not in "iuf":
        raise TypeError(f"cm must be numeric, got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("cm must hold non-negative finite counts")
    k = m.shape[0]
    names = _class_names(classes, k)
    rows = m.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    shown = frac if normalize else m.astype(np.float64)
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)

    side = max(4.5, 0.95 * k + 2.8)
    fig = _new_figure((side + 1.0, side))
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("fraction of the true class" if normalize else "number of samples")

    fontsize = 10 if k <= 6 else 8 if k <= 10 else 6
    integral = np.allclose(m, np.round(m))
    for i in range(k):
        for j in range(k):
            count = f"{int(round(m[i, j]))}" if integral else f"{m[i, j]:.3g}"
            pct = f"{100 * frac[i, j]:.1f}%" if rows[i, 0] > 0 else "-"
            dark = shown[i, j] > 0.55 * vmax
            ax.text(
                j, i, f"{count}\n{pct}", ha="center", va="center", fontsize=fontsize,
                color="white" if dark else "black", fontweight="bold" if i == j else "normal",
            )
    long_names = max(len(n) for n in names) > 4
    ax.set_xticks(range(k), names, rotation=40 if long_names else 0, ha="right" if long_names else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    n = int(round(float(m.sum())))
    ax.set_title(title if title is not None else f"Confusion matrix (n = {n})")
    return _save(fig, path, dpi)


def plot_roc_curves(
    y_true: ArrayLike,
    probs: ArrayLike,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw the one-vs-rest ROC curve of every class, with its AUC in the legend.

    Each class is scored by its own probability column (scikit-learn's ``roc_curve``
    and ``roc_auc_score``). A class absent from ``y_true`` (or the only class in it)
    has no curve and is listed in the legend as undefined. The dashed diagonal is a
    classifier that guesses.

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
        True class ids in ``[0, K)``.
    probs : array_like of float, shape (N, K)
        Class probabilities.
    classes : sequence of str
        The K class names.
    path : str or os.PathLike
        Output image; missing parent folders are created.
    title : str, optional
        Default: "ROC curves (one vs rest)" with the macro AUC.
    dpi : int, optional
        Resolution of raster formats.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        As :func:`~histoscope.metrics.classification_report` for the inputs; also if the
        suffix of ``path`` is not an image format matplotlib writes.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    p = _as_probs(probs)
    k = p.shape[1]
    names = _class_names(classes, k)
    t = _as_labels(y_true, "y_true", k)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and probs must have the same number of samples, got shapes {t.shape} and {p.shape}")

    fig = _new_figure((6.4, 5.6))
    ax = fig.add_subplot()
    colors = [f"C{c % 10}" for c in range(k)]
    aucs = []
    for c, name in enumerate(names):
        positive = t == c
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, p[:, c])
            auc = float(roc_auc_score(positive, p[:, c]))
            aucs.append(auc)
            ax.plot(fpr, tpr, color=colors[c], lw=1.8, label=f"{name} (AUC = {auc:.3f})")
        else:
            ax.plot([], [], color=colors[c], lw=1.8, label=f"{name} (undefined: {int(positive.sum())} positives)")
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="chance (AUC = 0.5)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize=8 if k <= 8 else 6)
    macro = f", macro AUC = {np.mean(aucs):.3f}" if aucs else ""
    ax.set_title(title if title is not None else f"ROC curves (one vs rest{macro})")
    return _save(fig, path, dpi)


_LOG_SERIES = ("train_loss", "val_loss", "train_acc", "val_acc")


def plot_training_curves(
    log: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw loss and accuracy per epoch, training and validation, in two panels.

    Parameters
    ----------
    log : pandas.DataFrame
        One row per epoch with the column ``epoch`` and any of ``train_loss``,
        ``val_loss``, ``train_acc``, ``val_acc`` (at least one loss). NaN entries (e.g.
        epochs without validation) are skipped. The epoch of the lowest ``val_loss`` is
        marked.
    path : str or os.PathLike
        Output image; missing parent folders are created.
    title : str, optional
        Figure title.
    dpi : int, optional
        Resolution of raster formats.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``log`` is not a DataFrame.
    ValueError
        If ``log`` has no ``epoch`` column, no loss column, or no rows.
    """
    if not isinstance(log, pd.DataFrame):
        raise TypeError(f"log must be a pandas DataFrame, got {type(log).__name__}")
    present = [c for c in _LOG_SERIES if c in log.columns]
    if "epoch" not in log.columns or not any(c.endswith("_loss") for c in present):
        raise ValueError(
            f"log needs the column 'epoch' and at least one of 'train_loss', 'val_loss' "
            f"(optionally 'train_acc', 'val_acc'); got columns {list(log.columns)}"
        )
    if len(log) == 0:
        raise ValueError("log has no rows")
    log = log.sort_values("epoch")
    epoch = log["epoch"].to_numpy(dtype=np.float64)

    from matplotlib.ticker import MaxNLocator

    fig = _new_figure((11.0, 4.2))
    axes = fig.subplots(1, 2)
    whole_epochs = bool(np.all(epoch == np.round(epoch)))
    best = None
    if "val_loss" in log.columns and log["val_loss"].notna().any():
        best = float(log.loc[log["val_loss"].idxmin(), "epoch"])
    for ax, kind, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        drawn = False
        for split, color in (("train", "C0"), ("val", "C1")):
            col = f"{split}_{kind}"
            if col not in log.columns:
                continue
            y = log[col].to_numpy(dtype=np.float64)
            ok = np.isfinite(y)
            if ok.any():
                marker = "o" if ok.sum() <= 30 else None
                ax.plot(epoch[ok], y[ok], color=color, marker=marker, ms=3, lw=1.6,
                        label="training" if split == "train" else "validation")
                drawn = True
        if best is not None:
            ax.axvline(best, color="0.4", lw=1, ls=":", label=f"lowest val loss (epoch {best:g})")
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {label} logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
        if whole_epochs:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label.capitalize())
        ax.grid(alpha=0.3)
    if title is not None:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_f1_curve(
    curve: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw precision, recall and F1 against the detection threshold (Tellez et al., Fig. 7).

    The threshold of the highest F1 is marked and given in the legend.

    Parameters
    ----------
    curve : pandas.DataFrame
        From :func:`~histoscope.metrics.f1_threshold_curve`: the columns ``threshold``,
        ``precision``, ``recall`` and ``f1`` (NaN entries, e.g. the precision of a threshold
        that keeps no detection, are skipped).
    path : str or os.PathLike
        Output image; missing parent folders are created.
    title : str, optional
        Default: "Detection F1 against threshold" with the best F1.
    dpi : int, optional
        Resolution of raster formats.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``curve`` is not a DataFrame.
    ValueError
        If a column is missing or ``curve`` has no rows.

    References
    ----------
    .. [1] Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as
       a reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018,
       Fig. 7.
    """
    if not isinstance(curve, pd.DataFrame):
        raise TypeError(f"curve must be a pandas DataFrame, got {type(curve).__name__}")
    needed = ("threshold", "precision", "recall", "f1")
    missing = [c for c in needed if c not in curve.columns]
    if missing:
        raise ValueError(f"curve needs the columns {list(needed)} (from f1_threshold_curve); missing {missing}")
    if len(curve) == 0:
        raise ValueError("curve has no rows")
    curve = curve.sort_values("threshold")
    th = curve["threshold"].to_numpy(dtype=np.float64)

    fig = _new_figure((6.4, 4.6))
    ax = fig.add_subplot()
    series = (("precision", "C0", "precision", 1.4), ("recall", "C1", "recall", 1.4), ("f1", "C2", "F1", 2.2))
    for col, color, label, lw in series:
        y = curve[col].to_numpy(dtype=np.float64)
        ok = np.isfinite(y)
        ax.plot(th[ok], y[ok], color=color, lw=lw, label=label)
    f1 = curve["f1"].to_numpy(dtype=np.float64)
    best_text = ""
    if np.isfinite(f1).any():
        b = int(np.nanargmax(f1))
        ax.axvline(th[b], color="0.4", lw=1, ls=":")
        ax.plot([th[b]], [f1[b]], "o", color="C2", ms=6, label=f"best F1 = {f1[b]:.3f} at {th[b]:.2f}")
        best_text = f" (best F1 = {f1[b]:.3f})"
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_xlabel("detection threshold")
    ax.set_ylabel("score")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title if title is not None else f"Detection F1 against threshold{best_text}")
    return _save(fig, path, dpi)

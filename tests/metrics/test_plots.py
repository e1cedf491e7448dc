"""histoscope.metrics.plots: files are written atomically, are valid images, and show something."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import histoscope.metrics.plots as plots_module
from histoscope.metrics import confusion_matrix, plot_confusion_matrix, plot_roc_curves, plot_training_curves

NAMES = ["normal", "adenoma", "well diff.", "moderately diff.", "poorly diff."]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=200)  # class 4 is absent from y_true
    logits = rng.normal(size=(200, 5))
    logits[np.arange(200), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


@pytest.fixture(scope="module")
def log():
    epoch = np.arange(1, 21)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "train_loss": 1.6 * np.exp(-epoch / 6) + 0.1,
            "val_loss": 1.6 * np.exp(-epoch / 8) + 0.25 + 0.002 * (epoch - 12) ** 2,
            "train_acc": 1 - 0.8 * np.exp(-epoch / 5),
            "val_acc": np.where(epoch % 5 == 0, np.nan, 1 - 0.8 * np.exp(-epoch / 7) - 0.05),  # NaN gaps
        }
    )


def _check_png(path: Path, min_std: float = 10.0) -> np.ndarray:
    assert path.is_file()
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels.std() > min_std, f"{path.name} looks blank (pixel std {pixels.std():.2f})"
    assert not list(path.parent.glob(".partial*")), "a temporary file was left behind"
    return pixels


@pytest.fixture(scope="module")
def rendered(data, log, tmp_path_factory):
    """The three figures, drawn once into a folder that does not exist yet: name -> (path, Figure)."""
    target = tmp_path_factory.mktemp("plots") / "does" / "not" / "exist"
    assert not target.parent.exists()
    figures = []
    save = plots_module._save

    def spy(fig, path, dpi):
        figures.append(fig)
        return save(fig, path, dpi)

    y, probs = data
    cm = confusion_matrix(y, probs.argmax(axis=1), n_classes=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots_module, "_save", spy)
        paths = [
            plot_confusion_matrix(cm, NAMES, target / "cm.png", dpi=80),
            plot_roc_curves(y, probs, NAMES, target / "roc.png", dpi=80),  # class 4 is absent from y_true
            plot_training_curves(log, target / "curves.png", title="resnet50", dpi=80),
        ]
    return dict(zip(["cm", "roc", "curves"], zip(paths, figures)))


@pytest.mark.parametrize("name", ["cm", "roc", "curves"])
def test_figures_are_valid_png_and_not_blank(rendered, name):
    path, _ = rendered[name]
    assert path.name == f"{name}.png"
    _check_png(path)


def test_missing_parent_folders_are_created(rendered):
    folder = rendered["cm"][0].parent
    assert folder.name == "exist"
    assert sorted(p.name for p in folder.iterdir()) == ["cm.png", "curves.png", "roc.png"]  # no temporary files


@pytest.mark.parametrize("name", ["cm", "roc", "curves"])
def test_no_text_is_cut_off(rendered, name):
    """Every label, tick label, title, legend and cell annotation lies inside the saved page."""
    _, fig = rendered[name]
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, everything drawn
    page = fig.bbox_inches
    inside = drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= page.x1 + 0.01 and drawn.y1 <= page.y1 + 0.01
    assert inside, f"something is cut off: drawn {drawn.bounds} on a page of {page.bounds} inches"


def test_confusion_matrix_annotates_counts_and_row_percentages(rendered):
    _, fig = rendered["cm"]
    ax = fig.axes[0]
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 25
    cm = np.asarray(ax.images[0].get_array())
    assert cm.max() <= 1.0  # coloured by row fraction
    assert all("\n" in c for c in cells)
    assert cells[-1] == "0\n-"  # the absent class has no row percentages
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES


def test_confusion_matrix_by_count(tmp_path):
    out = plot_confusion_matrix([[120, 3], [7, 40]], ["benign", "malignant"], tmp_path / "cm.png", normalize=False, dpi=80)
    _check_png(out)


def test_existing_file_is_replaced(tmp_path):
    out = tmp_path / "cm.png"
    plot_confusion_matrix([[4, 1], [0, 5]], ["a", "b"], out, dpi=80)
    before = out.read_bytes()
    plot_confusion_matrix([[9, 0], [0, 9]], ["a", "b"], out, dpi=80)
    assert out.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def test_training_curves_without_accuracy(log, tmp_path):
    _check_png(plot_training_curves(log[["epoch", "train_loss"]], tmp_path / "loss_only.png", dpi=80))


def test_other_formats(tmp_path):
    out = plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.pdf")
    assert out.read_bytes().startswith(b"%PDF")


def test_bad_inputs(data, log, tmp_path):
    y, probs = data
    with pytest.raises(ValueError, match=r"square.*shape \(2, 3\)"):
        plot_confusion_matrix(np.ones((2, 3), dtype=int), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"2 class names.*3 classes"):
        plot_confusion_matrix(np.ones((3, 3), dtype=int), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-negative"):
        plot_confusion_matrix([[1, -1], [0, 2]], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"suffix must be one of"):
        plot_confusion_matrix([[1, 0], [0, 2]], ["a", "b"], tmp_path / "x.docx")
    with pytest.raises(ValueError, match=r"shapes \(199,\) and \(200, 5\)"):
        plot_roc_curves(y[:-1], probs, NAMES, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"got columns \['epoch', 'train_acc'\]"):
        plot_training_curves(log[["epoch", "train_acc"]], tmp_path / "x.png")
    with pytest.raises(TypeError, match="DataFrame"):
        plot_training_curves(log.to_dict(), tmp_path / "x.png")
    assert not list(tmp_path.iterdir()), "a failed call left a file behind"

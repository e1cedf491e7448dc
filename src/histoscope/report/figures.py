"""Figures that explain what a step does (for the docs and reports)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["augmentation_figure"]

_SHORT = {
    "R": "rot 90k + mirror",
    "S": "scale 0.75-1.25",
    "E": "elastic a=100 s=10",
    "C": "HED stain, s=0.05",
    "H": "bright/contr/sat",
    "B": "blur s 0-2",
    "G": "noise sd 0-0.1",
}


def augmentation_figure(
    image: np.ndarray,
    path: str | os.PathLike[str],
    *,
    letters: str = "RSECHBG",
    rows: int = 3,
    crop: int | None = None,
    seed: int = 0,
    dpi: int = 100,
) -> Path:
    """Write a figure like Fig. 5 of Tellez et al. (2018): one patch, one column per augmentation.

    Column 0 is the original; then one column per letter (that operation alone);
    the last column applies all the letters together.  Each row is a fresh random
    draw.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 patch (square if ``R`` is among the letters).
    path : str or os.PathLike
        Output image; the suffix picks the format (``.png``, ``.jpg``, ``.pdf``, ...).
    letters : str, optional
        Augmentation letters (see :data:`histoscope.stain.LETTERS`).
    rows : int, optional
        Number of random draws.
    crop : int, optional
        Apply the random crop of the pipeline (e.g. 100 from 128) in the last column.
    seed : int, optional
        Seed; the same seed draws the same figure.
    dpi : int, optional
        Resolution of the PNG.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..stain.transforms import Augmentation, parse_letters
    from ..utils.convert import image_to_tensor, tensor_to_image

    letters = parse_letters(letters)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    x = image_to_tensor(np.ascontiguousarray(image))
    columns: list[tuple[str, Augmentation | None]] = [("original", None)]
    for i, letter in enumerate(letters):
        columns.append((letter, Augmentation(letter, seed=seed * 1000 + i)))
    columns.append((letters + (f" + crop {crop}" if crop else ""), Augmentation(letters, crop=crop, seed=seed * 1000 + 999)))
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows + 0.9), squeeze=False)
    for c, (title, aug) in enumerate(columns):
        for r in range(rows):
            ax = axes[r, c]
            shown = image if aug is None else tensor_to_image(aug(x))
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        if aug is not None and len(title) == 1:
            axes[-1, c].set_xlabel(_SHORT[title], fontsize=7)
    fig.suptitle("histoscope augmentations (Tellez et al. 2018, Fig. 5 style): one column per operation", fontsize=9)
    fig.tight_layout()
    from ..utils.figures import save_figure

    try:
        return save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)

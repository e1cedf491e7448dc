"""Fixtures of the stain tests: real H&E tiles (from ../shared, skipped when absent),
scikit-image's IHC sample and generated two-stain images with known stain vectors."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest


@lru_cache(maxsize=32)
def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"))  # the PNGs are RGBA with an opaque alpha channel
    arr.flags.writeable = False  # shared between tests: nobody may modify it
    return arr


@pytest.fixture
def load_rgb(shared):
    """``load_rgb("histolab", "tcga-lung-rgb.png")``: an RGB uint8 copy of a tile in
    ../shared/data/stain_targets (the test skips when ../shared is absent)."""

    def load(*parts: str) -> np.ndarray:
        p: Path = shared("stain_targets", *parts)
        return _read_rgb(str(p)).copy()

    return load


@pytest.fixture(scope="session")
def ihc() -> np.ndarray:
    """scikit-image's H-DAB immunohistochemistry sample (512x512, ships with scikit-image)."""
    from skimage import data

    return np.array(data.immunohistochemistry())


#: Stain vectors of the generated images (unit rows, (R, G, B) log10 OD); deliberately
#: far (> 0.15 per component) from Macenko's reference vectors, so that recovering them
#: cannot be confused with falling back to the reference.
SYNTH_H = np.array([0.70, 0.66, 0.27]) / np.linalg.norm([0.70, 0.66, 0.27])
SYNTH_E = np.array([0.30, 0.88, 0.37]) / np.linalg.norm([0.30, 0.88, 0.37])


def make_synthetic_he(
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    *,
    i0: float = 240.0,
    scale: float = 0.6,
    white_background: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A two-stain image with known stain vectors :data:`SYNTH_H`, :data:`SYNTH_E`.

    Concentrations are smooth random fields clipped at zero (so about a quarter of
    the pixels hold a single stain and a quarter none), OD = c_H * H + c_E * E, and
    ``I = i0 * 10 ** -OD - 1`` (the OD convention of histoscope with incident light
    ``i0``).  Returns the uint8 image and the (2, H, W) concentrations.
    """
    from scipy import ndimage as ndi

    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal((2, h, w)), (0, 6, 6))
    f /= f.std(axis=(1, 2), keepdims=True)
    conc = np.clip(f, 0, None) * scale
    od = conc[0, ..., None] * SYNTH_H + conc[1, ..., None] * SYNTH_E
    img = np.clip(np.rint(i0 * 10.0 ** -od - 1.0), 0, 255).astype(np.uint8)
    if white_background:
        img[conc.sum(axis=0) == 0] = 255
    return img, conc


@pytest.fixture
def synthetic_he():
    """The :func:`make_synthetic_he` factory."""
    return make_synthetic_he


@pytest.fixture
def synth_vectors() -> np.ndarray:
    """(3, 2) stain vectors (H, E columns) of :func:`make_synthetic_he`."""
    return np.stack([SYNTH_H, SYNTH_E], axis=1)

"""Grad-CAM of the slide CNN on a whole compressed slide, its overlay, mask and Jaccard.

Tellez et al. [1]_ (Sec. III-E, eq. 7) explain the slide CNN with Grad-CAM on its
*first* layer, whose feature maps ``A^k`` have the grid's resolution:
``alpha_k = mean_{i,j} d y^c / d A^k_{ij}`` (spatially averaged gradients of the class
score) and ``L^c = ReLU(sum_k alpha_k A^k)``.  :func:`slide_gradcam` computes exactly
that with :func:`histoscope.explain.cam.grad_cam` (target layer
:attr:`~histoscope.nic.model.SlideCNN.first_layer`), on the whole grid (the CNN ends in
global pooling, so it accepts any size).

The map is turned into a region by :func:`postprocess` and compared with a
ground-truth region (e.g. the tumour annotation rasterised to the grid) by
:func:`jaccard`, as in the paper's synthetic benchmark.

References
----------
.. [1] D. Tellez et al., "Neural Image Compression for Gigapixel Histopathology Image
       Analysis", IEEE TPAMI 2019 (arXiv:1811.02840).
.. [2] R. R. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
       Gradient-based Localization", ICCV 2017.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from ..explain.cam import grad_cam, overlay_heatmap
from .crops import D4, check_grid, d4, d4_inverse
from .model import SlideCNN

__all__ = ["slide_gradcam", "gradcam_overlay", "postprocess", "jaccard"]


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def slide_gradcam(
    model: SlideCNN,
    emb: np.ndarray,
    *,
    target: int | None = None,
    tta: bool = False,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """Grad-CAM on the first layer of the slide CNN over a whole grid (paper eq. 7).

    Parameters
    ----------
    model : SlideCNN
        Run in eval mode on the device of its parameters; its state is restored.
    emb : numpy.ndarray
        ``(H, W, C)`` float32 embedding grid.
    target : int, optional
        Output to explain: a class index, or the regression output (0 for a single
        target).  ``None``: the class the model predicts for the whole grid (for
        regression: output 0).
    tta : bool
        Average the maps of the 8 rotations / mirrors of the grid, each mapped back to
        the grid's orientation, then divide by the maximum.
    tissue : numpy.ndarray, optional
        ``(H, W)`` tissue fraction: cells without tissue get 0 (the first layer's response
        to an empty cell is a bias, not evidence found in the slide).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 in [0, 1] (1 at the strongest positive evidence; all zero
        when there is none).
    """
    if not isinstance(model, SlideCNN):
        raise TypeError(f"model must be a SlideCNN, got {type(model).__name__}")
    e, _ = check_grid(emb)
    if e.shape[2] != model.in_channels:
        raise ValueError(f"the model reads C = {model.in_channels} codes, emb has C = {e.shape[2]} (shape {e.shape})")
    x = torch.from_numpy(np.ascontiguousarray(e.transpose(2, 0, 1)))[None].to(_device_of(model))
    if target is None:
        if model.task == "classification":
            was_training = model.training
            try:
                with torch.no_grad():
                    target = int(model.eval()(x).argmax(1)[0])
            finally:
                model.train(was_training)
        else:
            target = 0
    ks = D4 if tta else (0,)
    maps = []
    for k in ks:  # one view at a time: rotated grids of a non-square slide differ in shape
        m = grad_cam(model, d4(x, k), target_layer=model.first_layer, target=target)[0]
        maps.append(d4_inverse(m, k))
    heat = torch.stack(maps).mean(0).cpu().numpy().astype(np.float32)
    if tissue is not None:
        t = np.asarray(tissue)
        if t.shape != heat.shape:
            raise ValueError(f"tissue must have the grid's shape {heat.shape}, got {t.shape}")
        heat = np.where(t > 0, heat, 0.0).astype(np.float32)
    top = float(heat.max())
    return heat / top if top > 0 else np.zeros_like(heat)


def gradcam_overlay(
    thumbnail: np.ndarray,
    heatmap: np.ndarray,
    *,
    alpha: float = 0.4,
    cmap: str = "jet",
) -> np.ndarray:
    """The Grad-CAM map blended over a slide thumbnail (:func:`histoscope.explain.cam.overlay_heatmap`).

    Parameters
    ----------
    thumbnail : numpy.ndarray
        HxWx3 ``uint8`` RGB image of the slide covering the same area as the grid.
    heatmap : numpy.ndarray
        ``(h, w)`` map in [0, 1] from :func:`slide_gradcam`; resized bilinearly to the
        thumbnail.
    alpha, cmap : optional
        Opacity and matplotlib colormap.

    Returns
    -------
    numpy.ndarray
        HxWx3 ``uint8`` overlay.
    """
    return overlay_heatmap(thumbnail, heatmap, alpha=alpha, cmap=cmap)


def postprocess(
    heatmap: np.ndarray,
    *,
    threshold: Literal["otsu"] | float = "otsu",
    closing: int = 1,
    largest: bool = True,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """A Grad-CAM map as a binary region.

    Steps, in order: (1) threshold: ``heatmap > t`` with ``t`` by Otsu's method
    (:func:`skimage.filters.threshold_otsu` over the map's values, inside ``tissue``
    when given) or a fixed float; (2) binary closing with a disk of radius ``closing``
    cells (0: none) to fill small gaps; (3) with ``largest``, keep the largest
    8-connected component.  Cells outside ``tissue`` (fraction 0) are never in the mask.

    Parameters
    ----------
    heatmap : numpy.ndarray
        ``(H, W)`` map in [0, 1].
    threshold : "otsu" or float
    closing : int
        Radius of the closing disk.
    largest : bool
        Keep only the largest connected component.
    tissue : numpy.ndarray, optional
        ``(H, W)`` tissue fraction.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` bool mask; all False for a constant map (nothing stands out).
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.morphology import disk
    from scipy.ndimage import binary_closing

    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must have shape (H, W), got {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("heatmap holds NaN or infinite values")
    inside = np.ones(h.shape, bool) if tissue is None else np.asarray(tissue) > 0
    if inside.shape != h.shape:
        raise ValueError(f"tissue must have the heatmap's shape {h.shape}, got {inside.shape}")
    if isinstance(closing, bool) or not isinstance(closing, (int, np.integer)) or closing < 0:
        raise ValueError(f"closing must be an int >= 0, got {closing!r}")
    values = h[inside]
    if values.size == 0 or np.ptp(values) == 0:
        return np.zeros(h.shape, bool)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a float, got {threshold!r}")
        t = float(threshold_otsu(values))
    else:
        t = float(threshold)
    mask = (h > t) & inside
    if closing > 0:
        mask = binary_closing(mask, structure=disk(int(closing)).astype(bool)) & inside
    if largest and mask.any():
        lab = label(mask, connectivity=2)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        mask = lab == int(sizes.argmax())
    return mask


def jaccard(mask: Any, truth: Any) -> float:
    """Jaccard index (intersection over union) of two binary masks of the same shape.

    Equals :func:`sklearn.metrics.jaccard_score` on the flattened masks; two empty
    masks give 1.0 (they agree; sklearn's ``zero_division=1.0``).
    """
    a, b = np.asarray(mask), np.asarray(truth)
    if a.shape != b.shape:
        raise ValueError(f"mask and truth must have the same shape, got {a.shape} and {b.shape}")
    a, b = a.astype(bool), b.astype(bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union

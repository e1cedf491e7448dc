"""Slide-level learning on compressed slides (Neural Image Compression, Tellez et al.).

The top of the NIC pipeline: :mod:`histoscope.infer.compress` turns a slide into an
embedding grid ``(H, W, C)`` with its tissue fraction ``(H, W)``; this package trains a
CNN on those grids and explains it.

* :mod:`~histoscope.nic.model`: :class:`SlideCNN` (depthwise-separable convolutions,
  global pooling), :func:`save_slide_model` / :func:`load_slide_model`.
* :mod:`~histoscope.nic.crops`: crop origins drawn by tissue density, zero-padded
  crops, the 8 rotations / mirrors (:func:`d4`).
* :mod:`~histoscope.nic.train`: :func:`fit_slide_model`, :func:`predict_slides`
  (T crops x 8 orientations averaged), :func:`cross_validate` (the paper's 4-fold
  rotation), :func:`slide_metrics` (AUC / accuracy, Spearman).
* :mod:`~histoscope.nic.gradcam`: :func:`slide_gradcam` (Grad-CAM on the first layer,
  paper eq. 7), :func:`gradcam_overlay`, :func:`postprocess`, :func:`jaccard`.

Examples
--------
>>> import numpy as np
>>> from histoscope.nic import fit_slide_model, predict_slides
>>> rng = np.random.default_rng(0)
>>> slides = [(rng.normal(size=(24, 24, 8)).astype(np.float32), None, i % 2) for i in range(8)]
>>> model, history = fit_slide_model(slides, crop=16, epochs=1, width=8, depth=2)
>>> predict_slides(model, slides[:2], crop=16, n_crops=2).shape
(2, 2)
"""

from .crops import D4, crop, crop_weights, d4, d4_inverse, sample_crop_origins
from .gradcam import gradcam_overlay, jaccard, postprocess, slide_gradcam
from .model import SLIDE_MODEL_FORMAT, TASKS, SlideCNN, Task, load_slide_model, save_slide_model
from .train import (
    assign_folds,
    cross_validate,
    fit_slide_model,
    fold_rotation,
    predict_slides,
    slide_metrics,
)

__all__ = [
    "D4",
    "SLIDE_MODEL_FORMAT",
    "SlideCNN",
    "TASKS",
    "Task",
    "assign_folds",
    "crop",
    "crop_weights",
    "cross_validate",
    "d4",
    "d4_inverse",
    "fit_slide_model",
    "fold_rotation",
    "gradcam_overlay",
    "jaccard",
    "load_slide_model",
    "postprocess",
    "predict_slides",
    "sample_crop_origins",
    "save_slide_model",
    "slide_gradcam",
    "slide_metrics",
]

"""Metrics of histoscope's classifiers and detectors, and their figures.

The per-class table implements the one-vs-rest formulas of Kim et al., "Classification
of colorectal cancer in histological images using deep neural networks", Table 2
(precision, recall/sensitivity, specificity, NPV), with AUROC, average precision/mAP,
Cohen's kappa (plain and quadratic) and the confusion matrix; undefined ratios (0/0)
are NaN. See :mod:`histoscope.metrics.classification` for the conventions.

Plots (:mod:`histoscope.metrics.plots`) import matplotlib only when called.
"""

from .classification import (
    PER_CLASS_COLUMNS,
    AggregateMethod,
    BinaryMetrics,
    ClassificationReport,
    aggregate_predictions,
    binary_from_classes,
    classification_report,
    confusion_matrix,
    per_class_metrics,
)
from .plots import plot_confusion_matrix, plot_roc_curves, plot_training_curves

__all__ = [
    "AggregateMethod",
    "BinaryMetrics",
    "ClassificationReport",
    "PER_CLASS_COLUMNS",
    "aggregate_predictions",
    "binary_from_classes",
    "classification_report",
    "confusion_matrix",
    "per_class_metrics",
    "plot_confusion_matrix",
    "plot_roc_curves",
    "plot_training_curves",
]

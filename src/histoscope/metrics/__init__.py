"""Metrics of histoscope's classifiers and detectors, and their figures.

The per-class table implements the one-vs-rest formulas of Kim et al., "Classification
of colorectal cancer in histological images using deep neural networks", Table 2
(precision, recall/sensitivity, specificity, NPV), with AUROC, average precision/mAP,
Cohen's kappa (plain and quadratic) and the confusion matrix; undefined ratios (0/0)
are NaN. See :mod:`histoscope.metrics.classification` for the conventions.

Point detections (mitoses) are scored in :mod:`histoscope.metrics.detection`: optimal
one-to-one matching within 8 um, precision/recall/F1 pooled over images, the F1 curve over
the detection threshold, and quadratic kappa and Spearman for grades and scores (Tellez et
al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a reference...").

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
from .detection import (
    CURVE_COLUMNS,
    DetectionMetrics,
    detection_metrics,
    detection_metrics_many,
    f1_threshold_curve,
    match_points,
    score_agreement,
)
from .plots import plot_confusion_matrix, plot_f1_curve, plot_roc_curves, plot_training_curves

__all__ = [
    "AggregateMethod",
    "BinaryMetrics",
    "ClassificationReport",
    "CURVE_COLUMNS",
    "DetectionMetrics",
    "PER_CLASS_COLUMNS",
    "aggregate_predictions",
    "binary_from_classes",
    "classification_report",
    "confusion_matrix",
    "detection_metrics",
    "detection_metrics_many",
    "f1_threshold_curve",
    "match_points",
    "per_class_metrics",
    "plot_confusion_matrix",
    "plot_f1_curve",
    "plot_roc_curves",
    "plot_training_curves",
    "score_agreement",
]

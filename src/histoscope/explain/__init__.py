"""Explanations of network decisions: class activation maps and Grad-CAM.

A leaf utility above the models (it imports neither :mod:`histoscope.models` nor
:mod:`histoscope.train`): :func:`class_activation_map` for networks with the timm
interface (``forward_features`` / ``forward_head`` / ``get_classifier``, a global
average pooling + linear head, like the tissue classifier), :func:`grad_cam` for any
network and a chosen layer (slide-level networks too), and :func:`overlay_heatmap` /
:func:`cam_figure` to draw them over the patches (Kim et al., Fig. 9 style).
"""

from .cam import cam_figure, class_activation_map, grad_cam, overlay_heatmap

__all__ = ["class_activation_map", "grad_cam", "overlay_heatmap", "cam_figure"]

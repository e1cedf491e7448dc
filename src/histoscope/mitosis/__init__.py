"""Mitosis pipeline (layer after models/ and infer/): candidates, post-processing of dense
probability maps into detections, hotspot counting and tumour grading.

References
----------
.. [1] Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a
       reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018.
.. [2] Rao, "MITOS-RCNN: a novel approach to mitotic figure detection in breast cancer
       histopathology images using region based convolutional neural networks", 2018.
"""

from .candidates import candidate_recall, candidates_per_mm2, detect_candidates, detect_candidates_slide
from .hotspot import Hotspot, MitoticCount, grade_from_count, hotspot, mitotic_category, mitotic_count_per_10hpf
from .postprocess import detections_from_map, suppress_close

__all__ = [
    "detect_candidates",
    "detect_candidates_slide",
    "candidate_recall",
    "candidates_per_mm2",
    "detections_from_map",
    "suppress_close",
    "Hotspot",
    "MitoticCount",
    "hotspot",
    "grade_from_count",
    "mitotic_count_per_10hpf",
    "mitotic_category",
]

from .detect import MitosisResult, detect_mitoses, evaluate_detection  # noqa: E402  (after its building blocks)

__all__ += ["MitosisResult", "detect_mitoses", "evaluate_detection"]

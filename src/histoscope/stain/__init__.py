"""Stain tools: colour deconvolution, H&E stain augmentation, normalisation.

Layer 3 of the data flow (slide -> tiles -> **stain** -> models ...): it knows
nothing of models.  The stain matrices and the optical-density convention live in
:mod:`histoscope.stain.deconvolution` only.
"""

from .augmentation import HEDJitterParams, augment_hed, hed_jitter, random_hed_params
from .normalization import (
    NORMALIZERS,
    MacenkoNormalizer,
    MacenkoStains,
    ReinhardNormalizer,
    get_normalizer,
    macenko_stains,
)
from .transforms import LETTERS, AugmentConfig, Augmentation, augment, parse_letters
from .deconvolution import (
    HDX_FROM_RGB,
    HED_FROM_RGB,
    MACENKO_REFERENCE_HE,
    MACENKO_REFERENCE_MAX_CONC,
    RGB_FROM_HDX,
    RGB_FROM_HED,
    hed_to_rgb,
    od_to_rgb,
    rgb_to_dab,
    rgb_to_hed,
    rgb_to_od,
    rgb_to_stains,
    stain_matrix,
    stains_to_rgb,
)

__all__ = [
    "RGB_FROM_HED",
    "HED_FROM_RGB",
    "RGB_FROM_HDX",
    "HDX_FROM_RGB",
    "MACENKO_REFERENCE_HE",
    "MACENKO_REFERENCE_MAX_CONC",
    "stain_matrix",
    "rgb_to_od",
    "od_to_rgb",
    "rgb_to_stains",
    "stains_to_rgb",
    "rgb_to_hed",
    "hed_to_rgb",
    "rgb_to_dab",
    "HEDJitterParams",
    "random_hed_params",
    "hed_jitter",
    "augment_hed",
    "MacenkoStains",
    "macenko_stains",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "get_normalizer",
    "NORMALIZERS",
    "LETTERS",
    "AugmentConfig",
    "Augmentation",
    "augment",
    "parse_letters",
]

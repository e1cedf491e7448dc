"""A model that asks for stain normalisation gets it in training data and in slide inference."""

from __future__ import annotations

import numpy as np
import pytest

from histoscope.models import create_model
from histoscope.models.registry import ModelConfig, stain_transform
from histoscope.stain import MacenkoNormalizer


def test_stain_is_part_of_the_config_and_rebuilds():
    m = create_model("small_cnn", num_classes=2, input_size=32, stain="macenko", width=8)
    assert m.config.stain == "macenko"
    again = create_model(m.config.arch, **m.config.build_kwargs())
    assert again.config.stain == "macenko" and again.config.arch_kwargs == {"width": 8}
    assert ModelConfig.from_dict(m.config.to_dict()).stain == "macenko"
    with pytest.raises(ValueError, match="stain"):
        ModelConfig(arch="small_cnn", num_classes=2, stain="vahadane")


def test_stain_transform_is_macenko_to_the_reference():
    from skimage import data

    tile = np.array(data.immunohistochemistry())[:128, :128]
    assert stain_transform(ModelConfig(arch="x", num_classes=1)) is None
    fn = stain_transform(ModelConfig(arch="x", num_classes=1, stain="macenko"))
    expected = MacenkoNormalizer(workers=1).fit_reference().transform(tile)
    assert np.array_equal(fn(tile), expected)
    white = np.full((64, 64, 3), 255, np.uint8)
    assert np.array_equal(fn(white), white)  # glass stays glass, without a warning escaping

"""The Examples sections of the stain modules' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["deconvolution", "augmentation", "normalization", "transforms"],
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"histoscope.stain.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{mod.__name__} has no docstring examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {mod.__name__}"

"""Shared fixtures. Real data is read from ../shared/data (beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HISTOSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path of a file in ../shared/data; skips the test with a clear reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} is missing (tests that need ../shared/data skip without it)")
    return p


@pytest.fixture
def shared():
    """``shared("slides", "x.svs")``: a path in ../shared/data, or skip when it is absent."""
    return shared_path


@pytest.fixture
def cmu_svs() -> Path:
    return shared_path("slides", "CMU-1-Small-Region.svs")


@pytest.fixture
def tcga_svs() -> Path:
    return shared_path("slides", "tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


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



@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: tiny tensors run as fast on one, and two OpenMP
    threads on a busy 2-core machine were measured 15x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

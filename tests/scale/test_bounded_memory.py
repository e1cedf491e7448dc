"""Scale: a large synthetic slide is tiled and analysed in bounded memory (slow)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory):
    from histoscope.datasets import synthetic_slide

    path = tmp_path_factory.mktemp("big") / "big.tiff"
    info = synthetic_slide(path, width=16_000, height=16_000, mpp=0.5, seed=3, verbose=False)
    return info


def _child_peak_mb(cmd: list[str]) -> float:
    """Run ``cmd`` in a child process and return its peak resident memory in MB."""
    code = (
        "import resource, subprocess, sys; "
        f"p = subprocess.run({cmd!r}, capture_output=True, text=True); "
        "sys.stderr.write(p.stdout + p.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if p.returncode == 0 else -p.returncode)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    value = float(out.stdout.strip().splitlines()[-1])
    assert value >= 0, out.stderr
    return value


@pytest.mark.slow
def test_tile_big_slide_in_bounded_memory(big_slide, tmp_path):
    exe = [sys.executable, "-m", "histoscope.cli.main"]
    peak = _child_peak_mb(exe + ["tile", str(big_slide.path), "--format", "zarr", "--out", str(tmp_path / "t"), "-q"])
    assert peak < 1500, f"tiling a 16k x 16k slide peaked at {peak:.0f} MB"
    import zarr

    g = zarr.open_group(str(tmp_path / "t" / "big.zarr"), mode="r")
    assert g["tiles"].shape[0] > 500


@pytest.mark.slow
def test_analyze_big_slide_in_bounded_memory(big_slide, tmp_path):
    exe = [sys.executable, "-m", "histoscope.cli.main"]
    peak = _child_peak_mb(exe + ["analyze", str(big_slide.path), "--out", str(tmp_path / "a"), "-q"])
    assert peak < 1500, f"analysing a 16k x 16k slide peaked at {peak:.0f} MB"
    assert (tmp_path / "a" / "big" / "report.html").is_file()

"""The command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from histoscope.cli.main import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help():
    from histoscope import __version__

    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output
    assert "analyze" in run("--help").output


def test_info(cmu_svs, tcga_svs):
    r = run("info", str(cmu_svs))
    assert r.exit_code == 0
    assert "2220 x 2967" in r.output and "0.499" in r.output
    r = run("info", "--json", str(tcga_svs))
    d = json.loads(r.output)
    assert d["level_count"] == 2 and d["mpp"] is None
    r = run("info", "--json", "--slide-mpp", "0.25", str(tcga_svs))
    assert json.loads(r.output)["mpp"] == [0.25, 0.25]


def test_info_bad_file_is_one_clear_line(tmp_path):
    p = tmp_path / "fake.svs"
    p.write_text("hello")
    r = run("info", str(p))
    assert r.exit_code == 2
    assert "fake.svs" in r.output and "Traceback" not in r.output


def test_tile_png_and_table(tmp_path, cmu_svs):
    r = run("tile", str(cmu_svs), "--size", "256", "--mpp", "0.5", "--overlap", "0.3", "--min-tissue", "0.5", "--out", str(tmp_path), "--quiet")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "CMU-1-Small-Region-tiles.csv")
    pngs = list((tmp_path / "CMU-1-Small-Region").glob("*.png"))
    assert len(pngs) == len(table) > 20
    assert (table["tissue"] >= 0.5).all()
    steps = set(pd.Series(sorted(table["x"].unique())).diff().dropna().astype(int))
    assert steps <= {179, 180, 358, 359, 537, 538}  # stride 179.2 px at overlap 0.3 (gaps skip non-tissue)


def test_tile_zarr_random_parquet(tmp_path, cmu_svs):
    import zarr

    r = run("tile", str(cmu_svs), "--random", "12", "--size", "128", "--format", "zarr", "--table", "parquet", "--seed", "3", "--out", str(tmp_path), "-q")
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(tmp_path / "CMU-1-Small-Region.zarr"), mode="r")
    assert g["tiles"].shape == (12, 128, 128, 3)
    t1 = pd.read_parquet(tmp_path / "CMU-1-Small-Region-tiles.parquet")
    r = run("tile", str(cmu_svs), "--random", "12", "--size", "128", "--format", "zarr", "--table", "parquet", "--seed", "3", "--out", str(tmp_path / "again"), "-q")
    t2 = pd.read_parquet(tmp_path / "again" / "CMU-1-Small-Region-tiles.parquet")
    pd.testing.assert_frame_equal(t1, t2)


def test_tile_without_mpp_says_how_to_fix(tmp_path, tcga_svs):
    r = run("tile", str(tcga_svs), "--out", str(tmp_path), "-q")
    assert r.exit_code == 1
    assert "--slide-mpp" in r.output and "tcga-cr-7395" in r.output


def test_analyze_multi_slide_with_a_failure(tmp_path, cmu_svs, tcga_svs):
    bad = tmp_path / "in" / "truncated.svs"
    bad.parent.mkdir()
    data = cmu_svs.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    r = run("analyze", str(cmu_svs), str(bad), str(tcga_svs), "--out", str(out), "--workers", "2", "-q")
    assert r.exit_code == 1
    assert "truncated.svs" in r.output and "1 of 3 slide(s) failed" in r.output
    cohort = pd.read_csv(out / "cohort.csv")
    assert list(cohort["status"]) == ["ok", "failed", "ok"]
    for name in ("CMU-1-Small-Region", "tcga-cr-7395-01a-01-ts1"):
        folder = out / name
        for f in ("report.html", "summary.json", "tiles.csv", "thumbnail.png", "tissue-overlay.png", "tile-grid.png"):
            assert (folder / f).is_file(), f
    assert not (out / "truncated").exists()
    assert not list(out.glob(".*partial"))
    html = (out / "CMU-1-Small-Region" / "report.html").read_text()
    assert "data:image/jpeg;base64," in html and "0.499" in html and "<script" not in html
    summary = json.loads((out / "CMU-1-Small-Region" / "summary.json").read_text())
    assert summary["tissue_tiles"] == len(pd.read_csv(out / "CMU-1-Small-Region" / "tiles.csv"))
    warn = (out / "tcga-cr-7395-01a-01-ts1" / "report.html").read_text()
    assert "does not record its resolution" in warn


def test_console_script_runs(cmu_svs):
    exe = [sys.executable, "-m", "histoscope.cli.main", "info", str(cmu_svs)]
    p = subprocess.run(exe, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "openslide" in p.stdout


def test_tile_with_user_masks(tmp_path, cmu_svs):
    """An annotation mask over the top half keeps only tiles at least 50% inside it; wrong shapes fail clearly."""
    import numpy as np
    from PIL import Image

    W, H = 2220, 2967
    ann = np.zeros((H // 10, W // 10), np.uint8)
    ann[: ann.shape[0] // 2] = 255
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(ann).save(masks / "CMU-1-Small-Region.png")
    full = tmp_path / "full.png"
    Image.fromarray(np.full((H // 10, W // 10), 255, np.uint8)).save(full)
    r = run("tile", str(cmu_svs), "--tissue-mask", str(full), "--min-tissue", "1", "--annotation", str(masks), "--out", str(tmp_path / "o"), "-q")
    assert r.exit_code == 0, r.output
    t = pd.read_csv(tmp_path / "o" / "CMU-1-Small-Region-tiles.csv")
    assert len(t) > 0 and (t["annotation"] >= 0.5).all() and (t["y"] + t["h0"] / 2 <= H / 2 + 1).all()
    assert (t["tissue"] == 1.0).all()
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((50, 300), 255, np.uint8)).save(bad)
    r = run("tile", str(cmu_svs), "--annotation", str(bad), "--out", str(tmp_path / "o2"), "-q")
    assert r.exit_code == 1 and "does not match slide" in r.output

"""``histoscope stain normalize|augment|figure`` as a user runs them, on real images and slide tiles."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from histoscope.cli.main import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_normalize_images_equals_the_python_api(shared, tmp_path):
    from histoscope.stain import MacenkoNormalizer

    folder = shared("stain_targets", "histolab")
    target = shared("stain_targets", "torchstain", "target.png")
    r = run("stain", "normalize", str(folder), "--target", str(target), "--out", str(tmp_path / "out"), "-q")
    assert r.exit_code == 0, r.output
    outs = sorted((tmp_path / "out").glob("*.png"))
    assert len(outs) == len(list(folder.glob("*.png")))
    src = folder / "tcga-lung-rgb.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect = MacenkoNormalizer().fit(rgb(target)).transform(rgb(src))
    assert np.array_equal(rgb(tmp_path / "out" / "tcga-lung-rgb.png"), expect)


def test_normalize_slide_tiles(tcga_svs, shared, tmp_path):
    target = shared("stain_targets", "torchstain", "target.png")
    out = tmp_path / "tiles"
    r = run("stain", "normalize", str(tcga_svs), "--target", str(target), "--method", "reinhard", "--slide-mpp", "0.25", "--max-tiles", "4", "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "tcga-cr-7395-01a-01-ts1-tiles.csv")
    pngs = sorted((out / "tcga-cr-7395-01a-01-ts1").glob("*.png"))
    assert len(table) == 4 and len(pngs) == 4
    assert rgb(pngs[0]).shape == (256, 256, 3)


def test_normalize_torch_backend_matches_numpy(shared, tmp_path):
    target = shared("stain_targets", "torchstain", "target.png")
    src = shared("stain_targets", "torchstain", "source.png")
    for backend in ("numpy", "torch"):
        r = run("stain", "normalize", str(src), "--target", str(target), "--backend", backend, "--out", str(tmp_path / backend), "-q")
        assert r.exit_code == 0, r.output
    a = rgb(tmp_path / "numpy" / "source.png").astype(int)
    b = rgb(tmp_path / "torch" / "source.png").astype(int)
    assert np.abs(a - b).max() <= 1


def test_white_target_is_a_clear_error(tmp_path, shared):
    white = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(white)
    src = shared("stain_targets", "torchstain", "source.png")
    r = CliRunner().invoke(cli, ["stain", "normalize", str(src), "--target", str(white), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "white.png" in r.output and "tissue pixels" in r.output


def test_bad_input_file_is_one_line(tmp_path, shared):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    target = shared("stain_targets", "torchstain", "target.png")
    r = CliRunner().invoke(cli, ["stain", "normalize", str(bad), "--target", str(target), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "notes.png" in r.output and "Traceback" not in r.output


def test_augment_writes_replayable_copies(tmp_path):
    from skimage import data

    from histoscope.stain import Augmentation
    from histoscope.stain.transforms import params_from_json
    from histoscope.utils.convert import image_to_tensor, tensor_to_image

    img = np.array(data.immunohistochemistry())[:96, :96]
    src = tmp_path / "patch.png"
    Image.fromarray(img).save(src)
    out = tmp_path / "aug"
    r = run("stain", "augment", str(src), "--letters", "RCSEHBG", "--copies", "3", "--crop", "80", "--seed", "4", "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert [rec["file"] for rec in records] == [f"patch_aug{k}.png" for k in range(3)]
    params = params_from_json([rec["params"] for rec in records])
    replayed = Augmentation("RCSEHBG", crop=80).replay(image_to_tensor(img)[None].expand(3, -1, -1, -1), params)
    for k, im in enumerate(tensor_to_image(replayed)):
        assert np.array_equal(rgb(out / f"patch_aug{k}.png"), im)
    # the same seed gives the same files
    run("stain", "augment", str(src), "--letters", "RCSEHBG", "--copies", "3", "--crop", "80", "--seed", "4", "--out", str(tmp_path / "again"), "-q")
    assert np.array_equal(rgb(tmp_path / "again" / "patch_aug1.png"), rgb(out / "patch_aug1.png"))


def test_augment_rejects_unknown_letters(tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src)
    r = CliRunner().invoke(cli, ["stain", "augment", str(src), "--letters", "RX", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown augmentation letter" in r.output and "Traceback" not in r.output


def test_figure(tmp_path):
    from skimage import data

    src = tmp_path / "patch.png"
    Image.fromarray(np.array(data.immunohistochemistry())[100:300, 100:300]).save(src)
    out = tmp_path / "fig.png"
    r = run("stain", "figure", str(src), "--rows", "2", "--crop", "100", "--out", str(out))
    assert r.exit_code == 0, r.output
    fig = rgb(out)
    assert fig.shape[1] > 2 * fig.shape[0]  # 9 columns, 2 rows
    assert fig.std() > 20  # not blank

"""Tissue-class maps and bundled models: loading by name, tiles classified like a direct call."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from histoscope import open_slide
from histoscope.infer import class_fractions, classify_tiles
from histoscope.models import create_model
from histoscope.models import pretrained as pre
from histoscope.tiles import TileSpec, read_tile, tile_grid
from histoscope.utils.convert import image_to_tensor


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """A small random model exported as a bundle into a temporary weights folder."""
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, classes=["a", "b", "c"], input_size=32, mpp=2.0, width=8).eval()
    monkeypatch.setattr(pre, "BUNDLED", tmp_path / "weights")
    pre.export_bundle(model, tmp_path / "weights" / "toy.pt", card={"data": "none", "command": "test"})
    return model


def test_bundle_round_trip(bundle):
    assert pre.list_pretrained() == ["toy"]
    loaded = pre.load_pretrained("toy")
    assert loaded.config.classes == ["a", "b", "c"] and loaded.config.mpp == 2.0
    assert loaded.card["command"] == "test"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), bundle(x), atol=2e-2, rtol=2e-2)  # weights stored as float16
    with pytest.raises(ValueError, match="no bundled model 'nope'"):
        pre.load_pretrained("nope")


def test_bundle_checksum_is_checked(bundle):
    card_path = pre.BUNDLED / "toy.json"
    card = json.loads(card_path.read_text())
    card["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match="checksum"):
        pre.load_pretrained("toy")


def test_classify_tiles_equals_direct_inference(bundle):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    slide = open_slide(image, mpp=0.5)
    table = classify_tiles(slide, bundle, batch_size=7, workers=2)
    expected = tile_grid(slide, TileSpec(size=32, mpp=2.0))
    assert len(table) == len(expected) > 0
    probs = table[["prob_a", "prob_b", "prob_c"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (table["pred"].to_numpy() == probs.argmax(1)).all()
    row = table.iloc[5]
    with torch.no_grad():
        direct = torch.softmax(bundle(image_to_tensor(read_tile(slide, row))[None]), 1)[0].numpy()
    np.testing.assert_allclose(probs[5], direct, atol=1e-5)
    fr = class_fractions(table, ["a", "b", "c"])
    assert fr["tiles"].sum() == len(table)


def test_classify_tiles_needs_the_slide_resolution(bundle):
    from histoscope.exceptions import MppUnavailableError

    slide = open_slide(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(MppUnavailableError):
        classify_tiles(slide, bundle)


def test_analyze_draws_the_class_map(bundle, tmp_path):
    from histoscope.analyze import AnalysisConfig, analyze_slide
    from histoscope.datasets import synthetic_slide

    info = synthetic_slide(tmp_path / "s.tiff", width=2048, height=1536, seed=1, n_mitoses=2, verbose=False)
    summary = analyze_slide(info.path, tmp_path / "out", config=AnalysisConfig(tissue_model="toy"))
    folder = tmp_path / "out" / "s"
    assert (folder / "tissue-classes.png").is_file() and (folder / "tissue-classes.csv").is_file()
    assert set(summary["tissue_classes"]) == {"a", "b", "c"}
    assert abs(sum(summary["tissue_classes"].values()) - 1) < 1e-9
    assert "Tissue classes (toy)" in (folder / "report.html").read_text()

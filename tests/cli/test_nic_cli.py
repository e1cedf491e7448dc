"""``histoscope nic ...`` end to end, as a user runs it (generated images; the real slides where present)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from histoscope.cli.main import cli
from histoscope.infer.compress import CompressedSlide


def run(*args: str, ok: bool = True):
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def _fields(tmp_path, n: int, size: int = 256):
    """``n`` small H&E-like PNG fields; the label (0/1) decides whether a dark blob is drawn in them."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = np.full((size, size, 3), (225, 160, 200), np.uint8)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        y = i % 2
        if y:
            cy, cx = rng.integers(64, size - 64, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 40**2
            img[blob] = (70, 30, 110)
        p = tmp_path / f"field{i:02d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
        labels.append(y)
    return paths, labels


def test_train_encoder_compress_train_predict(tmp_path):
    paths, labels = _fields(tmp_path, 12)
    enc = tmp_path / "vae.pt"
    run("nic", "train-encoder", "vae", *map(str, paths[:4]), "--out", str(enc), "--patch", "16", "--mpp", "0.5",
        "--code-size", "8", "--width", "8", "--patches", "64", "--epochs", "1", "--slide-mpp", "0.5", "-q")
    card = json.loads(enc.with_suffix(".json").read_text())
    assert card["config"]["kind"] == "vae" and card["config"]["code_size"] == 8 and len(card["sha256"]) == 64

    out = tmp_path / "compressed"
    run("nic", "compress", *map(str, paths), "--encoder", str(enc), "--out", str(out), "--slide-mpp", "0.5", "--workers", "1", "-q")
    stores = sorted(out.glob("*.zarr"))
    assert len(stores) == 12 and (out / "compress.html").is_file() and (out / "field00-embedding.png").is_file()
    c = CompressedSlide.open(stores[0])
    assert c.shape == (16, 16, 8) and c.attrs["encoder_name"] == str(enc)
    mtime = stores[0].stat().st_mtime_ns
    r = run("nic", "compress", str(paths[0]), "--encoder", str(enc), "--out", str(out), "--slide-mpp", "0.5", "--workers", "1", "-q")
    assert "already complete" in r.output and stores[0].stat().st_mtime_ns == mtime

    labels_csv = tmp_path / "labels.csv"
    pd.DataFrame({"slide": [p.stem for p in paths], "label": ["blob" if y else "plain" for y in labels]}).to_csv(labels_csv, index=False)
    model_dir = tmp_path / "model"
    run("nic", "train", *map(str, stores), "--labels", str(labels_csv), "--out", str(model_dir), "--crop", "8",
        "--epochs", "2", "--folds", "4", "--width", "8", "-q")
    cv = json.loads((model_dir / "cv.json").read_text())
    assert cv["classes"] == ["blob", "plain"] and len(cv["per_fold"]) == 4
    assert sorted(i for f in cv["per_fold"] for i in f["test_index"]) == list(range(12))  # each slide tested once
    preds = tmp_path / "preds"
    truth = tmp_path / "truth"
    truth.mkdir()
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(truth / "field00.png")  # everything: Jaccard = mask area share
    run("nic", "predict", *map(str, stores[:3]), "--model", str(model_dir / "fold0.pt"), "--out", str(preds), "--truth-masks", str(truth), "-q")
    table = pd.read_csv(preds / "predictions.csv")
    from histoscope.nic.gradcam import postprocess, slide_gradcam
    from histoscope.nic.model import load_slide_model

    c0 = CompressedSlide.open(stores[0])
    cam_mask = postprocess(slide_gradcam(load_slide_model(model_dir / "fold0.pt"), c0.load(), tissue=c0.tissue), tissue=c0.tissue)
    assert table.loc[0, "gradcam_jaccard"] == pytest.approx(cam_mask.mean())
    assert table["gradcam_jaccard"].iloc[1:].isna().all()  # no mask for those slides
    assert list(table["slide"]) == [s.stem for s in stores[:3]]
    np.testing.assert_allclose(table[["p_blob", "p_plain"]].sum(axis=1), 1.0, atol=1e-5)
    over = np.asarray(Image.open(preds / "field00-gradcam.png"))
    assert over.shape == (256, 256, 3)  # drawn on the slide (thumbnail of the 256 px field)
    assert "field00" in (preds / "report.html").read_text()


def test_bad_inputs_are_one_clear_line(tmp_path):
    paths, _ = _fields(tmp_path, 1)
    r = run("nic", "compress", str(paths[0]), "--encoder", "nonsense", "--out", str(tmp_path / "o"), ok=False)
    assert r.exit_code != 0 and "nonsense" in r.output
    r = run("nic", "train-encoder", "contrastive", str(paths[0]), "--out", str(tmp_path / "c.pt"), ok=False)
    assert r.exit_code == 2 and "two slides" in r.output
    r = run("nic", "compress", str(paths[0]), "--encoder", "mean_rgb", "--out", str(tmp_path / "o"), "--workers", "1", "-q", ok=False)
    assert r.exit_code == 1 and "resolution" in r.output  # a PNG without --slide-mpp
    (tmp_path / "not-a-store").mkdir()
    (tmp_path / "labels.csv").write_text("slide,label\nx,1\n")
    r = run("nic", "train", str(tmp_path / "not-a-store"), "--labels", str(tmp_path / "labels.csv"), ok=False)
    assert r.exit_code == 2 and "not-a-store: not a compressed slide" in r.output and "Traceback" not in r.output


def test_compress_real_slides_and_the_report(cmu_svs, tmp_path):
    out = tmp_path / "real"
    run("nic", "compress", str(cmu_svs), "--encoder", "mean_rgb", "--out", str(out), "--workers", "1", "-q")
    c = CompressedSlide.open(out / "CMU-1-Small-Region.zarr")
    assert c.shape[2] == 3 and 100 < c.attrs["patches_encoded"] < c.attrs["patches_total"]
    html = (out / "compress.html").read_text()
    assert "CMU-1-Small-Region" in html and "data:image" in html


def test_analyze_with_nic(cmu_svs, tmp_path):
    out = tmp_path / "an"
    run("analyze", str(cmu_svs), "--out", str(out), "--nic-encoder", "mean_rgb", "--tissue-model", "none", "-q")
    folder = out / "CMU-1-Small-Region"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["nic"]["grid"][2] == 3 and "NIC compression" in summary["timings_s"]
    assert (folder / "embeddings.zarr").is_dir() and (folder / "embedding.png").is_file()
    assert "Neural Image Compression" in (folder / "report.html").read_text()
    r = run("analyze", str(cmu_svs), "--out", str(out), "--slide-model", str(folder / "summary.json"), ok=False)
    assert r.exit_code == 2 and "--nic-encoder" in r.output

    # a slide model on the mean-RGB grid: prediction in the report, Grad-CAM for the viewer
    import torch

    from histoscope.nic.model import SlideCNN, save_slide_model

    torch.manual_seed(0)
    model = save_slide_model(SlideCNN(3, 2, width=8), tmp_path / "slide.pt", card={"classes": ["low", "high"]})
    out2 = tmp_path / "an2"
    run("analyze", str(cmu_svs), "--out", str(out2), "--nic-encoder", "mean_rgb", "--slide-model", str(model), "--tissue-model", "none", "-q")
    folder = out2 / "CMU-1-Small-Region"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["nic"]["prediction"]) == {"low", "high"}
    assert abs(sum(summary["nic"]["prediction"].values()) - 1) < 1e-5
    cam = Image.open(folder / "gradcam.png")
    thumb = Image.open(folder / "thumbnail.png")
    assert cam.mode == "RGBA" and cam.size == thumb.size  # covers the slide, as the viewer draws it
    assert "Grad-CAM" in (folder / "report.html").read_text()


def test_evaluate_encoders_table1_and_record_in_card(tmp_path):
    from histoscope.models.nic import create_encoder, save_encoder

    enc = save_encoder(create_encoder("vae", code_size=16, patch_size=8, mpp=None, width=8), tmp_path / "digits_vae.pt", card={"seed": 0, "command": "test"})
    before = json.loads(enc.with_suffix(".json").read_text())
    out = tmp_path / "t1"
    r = run("nic", "evaluate-encoders", "--encoder", f"vae={enc}", "--encoder", "mean_rgb", "--task", "digits", "--out", str(out), "--record", "-q")
    table = pd.read_csv(out / "encoders.csv", index_col=0)
    assert list(table.index) == ["vae", "mean_rgb"]
    assert {str(k) for k in range(10)} <= set(table.columns)
    per_class = table[[str(k) for k in range(10)]].to_numpy()
    assert ((per_class >= 0) & (per_class <= 1)).all()
    assert table.loc["vae", "accuracy"] > table.loc["mean_rgb", "accuracy"] + 0.3  # even an untrained conv encoder beats mean RGB on digits
    after = json.loads(enc.with_suffix(".json").read_text())
    assert after["sha256"] == before["sha256"]  # the weights are untouched
    assert after["test_metrics"]["row"][0] == "vae" and "digits" in after["test_metrics"]["task"]
    assert "| vae |" in enc.with_suffix(".md").read_text()
    assert "no card beside" in r.output  # mean_rgb has no file: nothing recorded for it


def test_compress_on_a_dask_cluster_equals_in_process(tmp_path):
    paths, _ = _fields(tmp_path, 3, size=192)
    one, two = tmp_path / "one", tmp_path / "two"
    run("nic", "compress", *map(str, paths), "--encoder", "mean_rgb", "--patch", "32", "--out", str(one), "--slide-mpp", "0.5", "--workers", "1", "-q")
    run("nic", "compress", *map(str, paths), "--encoder", "mean_rgb", "--patch", "32", "--out", str(two), "--slide-mpp", "0.5", "--workers", "2", "-q")
    for p in paths:
        a, b = CompressedSlide.open(one / f"{p.stem}.zarr"), CompressedSlide.open(two / f"{p.stem}.zarr")
        assert a.shape == b.shape == (6, 6, 3)
        np.testing.assert_array_equal(a.load(), b.load())
        np.testing.assert_array_equal(a.tissue, b.tissue)

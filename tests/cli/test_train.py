"""``histoscope train tissue`` and ``histoscope evaluate tissue``, run as a user runs them, on
10 real GlaS images."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from histoscope.cli.main import cli

pytestmark = pytest.mark.shared_data


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a small, busy machine more threads only spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def glas_csv(shared, tmp_path):
    """Two images per grade from GlaS labels.csv, with absolute paths, in a CSV elsewhere."""
    base = shared("glas")
    df = pd.read_csv(base / "labels.csv")
    df = df.groupby("grade_sirinukunwattana", sort=False).head(2).reset_index(drop=True)
    df["image"] = [str(base / p) for p in df["image"]]
    df["annotation"] = [str(base / p) for p in df["annotation"]]
    path = tmp_path / "subset.csv"
    df.to_csv(path, index=False)
    return path


def test_train_then_evaluate_tissue(glas_csv, tmp_path):
    out = tmp_path / "model"
    r = run("train", "tissue", glas_csv, "--preset", "glas", "--epochs", "1", "--size", "32", "--mpp", "2.48", "--n-random", "0", "--workers", "0", "--batch-size", "64", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "best epoch 1" in r.output and str(out / "best.pt") in r.output
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "curves.png", "split.json"):
        assert (out / name).is_file(), name
    ck = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert ck["config"]["arch"] == "small_cnn" and ck["config"]["input_size"] == 32 and ck["config"]["mpp"] == 2.48
    assert len(ck["config"]["classes"]) == 5

    ev = tmp_path / "eval"
    r = run("evaluate", "tissue", glas_csv, "--preset", "glas", "--model", out / "best.pt", "--out", ev, "--quiet")
    assert r.exit_code == 0, r.output
    assert "image level (mean probability): accuracy" in r.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert {"patch", "image_mean", "image_vote_accuracy", "binary_mean"} <= set(metrics)
    for name in ("confusion_patch.png", "confusion_image.png", "roc_patch.png", "patch_predictions.csv"):
        assert (ev / name).is_file(), name
    assert pd.read_csv(ev / "patch_predictions.csv")["name"].nunique() == 10


def test_unknown_arch_lists_the_architectures(glas_csv, tmp_path):
    r = run("train", "tissue", glas_csv, "--preset", "glas", "--arch", "vgg16", "--out", tmp_path / "x")
    assert r.exit_code == 2
    assert "vgg16" in r.output and "Traceback" not in r.output
    for name in ("small_cnn", "resnet50", "densenet121", "inception_v3"):
        assert name in r.output
    assert not (tmp_path / "x").exists()


def test_missing_label_column_is_one_clear_line(glas_csv, tmp_path):
    df = pd.read_csv(glas_csv).drop(columns=["grade_sirinukunwattana"])
    bad = tmp_path / "nolabel.csv"
    df.to_csv(bad, index=False)
    r = run("train", "tissue", bad, "--preset", "glas", "--epochs", "1", "--out", tmp_path / "x")
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "nolabel.csv" in errors[0] and "no column 'grade_sirinukunwattana'" in errors[0]
    assert not (tmp_path / "x").exists()


def test_evaluate_refuses_a_model_with_other_classes(glas_csv, tmp_path):
    from histoscope.models import create_model

    model = create_model("small_cnn", num_classes=2, classes=["benign", "malignant"], input_size=32)
    ckpt = tmp_path / "two.pt"
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, ckpt)
    r = run("evaluate", "tissue", glas_csv, "--preset", "glas", "--model", ckpt, "--out", tmp_path / "ev")
    assert r.exit_code == 2
    assert "classes" in r.output and "benign" in r.output and "Traceback" not in r.output


def test_evaluate_with_a_corrupt_checkpoint_is_one_clear_line(glas_csv, tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(cli, ["evaluate", "tissue", str(glas_csv), "--preset", "glas", "--model", str(bad), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2
    assert "best.pt" in r.output and "not a readable PyTorch checkpoint" in r.output and "Traceback" not in r.output

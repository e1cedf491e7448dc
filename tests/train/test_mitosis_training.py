"""The mitosis recipe end to end on a small slice of the real data: easy model -> hard negatives ->
bagging ensemble -> distilled student, each checkpointed by validation F1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from histoscope.datasets.mitosis import MitosisData, mitosis_samples
from histoscope.train.mitosis import Ensemble, MitosisTrainConfig, evaluate_patches, train_mitosis


@pytest.fixture(scope="module")
def small(shared):
    data = mitosis_samples(shared(), seed=0)
    parts = [g.sample(min(len(g), 48), random_state=0) for _, g in data.samples.groupby(["split", "kind"])]
    return MitosisData(data.images, pd.concat(parts).reset_index(drop=True))


@pytest.fixture(scope="module")
def shared():
    from tests.conftest import shared_path

    return shared_path


def test_recipe_trains_every_stage_and_writes_its_outputs(tmp_path_factory, small):
    out = tmp_path_factory.mktemp("mitosis")
    cfg = MitosisTrainConfig(width=0.25, epochs=2, batch_size=16, ensemble=2, distill_width=0.125, augment="RC", num_workers=0, seed=3)
    res = train_mitosis(small, cfg, out_dir=out, verbose=False)
    for d in ("easy", "member_0", "member_1", "student"):
        hist = pd.read_csv(out / d / "metrics.csv")
        assert len(hist) == 2 and "val_f1" in hist, d
        assert (out / d / "best.pt").is_file()
    lr = pd.read_csv(out / "easy" / "metrics.csv")["lr"].to_numpy()
    np.testing.assert_allclose(lr, [1e-3, 3e-5])  # exponential 1e-3 -> 3e-5
    w = res["negative_weights"]
    assert w is not None and len(w) == int((small.subset("train")["label"] == 0).sum()) and (w > 0).all()
    assert isinstance(res["ensemble"], Ensemble) and len(res["ensemble"].members) == 2
    assert res["student"].width == 0.125
    assert json.loads((out / "summary.json").read_text())["config"]["ensemble"] == 2
    # the ensemble's probability is the mean of its members'
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        p = torch.softmax(res["ensemble"](x), 1)
        q = torch.stack([torch.softmax(m(x), 1) for m in res["members"]]).mean(0)
    torch.testing.assert_close(p, q)
    ev = evaluate_patches(res["student"], small)
    assert {"all", "same_source", "cross_source", "scores"} <= set(ev)
    assert 0.0 <= ev["same_source"]["auroc"] <= 1.0


def test_same_seed_same_easy_model(tmp_path, small):
    cfg = MitosisTrainConfig(width=0.125, epochs=1, batch_size=16, ensemble=1, hard_negatives=False, augment="C", num_workers=0, seed=1)
    a = train_mitosis(small, cfg, out_dir=tmp_path / "a", verbose=False)["ensemble"]
    b = train_mitosis(small, cfg, out_dir=tmp_path / "b", verbose=False)["ensemble"]
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k

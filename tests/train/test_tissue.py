"""The tissue workflow: patient-level folds, and a tiny end-to-end training and evaluation on
10 real GlaS images (2 per grade)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from histoscope.tiles.labelled import LabelledImages, read_label_table
from histoscope.train import TrainConfig, load_checkpoint
from histoscope.train.tissue import PRESETS, PatchConfig, evaluate_tissue, patient_folds, train_tissue

GLAS = PRESETS["glas"]


@pytest.fixture
def glas(shared) -> LabelledImages:
    return read_label_table(
        shared("glas", "labels.csv"),
        label_column=GLAS["label_column"],
        group_column=GLAS["group_column"],
        annotation_column=GLAS["annotation_column"],
        classes=GLAS["classes"],
        mpp=GLAS["image_mpp"],
    )


def two_per_class(images: LabelledImages) -> LabelledImages:
    return images.subset(images.table.groupby("label").head(2).index.to_numpy())


# --------------------------------------------------------------------------- patient folds


def check_folds(folds: list[np.ndarray], groups, n: int) -> None:
    groups = np.asarray([str(g) for g in groups])
    everything = np.concatenate(folds)
    assert sorted(everything.tolist()) == list(range(n))  # every image, exactly once
    owner: dict[str, int] = {}
    for k, fold in enumerate(folds):
        assert len(fold) > 0
        for g in set(groups[fold]):
            assert owner.setdefault(g, k) == k, f"patient {g} in folds {owner[g]} and {k}"


@pytest.mark.shared_data
@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_patient_folds_on_glas_never_split_a_patient(glas, k):
    folds = patient_folds(glas.table["group"], glas.table["label"], k, seed=0)
    assert len(folds) == k
    check_folds(folds, glas.table["group"], len(glas))
    # the same seed gives the same folds
    again = patient_folds(glas.table["group"], glas.table["label"], k, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))


def test_patient_folds_synthetic_groups_of_uneven_size():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 9, 60)  # int ids: compared as strings, like the table's
    labels = rng.integers(0, 3, 60)
    for seed in (0, 1):
        check_folds(patient_folds(groups, labels, 4, seed=seed), groups, 60)


@pytest.mark.parametrize(
    "groups, labels, k",
    [
        (["a", "b", "c"], [0, 1, 2], 3),
        ([f"p{i}" for i in range(12)], [i % 2 for i in range(12)], 12),  # leave one patient out
    ],
    ids=["3-patients", "12-patients"],
)
def test_patient_folds_up_to_one_patient_per_fold(groups, labels, k):
    check_folds(patient_folds(groups, labels, k), groups, len(groups))


@pytest.mark.parametrize("k", [1, 4])
def test_patient_folds_k_out_of_range(k):
    groups = ["a", "a", "b", "c", "c"]
    with pytest.raises(ValueError, match=rf"k must be in \[2, 3\] \(the number of patients\), got {k}"):
        patient_folds(groups, [0, 0, 1, 1, 0], k)


# --------------------------------------------------------------------------- end to end


@pytest.mark.shared_data
def test_train_and_evaluate_tissue_end_to_end(glas, tmp_path):
    images = two_per_class(glas)
    assert len(images) == 10 and images.table["label"].value_counts().to_dict() == {k: 2 for k in range(5)}
    patch = PatchConfig(size=32, mpp=2.48, n_random=1, augment="RC")
    config = TrainConfig(epochs=1, batch_size=32, num_workers=0, seed=0)
    out = tmp_path / "train"
    trained = train_tissue(images, patch=patch, config=config, out_dir=out, verbose=False)

    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "curves.png", "split.json"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    train_g, val_g = set(split["train_groups"]), set(split["val_groups"])
    assert train_g and val_g and not train_g & val_g  # patients held out, never shared
    assert train_g | val_g == set(images.table["group"])
    assert split["patch"]["size"] == 32 and split["patch"]["mpp"] == 2.48
    assert trained["train_patches"] > 0 and trained["val_patches"] > 0
    model = trained["model"]
    assert model.config.classes == GLAS["classes"] and model.config.input_size == 32 and model.config.mpp == 2.48
    assert len(trained["result"].history) == 1

    ev_dir = tmp_path / "eval"
    ev = evaluate_tissue(load_checkpoint(out / "best.pt"), images, patch=patch, out_dir=ev_dir, positive_classes=GLAS["positive_classes"])
    for name in ("confusion_patch.png", "confusion_image.png", "roc_patch.png", "patch_predictions.csv"):
        assert (ev_dir / name).is_file() and (ev_dir / name).stat().st_size > 0, name
    preds = pd.read_csv(ev_dir / "patch_predictions.csv")
    assert len(preds) == ev["n_patches"] > 0
    assert list(preds.columns[:3]) == ["name", "label", "pred"]
    np.testing.assert_allclose(preds[[f"p_{c}" for c in GLAS["classes"]]].sum(axis=1), 1, rtol=1e-5)
    # the evaluation uses no random patches (grid only), for every image
    assert set(preds["name"]) == set(images.table["name"])

    truth = images.table.set_index("name")["label"]
    for method in ("mean", "vote"):
        table = ev[f"image_{method}_table"]
        assert len(table) == len(images) and set(table.index) == set(images.table["name"])  # one row per image
        assert (table["true"] == truth.loc[table.index]).all()
        assert table["n_patches"].sum() == ev["n_patches"]
    # the mean aggregation is the mean of each image's patch probabilities
    probs = preds.groupby("name")[[f"p_{c}" for c in GLAS["classes"]]].mean()
    np.testing.assert_allclose(ev["image_mean_table"][[f"prob_{c}" for c in GLAS["classes"]]].to_numpy(), probs.loc[ev["image_mean_table"].index].to_numpy(), rtol=1e-5)
    assert 0.0 <= ev["image_vote_accuracy"] <= 1.0
    assert ev["patch"].accuracy == pytest.approx((preds["label"] == preds["pred"]).mean())
    assert "binary_mean" in ev and "binary_vote" in ev

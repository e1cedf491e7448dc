"""Mitosis training data from ../shared/data: patient splits, same-source negatives, hard negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histoscope.datasets.mitosis import mitosis_samples, offcentre_offsets, split_groups
from histoscope.tiles.labelled import PatchDataset


def test_offcentre_offsets_stay_beyond_the_matching_radius():
    offs = offcentre_offsets(64, 128, mpp=0.25)
    assert len(offs) == 12
    assert min(np.hypot(dx, dy) for dx, dy in offs) * 0.25 >= 8.0
    assert len(offcentre_offsets(64, 128, mpp=0.25, corners_only=True)) == 4
    # a 100 px window inside a 128 px crop cannot get 8 um away from its centre
    assert offcentre_offsets(100, 128, mpp=0.25) == []


def test_split_groups_never_separates_a_patient_and_follows_the_fractions():
    rng = np.random.default_rng(0)
    groups = pd.Series(rng.integers(0, 60, 2000).astype(str))
    split = split_groups(groups, fractions=(0.6, 0.2, 0.2), seed=1)
    frame = pd.DataFrame({"g": groups, "s": split})
    assert (frame.groupby("g")["s"].nunique() == 1).all()
    share = frame["s"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.6, abs=0.05) and share["test"] == pytest.approx(0.2, abs=0.05)
    assert np.array_equal(split, split_groups(groups, fractions=(0.6, 0.2, 0.2), seed=1))
    with pytest.raises(ValueError, match="sum"):
        split_groups(groups, fractions=(0.5, 0.2, 0.2))


@pytest.fixture(scope="module")
def data():
    from tests.conftest import shared_path

    return mitosis_samples(shared_path(), patch=64, seed=0)


def test_real_samples_are_split_by_patient_with_every_kind(data):
    s = data.samples
    assert (s.groupby("group")["split"].nunique() == 1).all()  # no patient in two splits
    for split in ("train", "val", "test"):
        kinds = set(s.loc[s["split"] == split, "kind"])
        assert {"mitosis", "amibr_offcentre", "monuseg_nucleus", "monuseg_random"} <= kinds, split
    assert (s.loc[s["kind"] == "amibr_offcentre", "distance_um"] >= 8.0).all()
    assert (s.loc[(s["kind"] == "mitosis") & (s["split"] != "train"), "distance_um"] == 0).all()
    assert set(s.loc[s["kind"] == "mitosis", "atypical"]) == {0, 1}
    assert (s["label"] == (s["kind"] == "mitosis")).all()


def test_patches_are_read_inside_their_images(data):
    """No white padding: a padded border would be a shortcut between the kinds."""
    s = data.subset("test")
    ds = PatchDataset(data.images, s)
    rng = np.random.default_rng(0)
    for kind in s["kind"].unique():
        for i in rng.choice(np.flatnonzero(s["kind"] == kind), 5, replace=False):
            patch = ds.read(int(i))
            assert patch.shape == (64, 64, 3)
            assert not (patch == 255).all(axis=2).any(axis=1).all(), f"{kind} patch {i} has a white border row"
    mitosis = ds.read(int(np.flatnonzero(s["kind"] == "mitosis")[0]))
    corner = ds.read(int(np.flatnonzero(s["kind"] == "amibr_offcentre")[0]))
    assert mitosis[28:36, 28:36].mean() < corner[28:36, 28:36].mean() + 60  # sanity: real pixels were read


def test_missing_data_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="amibr_128"):
        mitosis_samples(tmp_path)

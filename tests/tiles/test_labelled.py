"""Labelled images and their patches, on the real GlaS images and Kather 2016 tiles: the label
table, the annotated-patch filter checked by brute force on the mask images, the 30 % sliding
window, the PatchDataset pixels against Pillow, and the errors a user meets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histoscope.tiles.labelled import (
    LabelledImages,
    PatchDataset,
    annotated_patches,
    read_class_folders,
    read_label_table,
    whole_image_patches,
)
from histoscope.train.tissue import PRESETS

pytestmark = pytest.mark.shared_data

GLAS = PRESETS["glas"]
#: Three GlaS images of different grades and patients (rows of labels.csv).
SOME = [0, 10, 27]


def glas_kwargs() -> dict:
    return {
        "label_column": GLAS["label_column"],
        "group_column": GLAS["group_column"],
        "annotation_column": GLAS["annotation_column"],
        "classes": GLAS["classes"],
        "mpp": GLAS["image_mpp"],
    }


@pytest.fixture
def glas(shared) -> LabelledImages:
    return read_label_table(shared("glas", "labels.csv"), **glas_kwargs())


def mask_of(images: LabelledImages, item: int) -> np.ndarray:
    with Image.open(images.table["annotation"].iloc[item]) as im:
        return np.asarray(im) > 0


def brute_coverage(mask: np.ndarray, x: int, y: int, w: int, h: int) -> float:
    """Fraction of annotated mask pixels inside a level-0 rectangle (the mask is at level 0)."""
    return float(mask[y : y + h, x : x + w].sum()) / (w * h)


def expected_grid(width: int, height: int, w0: int, overlap: float) -> list[tuple[int, int]]:
    """All sliding-window positions (independently of histoscope): stride = (1 - overlap) * w0."""
    stride = (1 - overlap) * w0
    nx = math.floor((width - w0) / stride + 1e-9) + 1
    ny = math.floor((height - w0) / stride + 1e-9) + 1
    return [(round(i * stride), round(j * stride)) for j in range(ny) for i in range(nx)]


# --------------------------------------------------------------------------- the label table


def test_glas_label_table(glas, shared):
    assert len(glas) == 50
    assert glas.classes == GLAS["classes"] and len(glas.classes) == 5
    assert glas.table["group"].nunique() == 12
    assert sorted(glas.table["group"].unique(), key=int) == ["1", "2", "3", "4", "5", "7", "8", "9", "10", "12", "14", "16"]
    assert glas.table["label"].value_counts().to_dict() == {k: 10 for k in range(5)}
    assert glas.mpp == pytest.approx(0.62)
    raw = pd.read_csv(shared("glas", "labels.csv"))
    # labels follow the class list, paths are resolved against the CSV's folder
    for row, (_, r) in zip(raw.itertuples(), glas.table.iterrows()):
        assert glas.classes[r["label"]] == row.grade_sirinukunwattana
        assert r["image"] == str(shared("glas", row.image)) and r["annotation"] == str(shared("glas", row.annotation))
        assert r["name"] == row.name and r["group"] == str(row.patient_id)


def test_subset_keeps_classes_and_mpp(glas):
    sub = glas.subset([3, 1])
    assert len(sub) == 2 and sub.classes == glas.classes and sub.mpp == glas.mpp
    assert list(sub.table["name"]) == [glas.table["name"][3], glas.table["name"][1]]
    assert list(sub.table.index) == [0, 1]


# --------------------------------------------------------------------------- annotated patches


@pytest.mark.parametrize("size, mpp", [(96, None), (32, 2.48)], ids=["native-96px", "2.48um-32px"])
def test_grid_patches_are_exactly_the_half_annotated_windows(glas, size, mpp):
    sub = glas.subset(SOME)
    patches = annotated_patches(sub, size=size, mpp=mpp, n_random=0)
    assert set(patches["kind"]) == {"grid"}
    w0 = size if mpp is None else round(size * mpp / GLAS["image_mpp"])  # 96 or 128 level-0 px
    assert (patches["w0"] == w0).all() and (patches["h0"] == w0).all() and (patches["size"] == size).all()
    for item in range(len(sub)):
        mask = mask_of(sub, item)
        H, W = mask.shape
        mine = patches[patches["item"] == item]
        assert (mine["label"] == sub.table["label"][item]).all()
        assert (mine["name"] == sub.table["name"][item]).all() and (mine["group"] == sub.table["group"][item]).all()
        kept = set(zip(mine["x"], mine["y"]))
        assert len(kept) == len(mine) > 0
        # brute force: every window of the 30 % overlap grid, kept iff >= 50 % of its mask pixels are > 0
        expected = {(x, y) for x, y in expected_grid(W, H, w0, 0.3) if brute_coverage(mask, x, y, w0, w0) >= 0.5}
        assert kept == expected
        for r in mine.itertuples():
            assert r.annotation == pytest.approx(brute_coverage(mask, r.x, r.y, w0, w0), abs=1e-9)
            assert 0 <= r.x and r.x + w0 <= W and 0 <= r.y and r.y + w0 <= H


def test_grid_windows_overlap_by_30_percent(glas):
    patches = annotated_patches(glas.subset(SOME), size=96, n_random=0)
    w0 = 96
    stride = 0.7 * w0  # 67.2 level-0 px
    for (_, y), row in patches.groupby(["item", "y"]):
        xs = np.sort(row["x"].to_numpy())
        # every start lies on the grid k * stride (rounded to whole pixels) ...
        k = np.round(xs / stride)
        np.testing.assert_array_equal(xs, np.round(k * stride).astype(int))
        # ... so neighbours share 30 % of their width (to the pixel)
        steps = np.diff(xs)[np.diff(k) == 1]
        assert set(steps) <= {67, 68}
        assert all(abs((w0 - s) / w0 - 0.3) <= 1 / w0 for s in steps)
    ys = np.sort(patches["y"].unique())
    np.testing.assert_array_equal(ys, np.round(np.round(ys / stride) * stride).astype(int))


def test_random_patches_pass_the_same_filter_and_are_seeded(glas):
    sub = glas.subset(SOME)
    a = annotated_patches(sub, size=64, n_random=6, rng=3)
    b = annotated_patches(sub, size=64, n_random=6, rng=3)
    c = annotated_patches(sub, size=64, n_random=6, rng=4)
    pd.testing.assert_frame_equal(a, b)
    rand = a[a["kind"] == "random"]
    assert rand.groupby("item").size().to_dict() == {0: 6, 1: 6, 2: 6}
    assert not rand[["x", "y"]].reset_index(drop=True).equals(c.loc[c["kind"] == "random", ["x", "y"]].reset_index(drop=True))
    for item in range(len(sub)):
        mask = mask_of(sub, item)
        H, W = mask.shape
        for r in rand[rand["item"] == item].itertuples():
            assert 0 <= r.x and r.x + 64 <= W and 0 <= r.y and r.y + 64 <= H
            assert brute_coverage(mask, r.x, r.y, 64, 64) >= 0.5
            assert r.annotation == pytest.approx(brute_coverage(mask, r.x, r.y, 64, 64), abs=1e-9)


def test_min_annotation_is_a_parameter(glas):
    sub = glas.subset(SOME[:1])
    strict = annotated_patches(sub, size=96, n_random=0, min_annotation=0.9)
    loose = annotated_patches(sub, size=96, n_random=0, min_annotation=0.5)
    assert set(zip(strict["x"], strict["y"])) < set(zip(loose["x"], loose["y"]))
    assert (strict["annotation"] >= 0.9).all()


def test_annotated_patches_need_masks(shared):
    images = read_class_folders(shared("crc_tiles", "kather2016_samples"))
    with pytest.raises(ValueError, match="no annotation mask"):
        annotated_patches(images.subset([0]), size=64)


# --------------------------------------------------------------------------- PatchDataset


def test_patch_dataset_native_resolution_is_the_image_crop(glas):
    sub = glas.subset(SOME)
    patches = annotated_patches(sub, size=96, n_random=2, rng=0)
    ds = PatchDataset(sub, patches)
    assert len(ds) == len(patches)
    np.testing.assert_array_equal(ds.labels, patches["label"].to_numpy())
    for i in (0, len(ds) // 2, len(ds) - 1):  # a grid patch, ..., a random one
        r = patches.iloc[i]
        x, label = ds[i]
        assert x.shape == (3, 96, 96) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert label == sub.table["label"][int(r["item"])]
        with Image.open(sub.table["image"][int(r["item"])]) as im:
            ref = np.asarray(im.convert("RGB"))[r["y"] : r["y"] + 96, r["x"] : r["x"] + 96]
        np.testing.assert_array_equal(ds.read(i), ref)  # exact
        torch.testing.assert_close(x, torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255, rtol=0, atol=0)


def test_patch_dataset_resampled_matches_pillow(glas):
    """At 2.48 um/px (downsample 4) a patch is the 128 px level-0 footprint resized to 32 px.

    Reference: Pillow's antialiased bilinear resize of that box. Tolerance: 1 grey level
    (histoscope reads a margin around the box, so the filter sees the same neighbours)."""
    sub = glas.subset(SOME)
    patches = annotated_patches(sub, size=32, mpp=2.48, n_random=1, rng=0)
    ds = PatchDataset(sub, patches)
    for i in (0, len(ds) - 1):
        r = patches.iloc[i]
        x, label = ds[i]
        assert x.shape == (3, 32, 32) and label == r["label"]
        with Image.open(sub.table["image"][int(r["item"])]) as im:
            box = (r["x"], r["y"], r["x"] + r["w0"], r["y"] + r["h0"])
            ref = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, box=box))
        got = ds.read(i)
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_patch_dataset_applies_the_transform(glas):
    sub = glas.subset(SOME[:1])
    patches = annotated_patches(sub, size=32, n_random=0)
    ds = PatchDataset(sub, patches, transform=lambda t: 1.0 - t)
    plain = PatchDataset(sub, patches)
    torch.testing.assert_close(ds[0][0], 1.0 - plain[0][0])


def test_patch_dataset_rejects_a_table_without_coordinates(glas):
    with pytest.raises(ValueError, match="lacks columns"):
        PatchDataset(glas, pd.DataFrame({"item": [0], "label": [0]}))


# --------------------------------------------------------------------------- class folders


def test_read_class_folders_on_kather_tiles(shared):
    root = shared("crc_tiles", "kather2016_samples")
    images = read_class_folders(root, mpp=0.495)
    names = ["01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS", "06_MUCOSA", "07_ADIPOSE", "08_EMPTY"]
    assert images.classes == names
    assert len(images) == 17 and images.mpp == 0.495
    assert images.table["label"].value_counts().sort_index().to_list() == [2, 2, 2, 2, 2, 2, 2, 3]
    assert images.table["annotation"].isna().all()
    for r in images.table.itertuples():
        assert r.image.startswith(str(root / names[r.label])) and r.image.endswith(".tif")
    # a chosen class order; other folders are ignored
    two = read_class_folders(root, classes=["08_EMPTY", "01_TUMOR"])
    assert two.classes == ["08_EMPTY", "01_TUMOR"] and two.table["label"].to_list() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"no folder for class\(es\) \['09_NOPE'\].*01_TUMOR"):
        read_class_folders(root, classes=["01_TUMOR", "09_NOPE"])
    # whole 150 px tiles as one patch each
    patches = whole_image_patches(images, size=150)
    assert len(patches) == 17
    x, label = PatchDataset(images, patches)[16]
    assert x.shape == (3, 150, 150) and label == 7
    with Image.open(images.table["image"][16]) as im:
        np.testing.assert_array_equal(PatchDataset(images, patches).read(16), np.asarray(im.convert("RGB")))


# --------------------------------------------------------------------------- errors


def _small_table(shared, tmp_path, n: int = 3, **changes) -> str:
    df = pd.read_csv(shared("glas", "labels.csv")).head(n)
    base = shared("glas")
    df["image"] = [str(base / p) for p in df["image"]]
    df["annotation"] = [str(base / p) for p in df["annotation"]]
    for col, value in changes.items():
        if value is None:
            df = df.drop(columns=[col])
        else:
            df[col] = value
    path = tmp_path / "labels.csv"
    df.to_csv(path, index=False)
    return str(path)


def test_missing_column_lists_the_columns(shared, tmp_path):
    path = _small_table(shared, tmp_path, patient_id=None)
    with pytest.raises(ValueError, match=r"labels\.csv: no column 'patient_id'; columns: \['image', 'annotation', 'name'"):
        read_label_table(path, **glas_kwargs())


def test_unknown_label_is_refused(shared, tmp_path):
    path = _small_table(shared, tmp_path)
    kw = glas_kwargs()
    kw["classes"] = ["adenomatous", "poorly differentiated"]  # testA_18 is healthy
    with pytest.raises(ValueError, match=r"labels \['healthy'\] are not among the classes"):
        read_label_table(path, **kw)


def test_missing_image_file_is_named(shared, tmp_path):
    path = _small_table(shared, tmp_path, image=["/nowhere/a.png", "/nowhere/b.png", "/nowhere/c.png"])
    with pytest.raises(FileNotFoundError, match=r"3 image\(s\) listed but missing, e\.g\. /nowhere/a\.png"):
        read_label_table(path, **glas_kwargs())
    with pytest.raises(FileNotFoundError, match="no such label table"):
        read_label_table(tmp_path / "absent.csv")


def test_empty_annotation_cell_reads_as_no_annotation(shared, tmp_path):
    path = _small_table(shared, tmp_path, annotation=[str(shared("glas", "annotations", "testA_18_anno.png")), np.nan, np.nan])
    images = read_label_table(path, **glas_kwargs())
    assert images.table["annotation"].isna().sum() == 2

"""MITOS-BOXES (datasets/mitosis_boxes.py): boxes from centroids in physical units, the 16 sub-image
split, rotations that carry their boxes, replayable windows, and the patient split on real data."""

from __future__ import annotations

import numpy as np
import pytest

from histoscope.datasets.mitosis_boxes import BoxImage, MitosisBoxes, boxes_from_centroids, rotate_points, split_subimages, subimage_origins


def test_boxes_from_centroids_physical_size():
    b = boxes_from_centroids([[64, 64], [10, 100]], mpp=0.25, box_um=8.0)
    assert b.dtype == np.float32 and b.shape == (2, 4)
    np.testing.assert_array_equal(b[0], [48, 48, 80, 80])  # 8 um = 32 px at 0.25 um/px
    np.testing.assert_array_equal(boxes_from_centroids([[64, 64]], mpp=0.5, box_um=8.0)[0], [56, 56, 72, 72])  # 16 px at 0.5
    np.testing.assert_array_equal(boxes_from_centroids([[10, 100]], mpp=0.25, image_shape=(110, 200))[0], [0, 84, 26, 110])
    assert boxes_from_centroids(np.zeros((0, 2)), mpp=0.25).shape == (0, 4)
    with pytest.raises(ValueError, match="must be positive"):
        boxes_from_centroids([[1, 1]], mpp=0.0)


def test_split_into_16_subimages(rng):
    field = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    subs = split_subimages(field, n=16)
    assert len(subs) == 16 and {s.shape for _, s in subs} == {(250, 250, 3)}
    assert sorted({x for (x, _), _ in subs}) == [0, 250, 500, 750]
    rebuilt = np.zeros_like(field)
    for (x, y), s in subs:
        rebuilt[y : y + 250, x : x + 250] = s
    np.testing.assert_array_equal(rebuilt, field)  # a partition of the field
    assert {s.shape for _, s in split_subimages(field, n=16, size=299)} == {(299, 299, 3)}  # the paper's resize
    with pytest.raises(ValueError, match="square number"):
        split_subimages(field, n=12)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 image"):
        split_subimages(field[..., 0])


def test_subimage_origins_cover_with_overlap():
    o = subimage_origins(1000, 1000, tile=288, overlap=48)
    assert len(o) == 16 and max(x for x, _ in o) == 712  # the last column ends at the border, not past it
    covered = np.zeros((1000, 1000), bool)
    for x, y in o:
        covered[y : y + 288, x : x + 288] = True
    assert covered.all()
    assert subimage_origins(128, 128, tile=288) == [(0, 0)]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotations_carry_the_centroids(k):
    img = np.zeros((60, 80), np.uint8)
    img[10, 25] = 255  # pixel centre at (x, y) = (25.5, 10.5)
    rot = np.rot90(img, k)
    yy, xx = np.argwhere(rot == 255)[0]
    np.testing.assert_allclose(rotate_points([[25.5, 10.5]], k, img.shape), [[xx + 0.5, yy + 0.5]])


def _marker_crop(cx: int, cy: int) -> np.ndarray:
    crop = np.full((128, 128, 3), 230, np.uint8)
    crop[cy - 2 : cy + 2, cx - 2 : cx + 2] = 20
    return crop


def test_windows_are_replayable_and_boxes_follow_the_mitosis():
    items = [BoxImage(_marker_crop(64, 64), np.array([[64.0, 64.0]]), "amibr", i) for i in range(6)]
    items.append(BoxImage(np.full((250, 250, 3), 200, np.uint8), np.zeros((0, 2)), "monuseg", 9))
    ds = MitosisBoxes(items, window=96, seed=3)
    a = [ds.params(i) for i in range(len(ds))]
    assert a == [MitosisBoxes(items, window=96, seed=3).params(i) for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.params(i) for i in range(len(ds))] != a
    seen_k = set()
    for i in range(6):
        img, xy = ds.read(i)
        x, y, k = ds.params(i)
        seen_k.add(k)
        dark = np.argwhere(img[..., 0] == 20).mean(0)  # (row, col) of the marker
        np.testing.assert_allclose(xy[0], [dark[1] + 0.5, dark[0] + 0.5], atol=1e-6)
        t, tgt = ds[i]
        assert t.shape == (3, 96, 96) and tgt["labels"].tolist() == [1]
        np.testing.assert_allclose(tgt["boxes"][0].numpy(), boxes_from_centroids(xy, mpp=0.25)[0])
    assert len(seen_k) > 1
    t, tgt = ds[6]
    assert t.shape == (3, 96, 96) and tgt["boxes"].shape == (0, 4) and tgt["labels"].shape == (0,)
    with pytest.raises(ValueError, match="window 300 px is larger"):
        MitosisBoxes(items, window=300)


@pytest.mark.shared_data
def test_real_box_images_keep_the_patient_split(shared):
    from histoscope.datasets.mitosis import mitosis_samples
    from histoscope.datasets.mitosis_boxes import box_images

    d = mitosis_samples(shared("."), seed=0)
    test = box_images(d, "test", stain=None)
    val_groups = set(d.subset("val")["group"])
    train_groups = set(d.subset("train")["group"])
    fields = {b.item for b in test if b.kind == "monuseg"}
    assert len(fields) == 2 and sum(b.kind == "monuseg" for b in test) == 32  # 16 sub-images per field
    test_groups = {b.group for b in test}
    assert not test_groups & train_groups and not test_groups & val_groups
    crop = next(b for b in test if b.kind == "amibr")
    assert crop.image.shape == (128, 128, 3) and crop.centroids.tolist() == [[64.0, 64.0]]

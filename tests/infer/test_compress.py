"""Neural Image Compression of slides into embedding grids (infer.compress)."""

from __future__ import annotations

import numpy as np
import pytest

from histoscope.datasets.digits import CELL, digits_image
from histoscope.infer.compress import CompressedSlide, compress, embedding_rgb
from histoscope.models.nic import create_encoder
from histoscope.slide import open_slide
from histoscope.slide.backends import ArraySlide
from histoscope.slide.mask import tissue_mask


def test_mean_rgb_codes_equal_the_patch_means_of_the_real_slide(cmu_svs, tmp_path):
    """Reference: the slide's own read_region at 0.5 um/px and numpy's mean."""
    slide = open_slide(cmu_svs)
    enc = create_encoder("mean_rgb", patch_size=128, mpp=0.5)
    c = compress(slide, enc, out=tmp_path / "cmu.zarr")
    rows, cols, C = c.shape
    W, H = slide.dimensions
    assert C == 3 and rows == -(-int(H * 0.499 / 0.5) // 128) and cols == -(-int(W * 0.499 / 0.5) // 128)
    emb = c.load()
    inside = np.argwhere(c.tissue >= 0.05)
    assert 0 < len(inside) < rows * cols  # tissue and background both present
    for i, j in inside[:: max(1, len(inside) // 12)]:
        x, y = c.cell_to_level0(i, j)
        p0 = c.attrs["patch_level0"]
        ref = slide.read_region((int(round(x - p0 / 2)), int(round(y - p0 / 2))), (128, 128), mpp=0.5)
        np.testing.assert_allclose(emb[i, j], ref.reshape(-1, 3).mean(0) / 255.0, atol=1e-5)
    assert (emb[c.tissue < 0.05] == 0).all()  # background skipped, left as zeros
    assert c.attrs["patches_encoded"] == len(inside)
    # the tissue grid is the mask's coverage of each patch
    mask = tissue_mask(slide)
    i, j = inside[len(inside) // 2]
    x, y = c.cell_to_level0(i, j)
    p0 = c.attrs["patch_level0"]
    cov = mask.coverage(np.array([x - p0 / 2]), np.array([y - p0 / 2]), np.array([p0]), np.array([p0]))[0]
    assert abs(cov - c.tissue[i, j]) < 0.02


def test_store_equals_memory_and_chunking_does_not_matter(tmp_path):
    d = digits_image(256, seed=4)
    slide = ArraySlide(d.image)
    enc = create_encoder("vae", code_size=16, patch_size=CELL, mpp=None, width=8)
    mem = compress(slide, enc, tissue=None, chunk=32)
    store = compress(slide, enc, tissue=None, chunk=5, batch_size=7, out=tmp_path / "d.zarr")
    assert mem.shape == store.shape == (32, 32, 16)
    np.testing.assert_allclose(mem.load(), store.load(), atol=1e-6)  # batches of 7 vs 128: BLAS rounding only
    again = CompressedSlide.open(tmp_path / "d.zarr")
    np.testing.assert_array_equal(again.load(), store.load())
    assert again.attrs["encoder"]["kind"] == "vae" and again.attrs["stride"] == CELL
    # one digit per cell: cell (i, j) is the code of that 8 x 8 digit
    x = d.image[8 * 3 : 8 * 4, 8 * 5 : 8 * 6][None]
    np.testing.assert_allclose(enc.encode_images(x)[0], mem.load()[3, 5], atol=1e-5)
    assert not (tmp_path / ".d.zarr.partial").exists()


def test_stride_gives_overlapping_grid():
    img = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    enc = create_encoder("mean_rgb", patch_size=16, mpp=None)
    c = compress(ArraySlide(img), enc, tissue=None, stride=8)
    assert c.shape[:2] == (11, 19)  # pad: the last patches reach past the edge and read white
    np.testing.assert_allclose(c.load()[2, 3], img[16:32, 24:40].reshape(-1, 3).mean(0) / 255, atol=1e-5)


def test_refuses_what_it_cannot_do(tmp_path, cmu_svs):
    enc = create_encoder("contrastive", code_size=8, patch_size=32, mpp=None, width=8)
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="32 px patches"):
        compress(ArraySlide(img), enc, patch=16, tissue=None)
    not_a_store = tmp_path / "notes"
    not_a_store.mkdir()
    (not_a_store / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a compressed slide"):
        compress(ArraySlide(img), enc, tissue=None, out=not_a_store)
    assert (not_a_store / "keep.txt").read_text() == "mine"
    from histoscope.exceptions import MppUnavailableError

    with pytest.raises(MppUnavailableError):
        compress(ArraySlide(img), create_encoder("mean_rgb", patch_size=16, mpp=0.5), tissue=None)
    with pytest.raises(ValueError, match="not a compressed slide"):
        CompressedSlide.open(not_a_store)


def test_embedding_picture_matches_sklearn_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 30, 8)).astype(np.float32)
    emb[:, :15, 0] += 5  # a left/right structure along the first component
    tissue = np.ones((20, 30), np.float32)
    tissue[:2] = 0
    rgb = embedding_rgb(emb, tissue)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert (rgb[:2] == 255).all()
    comp = PCA(3, random_state=0).fit(emb[2:].reshape(-1, 8)).transform(emb[2:].reshape(-1, 8))[:, 0]
    r = rgb[2:, :, 0].reshape(-1).astype(float)
    assert abs(np.corrcoef(comp, r)[0, 1]) > 0.95

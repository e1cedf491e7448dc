"""Tests of histoscope.stain.deconvolution: OD conversion, stain spaces, constants.

scikit-image is the reference implementation: its ``rgb2hed`` uses
``OD_skimage = log10(I / 255) / log10(1e-6)`` (log10-OD divided by 6, no epsilon
bias, intensities floored at 1e-6), unnormalised Ruifrok vectors and clamps negative
concentrations to zero.  So ``rgb_to_stains(x, inv(rgb_from_hed), bias=0) / 6`` must
reproduce it wherever scikit-image did not clamp.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import skimage.color as skc
import torch

from histoscope.stain import deconvolution as dec
from histoscope.stain.deconvolution import (
    HDX_FROM_RGB,
    HED_FROM_RGB,
    MACENKO_REFERENCE_HE,
    MACENKO_REFERENCE_MAX_CONC,
    RGB_FROM_HDX,
    RGB_FROM_HED,
    hed_to_rgb,
    od_to_rgb,
    rgb_to_dab,
    rgb_to_hed,
    rgb_to_od,
    rgb_to_stains,
    stain_matrix,
    stains_to_rgb,
    tissue_weight,
)
from histoscope.utils.convert import image_to_tensor

HE_TILES = [
    ("histolab", "tcga-lung-rgb.png"),
    ("histolab", "tissue-level0-4302-10273-4814-10785.png"),
    ("torchstain", "source.png"),
]

#: Ruifrok & Johnston (2001), table 1: H, E, DAB optical-density vectors.
RUIFROK_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def _colour_grid(step: int = 5) -> np.ndarray:
    """Every ``step``-th value per channel, 0 and 255 included when step divides 255."""
    v = np.arange(0, 256, step, dtype=np.uint8)
    return np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1)


# --------------------------------------------------------------------------- #
# constants and stain_matrix
# --------------------------------------------------------------------------- #


def test_rgb_from_hed_rows_are_unit_and_parallel_to_ruifrok():
    np.testing.assert_allclose(np.linalg.norm(RGB_FROM_HED, axis=1), 1.0, atol=1e-12)
    for row, ref in zip(RGB_FROM_HED, RUIFROK_HED):
        # parallel and pointing the same way: row == ref / |ref| (to float rounding)
        np.testing.assert_allclose(row, ref / np.linalg.norm(ref), atol=1e-12)
        assert np.linalg.norm(np.cross(row, ref)) < 1e-12
        assert row @ ref > 0
    np.testing.assert_allclose(HED_FROM_RGB @ RGB_FROM_HED, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(RGB_FROM_HED @ HED_FROM_RGB, np.eye(3), atol=1e-12)


def test_hdx_is_haematoxylin_dab_and_their_orthogonal_residual():
    np.testing.assert_allclose(RGB_FROM_HDX[0], RGB_FROM_HED[0], atol=1e-12)
    np.testing.assert_allclose(RGB_FROM_HDX[1], RGB_FROM_HED[2], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(RGB_FROM_HDX, axis=1), 1.0, atol=1e-12)
    # the residual is orthogonal to both stains (it is their normalised cross product)
    assert abs(RGB_FROM_HDX[2] @ RGB_FROM_HDX[0]) < 1e-12
    assert abs(RGB_FROM_HDX[2] @ RGB_FROM_HDX[1]) < 1e-12
    np.testing.assert_allclose(HDX_FROM_RGB @ RGB_FROM_HDX, np.eye(3), atol=1e-12)
    # and it is parallel to scikit-image's residual of its (unnormalised) H-DAB matrix
    sk = skc.rgb_from_hdx[2] / np.linalg.norm(skc.rgb_from_hdx[2])
    assert abs(abs(sk @ RGB_FROM_HDX[2]) - 1) < 1e-3  # skimage's H/DAB vectors are rounded to 3 digits


def test_macenko_reference_constants():
    # columns are (almost) unit vectors: Macenko's published values have 4 digits
    np.testing.assert_allclose(np.linalg.norm(MACENKO_REFERENCE_HE, axis=0), 1.0, atol=1e-3)
    # the natural-log reference concentrations of Macenko et al. / torchstain, in log10 OD
    np.testing.assert_allclose(MACENKO_REFERENCE_MAX_CONC * np.log(10.0), [1.9705, 1.0308], rtol=1e-12)


def test_stain_matrix_normalises_and_adds_cross_product():
    m = stain_matrix([2.0, 0.0, 0.0], [0.0, 3.0, 0.0])
    np.testing.assert_allclose(m, np.eye(3), atol=1e-15)
    m3 = stain_matrix(*RUIFROK_HED)
    np.testing.assert_allclose(m3, RGB_FROM_HED, atol=1e-15)
    m2 = stain_matrix(RUIFROK_HED[0], RUIFROK_HED[1])
    third = np.cross(m2[0], m2[1])
    np.testing.assert_allclose(m2[2], third / np.linalg.norm(third), atol=1e-12)


@pytest.mark.parametrize(
    "vectors, message",
    [
        (([1, 2, 3], [2, 4, 6]), "parallel"),
        (([1, 2, 3], [-1, -2, -3]), "parallel"),
        (([0, 0, 0], [1, 0, 0]), "stain vector 0 must be finite and non-zero"),
        (([1, 0, 0], [np.nan, 1, 0]), "stain vector 1 must be finite and non-zero"),
        (([1, 0, 0], [0, 1]), re.escape("stain vector 1 must have shape (3,), got (2,)")),
        (([[1, 0, 0]], [0, 1, 0]), re.escape("stain vector 0 must have shape (3,), got (1, 3)")),
        (([1, 0, 0],), "expected 2 or 3 stain vectors, got 1"),
        (([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]), "expected 2 or 3 stain vectors, got 4"),
        (([1, 0, 0], [0, 1, 0], [1, 1, 0]), "linearly dependent"),
    ],
)
def test_stain_matrix_errors(vectors, message):
    with pytest.raises(ValueError, match=message):
        stain_matrix(*vectors)


# --------------------------------------------------------------------------- #
# optical density
# --------------------------------------------------------------------------- #


def test_rgb_to_od_definition_and_lut_matches_float_path():
    v = np.arange(256, dtype=np.uint8)
    px = np.stack([v, v, v], axis=-1)
    od_u8 = rgb_to_od(px)
    od_f = rgb_to_od(px / 255.0)
    assert od_u8.dtype == np.float32 and od_f.dtype == np.float64
    expected = -np.log10((v + 1.0) / 255.0)
    # the uint8 path reads a float32 lookup table: float32 rounding (< 1e-6)
    np.testing.assert_allclose(od_u8[:, 0], expected, atol=1e-6)
    np.testing.assert_allclose(od_f[:, 0], expected, atol=1e-12)
    assert abs(float(od_u8[254, 0])) == 0.0  # (254 + 1) / 255 = 1
    np.testing.assert_allclose(od_u8[255], -np.log10(256 / 255), atol=1e-7)  # white slightly below 0
    # i0 and bias: Macenko's convention (I0 = 240) and the plain -log10(I / i0) floored at 1e-6
    np.testing.assert_allclose(rgb_to_od(px, i0=240.0)[:, 0], -np.log10((v + 1.0) / 240.0), atol=1e-6)
    od0 = rgb_to_od(px, bias=0)
    np.testing.assert_allclose(od0[1:, 0], -np.log10(v[1:] / 255.0), atol=1e-6)
    assert od0[0, 0] == pytest.approx(6.0, abs=1e-6)  # black floored at 1e-6 of white


@pytest.mark.parametrize("i0", [0, -1, np.inf, np.nan])
def test_bad_i0_raises(i0):
    with pytest.raises(ValueError, match="i0 must be a positive finite intensity"):
        rgb_to_od(np.zeros((2, 2, 3), np.uint8), i0=i0)


def test_od_to_rgb_inverts_rgb_to_od():
    v = np.arange(256, dtype=np.uint8)
    px = np.stack([v, v[::-1], v], axis=-1)
    np.testing.assert_array_equal(od_to_rgb(rgb_to_od(px), dtype=np.uint8), px)
    x = np.random.default_rng(1).random((50, 3))
    np.testing.assert_allclose(od_to_rgb(rgb_to_od(x)), x, atol=1e-12)
    # float output is clipped to [0, 1]
    out = od_to_rgb(np.array([[-1.0, 0.0, 10.0]]))
    assert out.min() >= 0.0 and out.max() <= 1.0 and out[0, 0] == 1.0 and out[0, 2] == 0.0


# --------------------------------------------------------------------------- #
# against scikit-image (real H&E tiles)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("tile", HE_TILES, ids=lambda t: t[1][:24])
def test_rgb_to_stains_matches_skimage_rgb2hed(load_rgb, tile):
    x = load_rgb(*tile)
    ref = skc.rgb2hed(x)
    unclamped = (ref > 0).all(axis=-1)
    # H&E tiles have little DAB, so few pixels have all three channels positive
    assert unclamped.sum() > 1000, "the tile should have pixels with all concentrations positive"
    # scikit-image's own matrix and OD convention (bias 0, /6): identical up to the
    # float32 lookup table of the uint8 path -> 1e-6
    ours = rgb_to_stains(x, np.linalg.inv(skc.rgb_from_hed), bias=0) / 6
    np.testing.assert_allclose(ours[unclamped], ref[unclamped], rtol=0, atol=1e-6)
    # where scikit-image clamped, ours is the negative value it clamped away
    clamped = ref == 0
    assert (ours[clamped] <= 1e-6).all()
    # histoscope's unit-normalised Ruifrok matrix: scikit-image's vectors are the
    # same up to |v| = 0.998..1.0 -> concentrations agree within 1e-3
    ours_unit = rgb_to_hed(x, bias=0) / 6
    np.testing.assert_allclose(ours_unit[unclamped], ref[unclamped], rtol=0, atol=1e-3)


@pytest.mark.parametrize("tile", HE_TILES, ids=lambda t: t[1][:24])
def test_hed_to_rgb_matches_skimage_hed2rgb(load_rgb, tile):
    x = load_rgb(*tile)
    h = skc.rgb2hed(x)
    ref = skc.hed2rgb(h)  # clipped to [0, 1] by scikit-image
    # compare where scikit-image did not clip (ours clips to [0, 1] as well)
    inside = ((ref > 0) & (ref < 1)).all(axis=-1)
    assert inside.mean() > 0.5
    # with scikit-image's own matrix the formula is the same: float64 rounding only
    same_matrix = stains_to_rgb(6 * h, skc.rgb_from_hed, bias=0)
    np.testing.assert_allclose(same_matrix[inside], ref[inside], rtol=0, atol=1e-9)
    # histoscope's unit rows vs scikit-image's (norms 0.998..1.0): within 2e-3 (half a level)
    ours = hed_to_rgb(6 * h, bias=0)
    np.testing.assert_allclose(ours[inside], ref[inside], rtol=0, atol=2e-3)


@pytest.mark.parametrize("tile", HE_TILES, ids=lambda t: t[1][:24])
def test_round_trip_is_exact_on_real_tiles_and_skimage_is_not(load_rgb, tile):
    x = load_rgb(*tile)
    np.testing.assert_array_equal(hed_to_rgb(rgb_to_hed(x), dtype=np.uint8), x)
    f = x / 255.0
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(f)), f, rtol=0, atol=1e-9)
    # scikit-image clamps negative concentrations, so its round trip loses colours:
    # why histoscope keeps unclamped values
    sk = np.rint(skc.hed2rgb(skc.rgb2hed(x)) * 255)
    assert np.abs(sk - x).max() > 10


def test_round_trip_is_exact_on_subsampled_rgb_cube():
    cube = _colour_grid(5)  # 52^3 colours, 0 and 255 included
    assert cube.shape == (52, 52, 52, 3)
    np.testing.assert_array_equal(hed_to_rgb(rgb_to_hed(cube), dtype=np.uint8), cube)
    np.testing.assert_array_equal(hed_to_rgb(rgb_to_hed(cube, i0=240.0), i0=240.0, dtype=np.uint8), cube)
    np.testing.assert_array_equal(hed_to_rgb(rgb_to_hed(cube, bias=0), bias=0, dtype=np.uint8), cube)
    f = cube / 255.0
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(f)), f, rtol=0, atol=1e-9)


def test_round_trip_random_uint8_and_float32():
    x = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(hed_to_rgb(rgb_to_hed(x), dtype=np.uint8), x)
    f32 = (x / 255.0).astype(np.float32)
    back = hed_to_rgb(rgb_to_hed(f32))
    # float32 through log/exp: about 1e-6 relative
    np.testing.assert_allclose(back, f32, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- #
# torch parity
# --------------------------------------------------------------------------- #


def _batch(ihc: np.ndarray) -> np.ndarray:
    return np.stack([ihc[:128, :128], ihc[128:256, :128], ihc[300:428, 200:328]])


def test_torch_matches_numpy(ihc):
    b = _batch(ihc)
    t = image_to_tensor(b)  # (3, 3, 128, 128) float32 in [0, 1]
    h_np = rgb_to_hed(b)
    h_t = rgb_to_hed(t)
    assert isinstance(h_t, torch.Tensor) and h_t.shape == (3, 3, 128, 128) and h_t.dtype == torch.float32
    # float32 on both sides (numpy reads a float32 LUT): about 1e-7 absolute
    np.testing.assert_allclose(h_t.permute(0, 2, 3, 1).numpy(), h_np, rtol=0, atol=1e-5)
    r_t = hed_to_rgb(h_t)
    r_np = hed_to_rgb(h_np.astype(np.float64))
    np.testing.assert_allclose(r_t.permute(0, 2, 3, 1).numpy(), r_np, rtol=0, atol=1e-5)
    # and the torch round trip returns the input
    np.testing.assert_allclose(r_t.numpy(), t.numpy(), rtol=0, atol=1e-5)
    # a single (3, H, W) image keeps its layout
    assert rgb_to_hed(t[0]).shape == (3, 128, 128)
    # rgb_to_dab drops the channel axis on both sides
    d = rgb_to_dab(t)
    assert d.shape == (3, 128, 128)
    np.testing.assert_allclose(d.numpy(), rgb_to_dab(b), rtol=0, atol=1e-5)


def test_torch_float64_matches_numpy_float64(ihc):
    f = _batch(ihc) / 255.0
    t = torch.from_numpy(f).permute(0, 3, 1, 2)
    h_t = rgb_to_hed(t)
    assert h_t.dtype == torch.float64
    np.testing.assert_allclose(h_t.permute(0, 2, 3, 1).numpy(), rgb_to_hed(f), rtol=0, atol=1e-12)
    np.testing.assert_allclose(hed_to_rgb(h_t).numpy(), t.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        rgb_to_od(t, i0=240.0, bias=0).permute(0, 2, 3, 1).numpy(), rgb_to_od(f, i0=240.0, bias=0), atol=1e-12
    )


# --------------------------------------------------------------------------- #
# DAB (H-DAB immunohistochemistry)
# --------------------------------------------------------------------------- #


def test_rgb_to_dab_agrees_with_skimage_hdx(ihc):
    """rgb_to_dab deconvolves with haematoxylin, DAB and their cross product, which is
    exactly scikit-image's ``hdx_from_rgb`` (up to vector normalisation), so the right
    reference is ``separate_stains(ihc, hdx_from_rgb)[..., 1]`` (not rgb2hed's DAB,
    which also separates eosin)."""
    ref = skc.separate_stains(ihc, skc.hdx_from_rgb)
    unclamped = (ref > 0).all(axis=-1)
    assert unclamped.mean() > 0.5
    # same matrix and OD convention: identical to 1e-6 where scikit-image did not clamp
    same = rgb_to_stains(ihc, skc.hdx_from_rgb, bias=0) / 6
    np.testing.assert_allclose(same[unclamped], ref[unclamped], rtol=0, atol=1e-6)
    dab = rgb_to_dab(ihc)
    assert dab.shape == ihc.shape[:2]
    # default bias (1 level) and unit vectors: a monotone near-linear relation;
    # clamping in scikit-image costs a little correlation over all pixels
    assert np.corrcoef(dab.ravel(), ref[..., 1].ravel())[0, 1] > 0.99
    assert np.corrcoef(dab[unclamped], ref[..., 1][unclamped])[0, 1] > 0.999


def test_brown_pixels_have_more_dab_than_blue_ones(ihc):
    r, g, b = (ihc[..., i].astype(int) for i in range(3))
    brown = (r - b > 40) & (r < 200)  # DAB: reddish-brown, dark
    blue = (b - r > 15) & (b < 200)  # haematoxylin counterstain: blue
    assert brown.sum() > 1000 and blue.sum() > 1000
    dab = rgb_to_dab(ihc)
    # not just on average: the 10th percentile of brown is above the 90th of blue
    assert np.percentile(dab[brown], 10) > np.percentile(dab[blue], 90)
    hed = rgb_to_hed(ihc)
    assert hed[..., 0][blue].mean() > hed[..., 0][brown].mean() + 0.1


# --------------------------------------------------------------------------- #
# glass vs tissue weight
# --------------------------------------------------------------------------- #


def test_tissue_weight_ramp():
    v = np.arange(256, dtype=np.uint8)
    px = np.stack([v, np.full_like(v, 255), np.full_like(v, 255)], axis=-1)
    w = tissue_weight(px)
    # defined by the darkest channel's OD (I0 = 255, bias 1) on the WHITE_RAMP
    lo, hi = dec.WHITE_RAMP
    od = -np.log10((v + 1.0) / 255.0)
    np.testing.assert_allclose(w, np.clip((od - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert (w[244:] == 0).all()  # every channel >= 244: glass
    assert (w[:212] == 1).all()  # some channel <= 211: tissue
    assert (np.diff(w) <= 0).all()  # darker is more tissue
    # the darkest channel decides, whichever it is
    np.testing.assert_array_equal(tissue_weight(px[:, [1, 0, 2]]), w)
    # float path and torch agree with the uint8 lookup table
    np.testing.assert_allclose(tissue_weight(px / 255.0), w, atol=1e-6)
    t = image_to_tensor(px[None, None].copy())  # (1, 3, 1, 256)
    tw = tissue_weight(t)
    assert tw.shape == (1, 1, 1, 256)
    np.testing.assert_allclose(tw[0, 0, 0].numpy(), w, atol=1e-5)


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape", [(4, 4, 4), (4, 4), (4, 4, 1)])
def test_wrong_shape_raises_value_error_showing_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
        rgb_to_hed(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
        rgb_to_od(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
        hed_to_rgb(np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, bool])
def test_integer_input_raises_type_error(dtype):
    with pytest.raises(TypeError, match=f"uint8 or float in \\[0, 1\\], got dtype {np.dtype(dtype)}"):
        rgb_to_hed(np.zeros((4, 4, 3), dtype))


def test_torch_errors():
    with pytest.raises(ValueError, match=re.escape("got (2, 4, 5, 5)")):
        rgb_to_hed(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match=re.escape("got (5, 5)")):
        rgb_to_od(torch.zeros(5, 5))
    with pytest.raises(TypeError, match="float in \\[0, 1\\], got dtype torch.uint8"):
        rgb_to_hed(torch.zeros(1, 3, 5, 5, dtype=torch.uint8))


def test_bad_conversion_matrix():
    x = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match=re.escape("finite 3x3 matrix, got shape (2, 2)")):
        rgb_to_stains(x, np.eye(2))
    with pytest.raises(ValueError, match="finite 3x3 matrix"):
        stains_to_rgb(np.zeros((2, 2, 3)), np.full((3, 3), np.nan))

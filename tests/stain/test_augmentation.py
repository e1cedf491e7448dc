"""Tests of histoscope.stain.augmentation (HED jitter of Tellez et al., appendix B).

The reference is the paper's definition evaluated the slow way in float64 numpy:
deconvolve into H, E, DAB with Ruifrok's unit vectors, ``S' = alpha * S + beta``,
reconstruct.  Tolerances are "1 level" where a uint8 result is compared with a
float computation: rounding of a value near .5 may go either way.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from histoscope.stain import deconvolution as dec
from histoscope.stain.augmentation import HEDJitterParams, augment_hed, hed_jitter, random_hed_params
from histoscope.utils.convert import image_to_tensor, tensor_to_image

RUIFROK_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def paper_hed_jitter(image: np.ndarray, alpha, beta, *, i0: float = 255.0) -> np.ndarray:
    """Tellez et al. appendix B, the slow way, independent of histoscope's code:
    OD with the 1-level epsilon, deconvolution with Ruifrok's unit vectors,
    ``alpha * S + beta`` per stain, reconstruction, rounding."""
    m = RUIFROK_HED / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)
    od = -np.log10((image.astype(np.float64) + 1.0) / i0)
    s = od @ np.linalg.inv(m)
    s2 = np.asarray(alpha) * s + np.asarray(beta)
    rgb = i0 * 10.0 ** -(s2 @ m) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)).max())


def _cube(step: int) -> np.ndarray:
    v = np.arange(0, 256, step, dtype=np.uint8)
    return np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(-1, 1, 3)


@pytest.fixture
def tile(ihc) -> np.ndarray:
    return ihc[:192, :256].copy()


# --------------------------------------------------------------------------- #
# determinism and replay
# --------------------------------------------------------------------------- #


def test_seeded_output_is_deterministic_and_seed_dependent(tile):
    a = augment_hed(tile, rng=7)
    b = augment_hed(tile, rng=7)
    c = augment_hed(tile, rng=8)
    assert a.dtype == np.uint8 and a.shape == tile.shape
    np.testing.assert_array_equal(a, b)
    assert _max_diff(a, c) > 0
    assert _max_diff(a, tile) > 0  # sigma = 0.05 does change the image
    # a Generator gives the same draw as its seed
    np.testing.assert_array_equal(augment_hed(tile, rng=np.random.default_rng(7)), a)


def test_return_params_replays_exactly(tile):
    out, params = augment_hed(tile, rng=3, sigma=0.1, return_params=True)
    assert isinstance(params, HEDJitterParams) and not params.batched
    np.testing.assert_array_equal(hed_jitter(tile, params), out)
    # the same parameters are what random_hed_params draws from the same seed
    again = random_hed_params(3, sigma=0.1)
    np.testing.assert_array_equal(again.alpha, params.alpha)
    np.testing.assert_array_equal(again.beta, params.beta)
    # float and torch inputs replay too (preserve_white on)
    f = tile / 255.0
    out_f, p_f = augment_hed(f, rng=4, preserve_white=True, return_params=True)
    np.testing.assert_array_equal(hed_jitter(f, p_f, preserve_white=True), out_f)
    t = image_to_tensor(np.stack([tile, tile[::-1]]))
    out_t, p_t = augment_hed(t, rng=5, return_params=True)
    assert p_t.batched and len(p_t) == 2
    assert torch.equal(hed_jitter(t, p_t), out_t)


def test_params_dict_round_trip():
    for p in (random_hed_params(0), random_hed_params(1, batch=4)):
        d = json.loads(json.dumps(p.to_dict()))  # JSON-friendly
        q = HEDJitterParams.from_dict(d)
        np.testing.assert_array_equal(q.alpha, p.alpha)
        np.testing.assert_array_equal(q.beta, p.beta)
        assert q.batched == p.batched and len(q) == len(p)
    pb = random_hed_params(1, batch=4)
    assert len(pb) == 4
    np.testing.assert_array_equal(pb[2].alpha, pb.alpha[2])
    np.testing.assert_array_equal(pb[2].beta, pb.beta[2])
    with pytest.raises(IndexError, match="unbatched"):
        random_hed_params(0)[0]


def test_params_equality_and_hash():
    p = random_hed_params(0)
    q = HEDJitterParams.from_dict(p.to_dict())
    assert p == q
    assert hash(p) == hash(q)


# --------------------------------------------------------------------------- #
# the three implementations agree
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("preserve_white", [False, True])
@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_uint8_float_and_torch_paths_agree(ihc, preserve_white, sigma):
    batch = np.stack([ihc[:128, :128], ihc[200:328, 300:428], ihc[384:, 384:]])
    params = random_hed_params(11, sigma=sigma, batch=3)
    lut = hed_jitter(batch, params, preserve_white=preserve_white)  # uint8 lookup-table kernel
    flt = hed_jitter(batch / 255.0, params, preserve_white=preserve_white)  # float64 numpy
    assert lut.dtype == np.uint8 and flt.dtype == np.float64
    # the LUT kernel multiplies float32 tables: within 1 level of the float64 path
    assert _max_diff(lut, np.rint(flt * 255)) <= 1
    # torch on (B, 3, H, W) with per-image (B, 3) parameters
    t = hed_jitter(image_to_tensor(batch), params, preserve_white=preserve_white)
    assert t.shape == (3, 3, 128, 128) and t.dtype == torch.float32
    assert _max_diff(tensor_to_image(t), lut) <= 1
    assert _max_diff(tensor_to_image(t), np.rint(flt * 255)) <= 1


def test_paths_agree_on_real_tile(load_rgb):
    x = load_rgb("histolab", "tcga-lung-rgb.png")
    params = random_hed_params(5, sigma=0.1)
    lut = hed_jitter(x, params)
    flt = hed_jitter(x.astype(np.float32) / 255.0, params)
    assert flt.dtype == np.float32
    assert _max_diff(lut, np.rint(flt.astype(np.float64) * 255)) <= 1
    t = hed_jitter(image_to_tensor(x), params)  # (3, H, W) with (3,) parameters
    assert t.shape == (3, 512, 512)
    assert _max_diff(tensor_to_image(t), lut) <= 1


def test_matches_paper_definition_on_real_tile(load_rgb):
    x = load_rgb("histolab", "tissue-level0-4302-10273-4814-10785.png")
    for seed in (0, 1):
        p = random_hed_params(seed, sigma=0.1)
        ref = paper_hed_jitter(x, p.alpha, p.beta)
        out = hed_jitter(x, p)
        # 1 level (rounding of float32 products); almost every pixel identical
        assert _max_diff(out, ref) <= 1
        assert (out != ref).any(axis=-1).mean() < 0.01
        assert _max_diff(out, x) > 5  # and the jitter is not a no-op


def test_matches_paper_definition_on_colour_cube():
    cube = _cube(15)
    p = HEDJitterParams([0.9, 1.1, 1.05], [0.04, -0.03, 0.02])
    assert _max_diff(hed_jitter(cube, p), paper_hed_jitter(cube, p.alpha, p.beta)) <= 1
    # Macenko's incident light as well
    assert _max_diff(hed_jitter(cube, p, i0=240.0), paper_hed_jitter(cube, p.alpha, p.beta, i0=240.0)) <= 1


def test_each_channel_is_jittered_separately(tile):
    # changing only the eosin parameters must leave the haematoxylin channel as it
    # was (up to the 1-level rounding of the uint8 image in between)
    p = HEDJitterParams([1.0, 1.3, 1.0], [0.0, 0.1, 0.0])
    before = dec.rgb_to_hed(tile.astype(np.float64) / 255.0)
    after = dec.rgb_to_hed(hed_jitter(tile / 255.0, p))
    tissue = dec.tissue_weight(tile) > 0.99  # not clipped at white or black
    dark = (tile <= 2).any(axis=-1)
    ok = tissue & ~dark
    np.testing.assert_allclose(after[..., 0][ok], before[..., 0][ok], atol=1e-9)
    np.testing.assert_allclose(after[..., 2][ok], before[..., 2][ok], atol=1e-9)
    np.testing.assert_allclose(after[..., 1][ok], 1.3 * before[..., 1][ok] + 0.1, atol=1e-9)


# --------------------------------------------------------------------------- #
# identity and parameter ranges
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("preserve_white", [False, True])
def test_identity_parameters_are_exact(preserve_white):
    cube = _cube(3)  # 86^3 colours
    ident = HEDJitterParams(np.ones(3), np.zeros(3))
    np.testing.assert_array_equal(hed_jitter(cube, ident, preserve_white=preserve_white), cube)
    np.testing.assert_array_equal(augment_hed(cube, sigma=0, rng=1, preserve_white=preserve_white), cube)
    f = cube / 255.0
    np.testing.assert_allclose(hed_jitter(f, ident, preserve_white=preserve_white), f, atol=1e-12)
    t = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(hed_jitter(t, ident, preserve_white=preserve_white), t, atol=1e-12, rtol=0)


def test_random_params_ranges():
    sigma = 0.1
    p = random_hed_params(0, sigma=sigma, batch=2000)
    assert p.alpha.shape == p.beta.shape == (2000, 3)
    assert (p.alpha >= 1 - sigma).all() and (p.alpha <= 1 + sigma).all()
    assert (p.beta >= -sigma).all() and (p.beta <= sigma).all()
    # uniform over the whole range, not a narrower one (2000 draws: the extremes are
    # within 1% of the ends with overwhelming probability)
    assert p.alpha.min() < 1 - 0.98 * sigma and p.alpha.max() > 1 + 0.98 * sigma
    assert p.beta.min() < -0.98 * sigma and p.beta.max() > 0.98 * sigma
    assert abs(p.alpha.mean() - 1) < 0.01 and abs(p.beta.mean()) < 0.01
    # alpha and beta are not the same draw shifted
    assert abs(np.corrcoef(p.alpha.ravel(), p.beta.ravel())[0, 1]) < 0.1
    z = random_hed_params(0, sigma=0)
    np.testing.assert_array_equal(z.alpha, np.ones(3))
    np.testing.assert_array_equal(z.beta, np.zeros(3))


@pytest.mark.parametrize("sigma", [-0.1, np.nan, np.inf])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        random_hed_params(0, sigma=sigma)


# --------------------------------------------------------------------------- #
# white preservation
# --------------------------------------------------------------------------- #


def test_preserve_white(synthetic_he):
    img, _ = synthetic_he(128, seed=3, i0=255.0, white_background=True)
    white = (img == 255).all(axis=-1)
    assert 0.1 < white.mean() < 0.5
    # a positive beta darkens everything it touches (stain added to every pixel)
    p = HEDJitterParams([1.05, 0.95, 1.0], [0.05, 0.05, 0.05])
    kept = hed_jitter(img, p, preserve_white=True)
    np.testing.assert_array_equal(kept[white], 255)
    assert _max_diff(kept[~white], img[~white]) > 10  # tissue is still augmented
    changed = hed_jitter(img, p, preserve_white=False)
    assert (changed[white] < 250).all()
    # float and torch paths as well
    f = hed_jitter(img / 255.0, p, preserve_white=True)
    np.testing.assert_allclose(f[white], 1.0, atol=1e-9)
    t = tensor_to_image(hed_jitter(image_to_tensor(img), p, preserve_white=True))
    np.testing.assert_array_equal(t[white], 255)
    t_off = tensor_to_image(hed_jitter(image_to_tensor(img), p, preserve_white=False))
    assert (t_off[white] < 250).all()


# --------------------------------------------------------------------------- #
# batches
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("preserve_white", [False, True])
def test_batch_with_per_image_params_equals_per_image_calls(ihc, preserve_white):
    batch = np.stack([ihc[:96, :96], ihc[100:196, 50:146], ihc[400:496, 400:496], ihc[:96, 400:496]])
    p = random_hed_params(9, sigma=0.15, batch=4)
    out = hed_jitter(batch, p, preserve_white=preserve_white)
    assert out.shape == batch.shape and out.dtype == np.uint8
    for i in range(4):
        np.testing.assert_array_equal(out[i], hed_jitter(batch[i], p[i], preserve_white=preserve_white))
    assert _max_diff(out[0], out[1]) > 0
    # float batch
    fb = hed_jitter(batch / 255.0, p, preserve_white=preserve_white)
    for i in range(4):
        np.testing.assert_array_equal(fb[i], hed_jitter(batch[i] / 255.0, p[i], preserve_white=preserve_white))
    # torch batch: float32 reductions may differ in the last bit
    tb = hed_jitter(image_to_tensor(batch), p, preserve_white=preserve_white)
    for i in range(4):
        ti = hed_jitter(image_to_tensor(batch[i]), p[i], preserve_white=preserve_white)
        torch.testing.assert_close(tb[i], ti, atol=1e-6, rtol=0)
    # unbatched parameters on a batch: the same jitter for every image
    one = random_hed_params(2)
    shared_out = hed_jitter(batch, one)
    for i in range(4):
        np.testing.assert_array_equal(shared_out[i], hed_jitter(batch[i], one))
    # augment_hed draws one row per image
    out2, p2 = augment_hed(batch, rng=1, return_params=True)
    assert p2.alpha.shape == (4, 3)
    assert len({tuple(r) for r in p2.alpha.round(12)}) == 4


def test_torch_keeps_dtype_and_layout():
    t = torch.rand(3, 16, 16, dtype=torch.float64)
    out = hed_jitter(t, random_hed_params(0))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float64
    assert 0 <= float(out.min()) and float(out.max()) <= 1


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape", [(8, 8, 4), (8, 8), (8,), (2, 2, 8, 8, 3)])
def test_wrong_image_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"got {shape}")):
        hed_jitter(np.zeros(shape, np.uint8), random_hed_params(0))


def test_batched_params_must_fit_the_batch():
    p = random_hed_params(0, batch=3)
    with pytest.raises(ValueError, match=re.escape("3 parameter rows need an (N=3, H, W, 3) batch, got (8, 8, 3)")):
        hed_jitter(np.zeros((8, 8, 3), np.uint8), p)
    with pytest.raises(ValueError, match=re.escape("got (2, 8, 8, 3)")):
        hed_jitter(np.zeros((2, 8, 8, 3), np.uint8), p)
    with pytest.raises(ValueError, match="parameters for 3 images given for a batch of 2"):
        hed_jitter(torch.zeros(2, 3, 8, 8), p)
    with pytest.raises(ValueError, match="parameters for 3 images given for a batch of 1"):
        hed_jitter(torch.zeros(3, 8, 8), p)
    with pytest.raises(ValueError, match=re.escape("got (2, 4, 8, 8)")):
        hed_jitter(torch.zeros(2, 4, 8, 8), random_hed_params(0))


@pytest.mark.parametrize(
    "alpha, beta",
    [
        (np.ones(3), np.zeros(2)),
        (np.ones(4), np.zeros(4)),
        (np.ones((2, 3)), np.zeros(3)),
        (np.ones((1, 2, 3)), np.zeros((1, 2, 3))),
    ],
)
def test_params_shape_errors(alpha, beta):
    with pytest.raises(ValueError, match=r"alpha and beta must both have shape \(3,\) or \(B, 3\)"):
        HEDJitterParams(alpha, beta)


def test_params_must_be_finite_and_of_the_right_type():
    with pytest.raises(ValueError, match="finite"):
        HEDJitterParams([1, np.nan, 1], [0, 0, 0])
    with pytest.raises(TypeError, match="params must be HEDJitterParams, got dict"):
        hed_jitter(np.zeros((4, 4, 3), np.uint8), {"alpha": [1, 1, 1], "beta": [0, 0, 0]})
    with pytest.raises(TypeError, match="got dtype int32"):
        hed_jitter(np.zeros((4, 4, 3), np.int32), random_hed_params(0))

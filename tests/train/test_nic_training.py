"""NIC encoder training and evaluation (histoscope.train.nic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from histoscope.models.nic import BiGANEncoder, ContrastiveEncoder, MeanRGBEncoder, SupervisedEncoder, VAEEncoder
from histoscope.slide.backends import ArraySlide
from histoscope.train.nic import (
    NEIGHBOUR_DIRECTIONS,
    PatchPool,
    augment_batch,
    bigan_losses,
    evaluate_encoders,
    kl_divergence,
    make_pairs,
    sample_patch_pool,
    train_encoder,
    train_supervised_encoder,
    vae_loss,
)


def _tissue_image(seed: int, size: int = 192) -> np.ndarray:
    """White glass with a pink, textured 'tissue' disc in the middle."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 245, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    tex = rng.integers(0, 60, (size, size, 1))
    pink = np.array([200, 100, 160]) - tex
    img[inside] = np.clip(pink[inside], 0, 255).astype(np.uint8)
    return img


@pytest.fixture(scope="module")
def slides():
    # 2 um/px: 384 um wide, so the glass around the disc is too large to count as a hole in the tissue mask
    return [ArraySlide(_tissue_image(i), mpp=2.0, path=f"/virtual/slide{i}.png") for i in range(3)]


@pytest.fixture(scope="module")
def pool(slides):
    return sample_patch_pool(slides, 48, patch=8, mpp=2.0, neighbours=True, seed=0)


def _check_neighbours(pool: PatchPool) -> None:
    d = pool.neighbour_xy - pool.xy
    step = np.asarray(pool.footprint)[pool.source][:, None]
    unit = d / step
    assert np.array_equal(unit, np.round(unit))  # offsets of exactly one footprint
    assert {tuple(u) for u in unit.astype(int)} <= set(NEIGHBOUR_DIRECTIONS)  # one of the 8 directions, never (0, 0)
    assert (np.abs(d).max(axis=1) >= step[:, 0]).all()  # adjacent and non-overlapping


def test_sample_patch_pool_in_tissue_with_neighbours(slides, pool):
    assert pool.images.shape == (48, 8, 8, 3) and pool.images.dtype == np.uint8
    assert pool.neighbours.shape == pool.images.shape
    assert np.bincount(pool.source).tolist() == [16, 16, 16]
    assert pool.sources == ["slide0", "slide1", "slide2"] and pool.footprint == [8, 8, 8] and pool.mpp == 2.0
    _check_neighbours(pool)
    for i in range(len(pool)):  # pixels are those of the slide at the recorded corners
        arr = slides[pool.source[i]]._array
        (x, y), (nx, ny) = pool.xy[i], pool.neighbour_xy[i]
        assert np.array_equal(pool.images[i], arr[y : y + 8, x : x + 8])
        assert np.array_equal(pool.neighbours[i], arr[ny : ny + 8, nx : nx + 8])
    glass = (pool.images.min(axis=-1) >= 240).mean(axis=(1, 2))  # patches are mostly tissue, not glass
    assert glass.max() <= 0.5 and (pool.neighbours.min(axis=-1) >= 240).mean(axis=(1, 2)).max() <= 0.5


def test_sample_patch_pool_is_repeatable_and_uniform_without_tissue(slides):
    a = sample_patch_pool(slides[:1], 20, patch=16, mpp=2.0, tissue=False, seed=3)
    b = sample_patch_pool(slides[:1], 20, patch=16, mpp=2.0, tissue=False, seed=3)
    c = sample_patch_pool(slides[:1], 20, patch=16, mpp=2.0, tissue=False, seed=4)
    assert np.array_equal(a.xy, b.xy) and np.array_equal(a.images, b.images) and not np.array_equal(a.xy, c.xy)
    assert a.neighbours is None and a.neighbour_xy is None
    glass = (a.images.min(axis=-1) >= 240).mean(axis=(1, 2))
    assert (glass > 0.9).any()  # uniform sampling also hits the glass corners
    with pytest.raises(ValueError, match="found only .* in tissue"):
        sample_patch_pool([ArraySlide(np.full((256, 256, 3), 250, np.uint8), mpp=2.0)], 4, patch=8, mpp=2.0)


@pytest.mark.shared_data
def test_patch_pool_from_a_real_slide(cmu_svs):
    from histoscope.slide.mask import tissue_mask
    from histoscope.slide.reader import open_slide

    with open_slide(cmu_svs) as slide:
        pool = sample_patch_pool([slide], 12, patch=128, mpp=0.5, neighbours=True, seed=0)
        mask = tissue_mask(slide)
        W, H = slide.dimensions
        assert pool.images.shape == (12, 128, 128, 3) and pool.footprint == [128]  # 0.5 um/px read from 0.499 level 0
        _check_neighbours(pool)
        for xy in (pool.xy, pool.neighbour_xy):
            assert (xy >= 0).all() and (xy[:, 0] + 128 <= W).all() and (xy[:, 1] + 128 <= H).all()
            cov = mask.coverage(xy[:, 0], xy[:, 1], np.full(12, 128), np.full(12, 128))
            assert (cov >= 0.5).all()
        for i in (0, 5):
            x, y = pool.neighbour_xy[i]
            assert np.array_equal(pool.neighbours[i], slide.read_region((int(x), int(y)), (128, 128), mpp=0.5))
        assert pool.images.mean() < 225  # H&E, not glass


# ---------------------------------------------------------------------------- losses
def test_kl_closed_form_on_a_hand_computed_case():
    mu = torch.tensor([[1.0, 2.0]])
    logvar = torch.tensor([[0.0, np.log(4.0)]])
    # 0.5 * sum(var + mu^2 - 1 - log var) = 0.5 * ((1 + 1 - 1 - 0) + (4 + 4 - 1 - log 4))
    expected = 0.5 * (1.0 + 7.0 - np.log(4.0))
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    torch.testing.assert_close(kl_divergence(mu, logvar), ref)
    assert torch.equal(kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)), torch.zeros(3))


def test_vae_loss_is_reconstruction_plus_gamma_kl():
    x = torch.zeros(1, 3, 2, 2)
    recon = torch.full_like(x, 0.5)  # squared error 0.25 on 12 values = 3
    mu = torch.tensor([[1.0, 2.0]])
    logvar = torch.tensor([[0.0, np.log(4.0)]])
    kl = 0.5 * (1.0 + 7.0 - np.log(4.0))
    total, rec, klt = vae_loss(x, recon, mu, logvar, gamma=2.0)
    assert rec.item() == pytest.approx(3.0) and klt.item() == pytest.approx(kl, rel=1e-6)
    assert total.item() == pytest.approx(3.0 + 2.0 * kl, rel=1e-6)
    total0, _, kl0 = vae_loss(x, recon, torch.zeros(1, 2), torch.zeros(1, 2), gamma=5.0)
    assert kl0.item() == 0.0 and total0.item() == pytest.approx(3.0)
    _, rec_bce, _ = vae_loss(x, recon, mu, logvar, recon_loss="bce")
    assert rec_bce.item() == pytest.approx(12 * np.log(2.0), rel=1e-5)
    with pytest.raises(ValueError, match="differs from input"):
        vae_loss(x, recon[..., :1], mu, logvar)


def test_bigan_losses_are_those_of_eq_6():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(16, generator=g) * 3, torch.randn(16, generator=g) * 3
    bce = F.binary_cross_entropy_with_logits
    loss_d, loss_ge = bigan_losses(real, fake)
    value = torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean()  # V(D, E, G)
    torch.testing.assert_close(loss_d, -value)
    torch.testing.assert_close(loss_d, bce(real, torch.ones(16)) + bce(fake, torch.zeros(16)))
    torch.testing.assert_close(loss_ge, bce(real, torch.zeros(16)) + bce(fake, torch.ones(16)))  # labels swapped
    sat_d, sat_ge = bigan_losses(real, fake, saturating=True)
    torch.testing.assert_close(sat_ge, value)  # minimax: E and G descend V itself
    torch.testing.assert_close(sat_d, loss_d)
    big = torch.tensor([60.0]), torch.tensor([-60.0])  # stable where sigmoid saturates
    assert torch.isfinite(torch.stack(bigan_losses(*big))).all()


# ---------------------------------------------------------------------------- pairs, augmentation
def test_contrastive_pairs_composition_and_other_slide_partners(pool):
    rng = np.random.default_rng(0)
    for _ in range(3):
        anchors = rng.choice(len(pool), 32, replace=False)
        pb = make_pairs(pool, anchors, rng)
        kinds = pd.Series(pb.kind).value_counts().to_dict()
        assert kinds == {"same": 16, "neighbour": 12, "other": 4}  # half same; different = 75% adjacent, 25% other slide
        assert np.array_equal(pb.label, (pb.kind == "same").astype(np.float32))
        assert np.array_equal(pb.first, pool.images[anchors])
        same, nb, other = (pb.kind == k for k in ("same", "neighbour", "other"))
        assert np.array_equal(pb.second[same], pool.images[anchors[same]])
        assert np.array_equal(pb.second[nb], pool.neighbours[anchors[nb]])
        assert np.array_equal(pb.second[other], pool.images[pb.partner[other]])
        assert (pool.source[pb.partner[other]] != pool.source[anchors[other]]).all()


def test_pairs_need_neighbours_and_warn_with_one_source(slides):
    one = sample_patch_pool(slides[:1], 8, patch=8, mpp=2.0, neighbours=True, seed=0)
    with pytest.warns(UserWarning, match="one source"):
        pb = make_pairs(one, np.arange(8), np.random.default_rng(0))
    other = pb.kind == "other"
    assert (pb.partner[other] != pb.anchor[other]).all()
    no_nb = PatchPool.from_images(one.images)
    with pytest.raises(ValueError, match="neighbours=True"):
        make_pairs(no_nb, np.arange(4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="neighbours"):
        train_encoder("contrastive", no_nb, epochs=1)


def test_augment_batch_light_is_a_rotation_or_mirror_and_replayable():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = augment_batch(x, np.random.default_rng(1), heavy=False)
    d4 = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)]
    for i in range(6):
        assert sum(torch.equal(y[i], t[i]) for t in d4) >= 1
    h1 = augment_batch(x, np.random.default_rng(2))
    h2 = augment_batch(x, np.random.default_rng(2))
    assert torch.equal(h1, h2) and h1.shape == x.shape and 0 <= float(h1.min()) and float(h1.max()) <= 1
    assert not torch.equal(h1, augment_batch(x, np.random.default_rng(3)))


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["vae", "contrastive", "bigan"])
def test_training_is_repeatable_with_a_seed(kind, pool):
    kw = dict(code_size=8, width=4, epochs=2, batch_size=16)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, hist = train_encoder(kind, pool, seed=1, **kw)
    assert torch.equal(torch.rand(1), expected_next)  # the global torch generator is left alone
    b, _ = train_encoder(kind, pool, seed=1, **kw)
    c, _ = train_encoder(kind, pool, seed=2, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training and a.config["train"]["seed"] == 1
    assert hist["epoch"] == [0, 1] and len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()
    extra = {"vae": {"recon", "kl"}, "contrastive": {"accuracy"}, "bigan": {"loss_d", "loss_ge", "d_real", "d_fake"}}[kind]
    assert extra <= set(hist)


def test_training_runs_at_p128_and_mean_rgb_needs_none():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 128, 128, 3), dtype=np.uint8)
    classes = {"vae": VAEEncoder, "bigan": BiGANEncoder}
    for kind, cls in classes.items():
        enc, hist = train_encoder(kind, images, code_size=16, width=4, epochs=1, batch_size=8)
        assert isinstance(enc, cls) and enc.patch_size == 128
        assert enc.encode_images(images).shape == (8, 16)
    enc, hist = train_encoder("mean_rgb", images)
    assert isinstance(enc, MeanRGBEncoder) and hist["loss"] == []
    with pytest.raises(ValueError, match="train_supervised_encoder"):
        train_encoder("supervised", images)


# ---------------------------------------------------------------------------- Table 1 on digits
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.repeat((255 - d.images * 15).astype(np.uint8)[..., None], 3, axis=-1)  # dark digits on white, 8 x 8
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    tr, te = order[:1200], order[1200:]
    return (images[tr], d.target[tr]), (images[te], d.target[te]), [str(c) for c in range(10)]


def test_table1_trained_encoders_beat_chance_and_mean_rgb(digits):
    from histoscope.models.nic import create_encoder

    train, test, classes = digits
    vae, hist = train_encoder("vae", train[0], code_size=16, width=16, epochs=6, batch_size=64, lr=2e-3, seed=0)
    assert hist["loss"][-1] < 0.7 * hist["loss"][0]
    # digits are not rotation invariant (6 vs 9): no rotation/mirror augmentation here
    sup, shist = train_supervised_encoder(*train, classes=classes, mpp=None, epochs=4, width=8, augment=False, seed=0)
    assert isinstance(sup, SupervisedEncoder) and shist["accuracy"][-1] > shist["accuracy"][0]
    torch.manual_seed(0)
    untrained = create_encoder("vae", code_size=16, patch_size=8, width=16).eval()  # same architecture, random weights
    encoders = {"mean_rgb": train_encoder("mean_rgb", train[0])[0], "untrained_vae": untrained, "vae": vae, "supervised": sup}
    table = evaluate_encoders(encoders, train, test, classes, seed=0)
    assert list(table.index) == list(encoders)
    assert list(table.columns) == [*classes, "accuracy", "balanced_accuracy", "code_size", "n_test"]
    acc = table["accuracy"]
    assert acc["vae"] > 0.85 and acc["supervised"] > 0.85 and acc["mean_rgb"] < 0.3  # chance: 0.1
    assert acc["vae"] > acc["untrained_vae"] + 0.01  # training helped (0.946 vs 0.911 when written)
    # per-class accuracies are the recall of each class: their mean is the balanced accuracy, their
    # count-weighted mean the accuracy
    counts = np.bincount(test[1], minlength=10)
    for name, row in table.iterrows():
        per = row[classes].to_numpy(float)
        assert row["balanced_accuracy"] == pytest.approx(per.mean())
        assert row["accuracy"] == pytest.approx((per * counts).sum() / counts.sum())
    again = evaluate_encoders({"vae": vae}, train, test, classes, seed=0)
    pd.testing.assert_series_equal(again.loc["vae"], table.loc["vae"])


def test_supervised_training_is_repeatable(digits):
    (x, y), _, classes = digits
    a, _ = train_supervised_encoder(x[:128], y[:128], classes=classes, mpp=None, epochs=1, width=4, seed=5)
    b, _ = train_supervised_encoder(x[:128], y[:128], classes=classes, mpp=None, epochs=1, width=4, seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        train_supervised_encoder(x[:4], np.array([0, 1, 2, 10]), classes=classes, mpp=None, epochs=1)


def test_contrastive_encoder_type(pool):
    enc, _ = train_encoder("contrastive", pool, code_size=8, width=4, epochs=1, batch_size=16)
    assert isinstance(enc, ContrastiveEncoder) and enc.encode_images(pool.images[:3]).shape == (3, 8)

"""The letter pipeline (Tellez et al.'s R S E C H B G + crop): parameters, replay, references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoscope.stain import LETTERS, AugmentConfig, Augmentation, augment, hed_jitter, parse_letters
from histoscope.stain.augmentation import HEDJitterParams
from histoscope.stain.transforms import _gaussian_filter
from histoscope.utils.convert import image_to_tensor, tensor_to_image


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    """Eight 64 px patches of scikit-image's IHC sample (ships with scikit-image)."""
    from skimage import data

    ihc = np.array(data.immunohistochemistry())
    tiles = np.stack([ihc[y : y + 64, x : x + 64] for y in (0, 150, 300, 440) for x in (0, 300)])
    return image_to_tensor(tiles)


def test_letters_are_validated():
    assert parse_letters("rcsehbg") == "RCSEHBG"
    assert set(LETTERS) == set("RSECHBG")
    with pytest.raises(ValueError, match="unknown augmentation letter"):
        parse_letters("RX")
    with pytest.raises(ValueError, match="repeat"):
        parse_letters("RR")
    with pytest.raises(TypeError):
        parse_letters(3)  # type: ignore[arg-type]


def test_seeded_replayable_and_seed_dependent(patches):
    a, b, c = Augmentation("RCSEHBG", crop=48, seed=1), Augmentation("RCSEHBG", crop=48, seed=1), Augmentation("RCSEHBG", crop=48, seed=2)
    y, params = a(patches, return_params=True)
    assert y.shape == (8, 3, 48, 48) and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(b(patches), y)
    assert not torch.equal(c(patches), y)
    assert torch.equal(a.replay(patches, params), y)
    # the stream moves on: a second call differs, manual_seed restarts it
    assert not torch.equal(a(patches), y)
    assert torch.equal(a.manual_seed(1)(patches), y)


def test_each_image_gets_its_own_parameters(patches):
    same = patches[:1].expand(6, -1, -1, -1)
    y = Augmentation("CHB", seed=0)(same)
    assert len({tuple(np.round(t.flatten()[:50].numpy(), 4)) for t in y}) == 6


def test_parameter_ranges(patches):
    cfg = AugmentConfig()
    p = {d["op"]: d for d in Augmentation("RSECHBG", seed=0).make_params(2000, 64, 64)}
    assert set(p["R"]["k"].tolist()) == {0, 1, 2, 3} and 0.4 < p["R"]["flip"].float().mean() < 0.6
    for key, lo_hi in (("scale", cfg.scale),):
        v = p["S"][key]
        assert lo_hi[0] <= float(v.min()) and float(v.max()) <= lo_hi[1]
    assert float(p["C"]["alpha"].min()) >= 0.95 and float(p["C"]["alpha"].max()) <= 1.05
    assert float(p["C"]["beta"].abs().max()) <= 0.05
    for key in ("brightness", "contrast", "saturation"):
        lo, hi = getattr(cfg, key)
        assert lo <= float(p["H"][key].min()) and float(p["H"][key].max()) <= hi
    assert 0 <= float(p["B"]["sigma"].min()) and float(p["B"]["sigma"].max()) <= 2
    assert 0 <= float(p["G"]["sd"].min()) and float(p["G"]["sd"].max()) <= 0.1


def test_rotation_and_mirror_are_exact(patches):
    aug = Augmentation("R", seed=0)
    y, params = aug(patches, return_params=True)
    for i, (k, f) in enumerate(zip(params[0]["k"], params[0]["flip"])):
        expect = torch.rot90(patches[i], int(k), dims=(-2, -1))
        if bool(f):
            expect = expect.flip(-1)
        assert torch.equal(y[i], expect)


def test_colour_ops_match_torchvision(patches):
    import torchvision.transforms.v2.functional as F

    aug = Augmentation("H", seed=0)
    y, params = aug(patches, return_params=True)
    p = params[0]
    for i in range(len(patches)):
        ref = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(patches[i], float(p["brightness"][i])), float(p["contrast"][i])), float(p["saturation"][i]))
        torch.testing.assert_close(y[i], ref.clamp(0, 1))


def test_stain_letter_is_hed_jitter(patches):
    y, params = Augmentation("C", seed=0)(patches, return_params=True)
    ref = hed_jitter(patches, HEDJitterParams(params[0]["alpha"].numpy(), params[0]["beta"].numpy()))
    torch.testing.assert_close(y, ref)


def test_scaling_about_the_centre(patches):
    aug = Augmentation("S", config=AugmentConfig(scale=(2.0, 2.0)), seed=0)
    x = patches[:1]
    y = aug(x)
    # zooming by 2 about the centre: output pixel (32 + d) samples input (32 + d/2)
    centre = x[0, :, 16:48, 16:48]
    up = torch.nn.functional.interpolate(centre[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    assert float((y[0] - up).abs().mean()) < 0.03
    ident = Augmentation("S", config=AugmentConfig(scale=(1.0, 1.0)), seed=0)(x)
    torch.testing.assert_close(ident, x, atol=1e-5, rtol=0)


def test_elastic_field_matches_scipy_and_simard():
    from scipy import ndimage

    x = torch.rand(2, 2, 96, 80, dtype=torch.float64)
    ref = ndimage.gaussian_filter(x[1, 0].numpy(), 10, mode="mirror", truncate=4.0)
    np.testing.assert_allclose(_gaussian_filter(x, 10.0)[1, 0].numpy(), ref, atol=1e-10)
    # Simard's field: alpha 100, sigma 10 gives displacements of a few pixels (not tens)
    aug = Augmentation("E", seed=0)
    img = torch.zeros(1, 3, 128, 128)
    img[..., ::8, :] = 1.0  # horizontal lines
    y = aug(img)
    moved = float((y - img).abs().mean())
    assert 0.01 < moved < 0.5
    zero = Augmentation("E", config=AugmentConfig(elastic_alpha=0.0), seed=0)(img)
    torch.testing.assert_close(zero, img, atol=1e-5, rtol=0)


def test_noise_and_blur_strength(patches):
    flat = torch.full((4, 3, 64, 64), 0.5)
    y, params = Augmentation("G", seed=0)(flat, return_params=True)
    for i, sd in enumerate(params[0]["sd"]):
        assert abs(float((y[i] - 0.5).std()) - float(sd)) < 0.01
    yb = Augmentation("B", config=AugmentConfig(blur_sigma=(2.0, 2.0)), seed=0)(patches)
    assert float(yb.diff(dim=-1).abs().mean()) < float(patches.diff(dim=-1).abs().mean())


def test_crop_is_a_translation_within_bounds(patches):
    y, params = Augmentation("", crop=40, seed=0)(patches, return_params=True)
    p = params[-1]
    for i in range(len(patches)):
        t, l_ = int(p["top"][i]), int(p["left"][i])
        assert 0 <= t <= 24 and 0 <= l_ <= 24
        assert torch.equal(y[i], patches[i, :, t : t + 40, l_ : l_ + 40])
    with pytest.raises(ValueError, match="larger than the image"):
        Augmentation("", crop=100)(patches)


def test_inputs(patches):
    u8 = (patches[0] * 255).round().to(torch.uint8)
    y = Augmentation("C", seed=0)(u8)
    assert y.shape == (3, 64, 64) and y.is_floating_point()
    with pytest.raises(TypeError, match="numpy"):
        Augmentation("C")(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        Augmentation("C")(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match="non-square"):
        Augmentation("R", seed=3)(torch.rand(4, 3, 32, 48))
    with pytest.raises(ValueError, match="range"):
        AugmentConfig(contrast=(1.5, 0.5))


def test_numpy_convenience_is_seeded():
    from skimage import data

    img = np.array(data.immunohistochemistry())[:64, :64]
    a = augment(img, "RCH", rng=5)
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert np.array_equal(a, augment(img, "RCH", rng=5))
    assert not np.array_equal(a, augment(img, "RCH", rng=6))


class _Patches(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        self.aug = Augmentation("RCHG", seed=7)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.aug(self.x[i])


def test_dataloader_workers_do_not_repeat_each_other_and_are_reproducible():
    ds = _Patches(8)

    def run() -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(0))
        return torch.cat(list(loader))

    first = run()
    assert torch.equal(first, run())  # same loader seed: same augmentations
    # the two workers (batches 0 and 1) start from different streams
    d0 = first[:4] - ds.x[:4]
    d1 = first[4:] - ds.x[4:]
    assert not torch.allclose(d0, d1)

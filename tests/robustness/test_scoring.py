"""One-pixel scoring: the incremental mode against the plain forward pass, the colour sets, the targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from histoscope.models import create_model
from histoscope.models.mitosis import STRIDE2_FIRST
from histoscope.models.pretrained import load_pretrained
from histoscope.robustness import CallableTarget, PixelScorer, TorchTarget, as_target, chain_layers, colour_grid
from histoscope.robustness.confidence import confidence_maps


def real_patch(size: int = 64, y: int = 200, x: int = 260) -> np.ndarray:
    """A real stained-tissue crop from the image scikit-image ships (no ../shared needed)."""
    return np.ascontiguousarray(data.immunohistochemistry()[y : y + size, x : x + size])


def test_colour_grid_includes_255_and_has_the_papers_size():
    assert len(colour_grid(5)) == 52**3 == 140_608
    g = colour_grid(85)
    assert len(g) == 64 and g.dtype == np.uint8
    assert set(np.unique(g)) == {0, 85, 170, 255}
    assert set(np.unique(colour_grid(100))) == {0, 100, 200, 255}
    with pytest.raises(ValueError, match="1..255"):
        colour_grid(0)


@pytest.mark.parametrize("name", ["mitosis_detector", "mitosis_detector_stride2"])
def test_incremental_scores_equal_plain_ones_on_a_real_image(name):
    target = as_target(name)
    sc = PixelScorer(target, real_patch(), mode="incremental")
    assert sc.mode == "incremental"
    rng = np.random.default_rng(0)
    n = 300
    ys, xs = torch.as_tensor(rng.integers(0, 64, n)), torch.as_tensor(rng.integers(0, 64, n))
    cs = torch.as_tensor(rng.integers(0, 256, (n, 3)))
    # include the four corners and the edges, where the windows are clamped
    ys[:4], xs[:4] = torch.tensor([0, 0, 63, 63]), torch.tensor([0, 63, 0, 63])
    inc = sc(ys, xs, cs)
    sc.mode = "plain"
    plain = sc(ys, xs, cs)
    assert (inc - plain).abs().max() < 1e-5
    # and plain really is the model on the perturbed image
    img = real_patch().copy()
    img[ys[5], xs[5]] = cs[5].numpy()
    direct = torch.softmax(load_pretrained(name)(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255), 1)[0]
    assert torch.allclose(plain[5], direct, atol=1e-5)
    # a pixel the network never sees (the last column: receptive field 61 of 64) changes nothing
    if name == "mitosis_detector":
        same = sc(torch.tensor([10]), torch.tensor([63]), torch.tensor([[255, 0, 0]]))
        assert torch.allclose(same[0], sc.original, atol=1e-6)


def test_incremental_confidence_maps_equal_plain_maps():
    target = as_target("mitosis_detector")
    img = real_patch(y=300, x=100)
    pixels = np.argwhere(np.ones((64, 64), bool))[::37]
    a = confidence_maps(target, img, colours=colour_grid(255), pixels=pixels, mode="plain", verbose=False)
    b = confidence_maps(target, img, colours=colour_grid(255), pixels=pixels, mode="incremental", verbose=False)
    assert a.mode == "plain" and b.mode == "incremental"
    assert np.array_equal(a.done, b.done) and a.done.sum() == len(pixels)
    for m in ("min", "max", "mean"):
        x, y = getattr(a, m)[a.done], getattr(b, m)[b.done]
        assert np.abs(x - y).max() < 1e-5


def test_confidence_maps_follow_algorithm_1_by_explicit_loop():
    model = load_pretrained("mitosis_detector_stride2")
    target = TorchTarget(model)
    img = real_patch(y=100, x=330)
    colours = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 90]], np.uint8)
    pixels = np.array([[5, 7], [31, 31], [60, 2]])
    maps = confidence_maps(target, img, colours=colours, pixels=pixels, verbose=False)
    for y, x in pixels:
        scores = []
        for c in colours:
            im = img.copy()
            im[y, x] = c
            with torch.no_grad():
                scores.append(torch.softmax(model(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255), 1)[0, 1].item())
        assert maps.min[y, x] == pytest.approx(min(scores), abs=1e-5)
        assert maps.max[y, x] == pytest.approx(max(scores), abs=1e-5)
        assert maps.mean[y, x] == pytest.approx(np.mean(scores), abs=1e-5)
    assert np.isnan(maps.min[0, 0]) and maps.done.sum() == 3
    assert maps.evaluations == 9


def test_incremental_mode_covers_any_sequential_of_valid_convolutions():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, 2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, (3, 2), 1), torch.nn.Tanh(),
        torch.nn.Conv2d(8, 16, 3, 3), torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(16, 3, (2, 2)),
    ).eval()
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2)
    img = real_patch(size=23)[:, :21].copy()  # not square, odd sizes
    target = TorchTarget(net)
    out = net(torch.rand(1, 3, 23, 21))
    assert out.shape[-2:] == (1, 1)
    sc = PixelScorer(target, img, mode="incremental")
    ys, xs = np.meshgrid(np.arange(23), np.arange(21), indexing="ij")
    ys, xs = torch.as_tensor(ys.ravel()), torch.as_tensor(xs.ravel())
    cs = torch.as_tensor(np.random.default_rng(1).integers(0, 256, (len(ys), 3)))
    inc = sc(ys, xs, cs)
    sc.mode = "plain"
    assert (inc - sc(ys, xs, cs)).abs().max() < 1e-5


def test_models_with_padding_or_pooling_fall_back_to_plain_or_say_why():
    model = create_model("small_cnn", num_classes=3, input_size=64)
    assert chain_layers(model) is None
    target = TorchTarget(model)
    assert PixelScorer(target, real_patch()).mode == "plain"
    with pytest.raises(ValueError, match="incremental mode needs"):
        PixelScorer(target, real_patch(), mode="incremental")
    calls = CallableTarget(lambda x: np.full((len(x), 2), 0.5), input_size=64)
    with pytest.raises(ValueError, match="incremental mode needs"):
        PixelScorer(calls, real_patch(), mode="incremental")


def test_targets_count_queries_and_check_shapes():
    t = CallableTarget(lambda x: x.mean(axis=(1, 2, 3)) / 255, name="mean-brightness")  # (N,) -> two classes
    sc = PixelScorer(t, real_patch())
    assert t.queries == 1 and t.classes == ["0", "1"]
    sc(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[0, 0, 0], [255, 255, 255]]))
    assert t.queries == 3
    with pytest.raises(ValueError, match="outside"):
        sc(torch.tensor([64]), torch.tensor([0]), torch.tensor([[0, 0, 0]]))
    bad = CallableTarget(lambda x: np.zeros((len(x) + 1, 2)), name="broken")
    with pytest.raises(ValueError, match="broken returned an array of shape"):
        PixelScorer(bad, real_patch())
    sized = as_target("mitosis_detector")
    with pytest.raises(ValueError, match="takes 64 x 64"):
        PixelScorer(sized, real_patch(size=80))
    with pytest.raises(ValueError, match="no class 'tumour'"):
        sized.class_index("tumour")
    with pytest.raises(TypeError, match="cannot make an audit target"):
        as_target(3.5)


def test_confidence_maps_checkpoint_and_resume_after_an_interruption(tmp_path):
    target = as_target("mitosis_detector_stride2")
    img = real_patch(y=40, x=400)
    pixels = np.argwhere(np.ones((64, 64), bool))[::29]
    colours = colour_grid(255)
    whole = confidence_maps(target, img, colours=colours, pixels=pixels, batch_size=64, verbose=False)

    class Interrupted(Exception):
        pass

    sc = PixelScorer(target, img, batch_size=64)
    calls = {"n": 0}
    real_call = sc.__class__.__call__

    def flaky(self, *a):
        calls["n"] += 1
        if calls["n"] > 5:
            raise Interrupted
        return real_call(self, *a)

    ck = tmp_path / "maps.npz"
    sc.__class__ = type("Flaky", (PixelScorer,), {"__call__": flaky})
    with pytest.raises(Interrupted):
        confidence_maps(target, img, colours=colours, pixels=pixels, batch_size=64, checkpoint=ck, checkpoint_every_s=0, verbose=False, scorer=sc)
    with np.load(ck) as z:
        partial = int(z["done"].sum())
    assert partial == 5 * (64 // len(colours))  # five batches of 8 pixels were kept
    resumed = confidence_maps(target, img, colours=colours, pixels=pixels, batch_size=64, checkpoint=ck, verbose=False)
    assert resumed.evaluations == whole.evaluations and np.array_equal(resumed.done, whole.done)
    for m in ("min", "max", "mean"):
        assert np.allclose(getattr(resumed, m)[whole.done], getattr(whole, m)[whole.done], atol=1e-6)
    # a checkpoint of another run is refused, not silently mixed in
    with pytest.raises(ValueError, match="checkpoint of a different run"):
        confidence_maps(target, real_patch(), colours=colours, pixels=pixels, checkpoint=ck, verbose=False)

"""Dense whole-slide inference: the stitched map must equal patch-by-patch evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from histoscope.infer import DenseMap, dense_map
from histoscope.models import create_model
from histoscope.slide import open_slide
from histoscope.slide.mask import Mask
from histoscope.utils.convert import image_to_tensor

TOL = 1e-5


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (deterministic), so that predictions vary over it."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(2, height // 10), max(2, width // 10), 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def _model(image: np.ndarray, *, mpp: float | None, width: float = 0.25, strides: tuple[int, ...] | None = None, input_size: int = 64, seed: int = 0):
    """A random mitosis CNN whose batch-norm statistics are set from ``image``.

    With PyTorch's default initialisation the random network's outputs barely vary
    (probabilities within 1e-4 of each other), which would make an equality test vacuous;
    one training-mode pass sets every layer's statistics so the map spans (0, 1).
    """
    torch.manual_seed(seed)
    model = create_model("mitosis_cnn", num_classes=2, input_size=input_size, width=width, mpp=mpp, strides=strides)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model.forward_dense(image_to_tensor(image)[None])
    return model.eval()


def _patch_probs(slide, model, ii: np.ndarray, jj: np.ndarray, *, mpp: float | None) -> np.ndarray:
    """The reference: read the patch centred on each element and classify it on its own."""
    S, st = model.config.input_size, model.stride
    ds = 1.0 if mpp is None else slide.downsample_for_mpp(mpp)
    patches = []
    for i, j in zip(ii, jj):
        x, y = (st * j - S // 2) * ds, (st * i - S // 2) * ds
        assert float(x).is_integer() and float(y).is_integer()
        kw = {} if mpp is None else {"mpp": mpp}
        patches.append(slide.read_region((int(x), int(y)), (S, S), **kw))
    with torch.no_grad():
        return torch.softmax(model(image_to_tensor(np.stack(patches))), 1)[:, 1].numpy()


def _sample(shape: tuple[int, int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random elements plus the four corners (edges of ragged tiles included)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ii = np.concatenate([rng.integers(0, h, n), [0, 0, h - 1, h - 1]])
    jj = np.concatenate([rng.integers(0, w, n), [0, w - 1, 0, w - 1]])
    return ii, jj


@pytest.mark.parametrize(
    "model_mpp, tile, strides, size",
    [(0.25, 64, None, 64), (0.5, 32, None, 64), (0.25, 64, (2, 2, 1, 2, 1, 1, 1, 1), 100), (0.25, 64, (2, 2, 1, 1, 1, 1, 1, 1), 64)],
    ids=["same-mpp", "resampled-x2", "stride8-100px", "stride2-first-64px"],
)
def test_matches_patch_by_patch_on_generated_image(model_mpp, tile, strides, size):
    image = _image(260, 300)
    slide = open_slide(image, mpp=0.25)
    model = _model(image, mpp=model_mpp, strides=strides, input_size=size)
    st = model.stride
    m = dense_map(slide, model, tile=tile, batch_size=3)
    ds = model_mpp / 0.25
    wm, hm = round(300 / ds), round(260 / ds)
    assert m.shape == (-(-hm // st), -(-wm // st))
    per = tile // st
    assert m.shape[0] % per and m.shape[1] % per and m.shape[0] > per and m.shape[1] > per  # several, ragged tiles
    assert m.stride_px == st * ds and m.origin_px == (0.0, 0.0)
    assert m.mpp == pytest.approx(model_mpp) and m.level0_mpp == pytest.approx(0.25)
    assert isinstance(m.probs, np.ndarray) and m.probs.dtype == np.float32
    assert m.probs.std() > 0.02  # a real test: the predictions vary
    ii, jj = _sample(m.shape, 60, seed=1)
    np.testing.assert_allclose(m.probs[ii, jj], _patch_probs(slide, model, ii, jj, mpp=model_mpp), atol=TOL, rtol=0)


def test_equals_one_forward_over_the_padded_image():
    """Every element, not a sample: tiles stitched = one dense pass over the white-padded image."""
    image = _image(130, 170, seed=3)
    model = _model(image, mpp=None)
    m = dense_map(image, model, tile=32, batch_size=2)  # 8 x 8 elements per tile, ragged at both ends
    S, st = 64, model.stride
    h, w = m.shape
    padded = np.full((st * (h - 1) + S, st * (w - 1) + S, 3), 255, np.uint8)
    padded[S // 2 : S // 2 + 130, S // 2 : S // 2 + 170] = image
    with torch.no_grad():
        ref = torch.softmax(model.forward_dense(image_to_tensor(padded)[None]), 1)[0, 1].numpy()
    assert ref.shape == (h, w) == (-(-130 // 4), -(-170 // 4))
    np.testing.assert_allclose(m.probs, ref, atol=TOL, rtol=0)
    assert m.mpp is None and m.level0_mpp is None


@pytest.mark.parametrize("model_mpp, tile", [(0.25, 192), (0.5, 96)], ids=["0.25um", "0.5um-resampled"])
def test_matches_patch_by_patch_on_real_image(shared, model_mpp, tile):
    folder = shared("monuseg", "images")
    path = sorted(folder.glob("*.png"))[0]
    slide = open_slide(path, mpp=0.25)
    assert slide.dimensions == (1000, 1000)
    model = _model(slide.read_region((0, 0), (400, 400)), mpp=model_mpp)
    m = dense_map(slide, model, tile=tile, batch_size=4)
    side = -(-round(1000 * 0.25 / model_mpp) // 4)
    assert m.shape == (side, side) and side % (tile // 4)  # ragged last tiles
    ii, jj = _sample(m.shape, 60, seed=2)
    np.testing.assert_allclose(m.probs[ii, jj], _patch_probs(slide, model, ii, jj, mpp=model_mpp), atol=TOL, rtol=0)


def test_zarr_output_equals_memory_and_reopens(tmp_path):
    zarr = pytest.importorskip("zarr")
    image = _image(150, 180, seed=4)
    model = _model(image, mpp=0.25)
    mem = dense_map(image, model, slide_mpp=0.25, tile=64)
    store = tmp_path / "map.zarr"
    z = dense_map(image, model, slide_mpp=0.25, tile=64, out=store)
    assert isinstance(z.probs, zarr.Array) and z.probs.chunks == (16, 16)
    np.testing.assert_array_equal(z.probs[:], mem.probs)
    assert not (tmp_path / ".map.zarr.partial").exists()
    again = DenseMap.open(store)
    assert again.shape == mem.shape and again.stride_px == mem.stride_px and again.origin_px == mem.origin_px
    assert again.mpp == pytest.approx(0.25) and again.level0_mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(again.probs[:], mem.probs)
    dense_map(image, model, slide_mpp=0.25, tile=64, out=store)  # an existing store is replaced
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="not a dense map"):
        dense_map(image, model, slide_mpp=0.25, tile=64, out=tmp_path / "notes")


def test_mask_skips_tiles_without_tissue():
    image = _image(200, 256, seed=5)
    slide = open_slide(image, mpp=0.25)
    model = _model(image, mpp=0.25)
    inside = np.zeros((20, 32), bool)
    inside[:, :8] = True  # tissue in the left 64 level-0 px only
    mask = Mask(inside, slide.dimensions, slide.mpp)
    full = dense_map(slide, model, tile=64)
    part = dense_map(slide, model, tile=64, mask=mask)
    # tile column k reads level-0 x in [64 k - 32, 64 k + 92): columns 0 and 1 touch the tissue
    np.testing.assert_array_equal(part.probs[:, :32], full.probs[:, :32])
    assert not part.probs[:, 32:].any() and full.probs[:, 32:].all()


def test_auto_mask_on_glass():
    image = np.full((260, 300, 3), 255, np.uint8)
    image[:, :100] = _image(260, 100, seed=6)  # tissue-like left part, glass elsewhere
    model = _model(image, mpp=None)
    m = dense_map(image, model, slide_mpp=2.0, tile=32, mask="auto")  # level 0: 2 um/px
    assert m.probs[:, :20].any() and not m.probs[:, 60:].any()


def test_stain_transform_is_applied_per_tile(monkeypatch):
    import histoscope.models.registry as registry

    image = _image(200, 220, seed=7)
    model = _model(image, mpp=0.25)
    calls = []

    def invert(config):
        def apply(tile):
            calls.append(tile.shape)
            return 255 - tile

        return apply

    monkeypatch.setattr(registry, "stain_transform", invert)
    stained = dense_map(image, model, slide_mpp=0.25, tile=64)
    assert calls and all(c == (124, 124, 3) for c in calls)
    monkeypatch.undo()
    plain = dense_map(255 - image, model, slide_mpp=0.25, tile=64)
    # the padding (white glass) is transformed too, so compare patches inside the image
    np.testing.assert_allclose(stained.probs[8:-8, 8:-8], plain.probs[8:-8, 8:-8], atol=TOL, rtol=0)


def test_path_input_geometry_and_helpers(tmp_path):
    image = _image(120, 160, seed=8)
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    model = _model(image, mpp=0.5)
    model.train()
    m = dense_map(path, model, slide_mpp=0.25, tile=32, verbose=True)
    assert model.training  # the caller's mode is restored
    assert m.shape == (15, 20) and m.stride_px == 8.0 and m.origin_px == (0.0, 0.0)
    assert m.to_level0(2, 3) == (24.0, 16.0)
    assert m.from_level0(24.0, 16.0) == (2, 3) and m.from_level0(27.9, 12.1) == (2, 3)
    i, j = np.meshgrid(np.arange(15), np.arange(20), indexing="ij")
    x, y = m.to_level0(i, j)
    ri, rj = m.from_level0(x + 3.0, y - 3.0)
    np.testing.assert_array_equal(ri, i)
    np.testing.assert_array_equal(rj, j)


def test_errors():
    image = _image(100, 100)
    model = _model(image, mpp=None)
    with pytest.raises(ValueError, match="multiple of the model's stride 4, got 30"):
        dense_map(image, model, tile=30)
    with pytest.raises(ValueError, match="multiple"):
        dense_map(image, model, tile=0)
    with pytest.raises(ValueError, match="channel"):
        dense_map(image, model, channel=2)
    with pytest.raises(TypeError, match="mask"):
        dense_map(image, model, mask=np.ones((10, 10), bool))
    patchwise = create_model("small_cnn", num_classes=2, input_size=64)
    with pytest.raises(TypeError, match=type(patchwise).__name__):
        dense_map(image, patchwise)
    from histoscope.exceptions import MppUnavailableError

    with pytest.raises(MppUnavailableError):
        dense_map(image, _model(image, mpp=0.5))  # the array's resolution is unknown

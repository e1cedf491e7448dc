"""The model registry: every model builds offline, maps (B, 3, S, S) to (B, K), splits into
forward_features / forward_head; configs validate and round-trip; local weights load exactly,
skip a resized classifier, and bad files give a clear error; Inception-v3's auxiliary head."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
import torch

from histoscope.models import ModelConfig, create_model, file_sha256, list_models, load_weights

ARCHS = ["densenet121", "inception_v3", "resnet50", "small_cnn"]
#: Registered models with their own tests (two-class detectors): tests/models/test_mitosis_net.py, tests/models/test_rcnn.py.
OTHER = ["mitos_rcnn", "mitosis_cnn", "phh3_cnn"]
#: Smallest convenient input per architecture (Inception-v3 runs from 75 px).
SIZES = {"small_cnn": 32, "resnet50": 32, "densenet121": 32, "inception_v3": 75}


class NetworkUsed(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkUsed(f"network access attempted: {args[:2]}")


@pytest.fixture(scope="module")
def models():
    """Every registered classifier, built once (eval mode, 3 classes), with all network access refused."""
    import torchvision.models._api as tv_api

    built = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "load_state_dict_from_url", _refuse)
        mp.setattr(torch.hub, "download_url_to_file", _refuse)
        mp.setattr(tv_api, "load_state_dict_from_url", _refuse)
        mp.setattr(urllib.request, "urlopen", _refuse)
        mp.setattr(socket.socket, "connect", _refuse)
        for name in ARCHS:
            torch.manual_seed(0)
            built[name] = create_model(name, num_classes=3, classes=["a", "b", "c"], input_size=SIZES[name]).eval()
    return built


def _small(num_classes: int = 3, **kw) -> torch.nn.Module:
    torch.manual_seed(kw.pop("seed", 0))
    return create_model("small_cnn", num_classes=num_classes, input_size=32, **kw).eval()


# --------------------------------------------------------------------------- registry


def test_list_models_has_the_papers_networks_and_the_small_default():
    assert list_models() == sorted(ARCHS + OTHER)


def test_every_model_builds_offline_with_its_config(models):
    assert sorted(models) == ARCHS
    for name, m in models.items():
        assert isinstance(m.config, ModelConfig)
        assert m.config.arch == name and m.config.num_classes == 3 and m.config.classes == ["a", "b", "c"]
        assert m.config.input_size == SIZES[name]


@pytest.mark.parametrize("name", ARCHS)
def test_forward_shape_and_split_into_features_and_head(models, name):
    m, s = models[name], SIZES[name]
    x = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = m(x)
        feats = m.forward_features(x)
        split = m.forward_head(feats)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert feats.ndim == 4 and feats.shape[0] == 2
    assert feats.shape[1] == m.get_classifier().in_features
    assert m.get_classifier().out_features == 3
    torch.testing.assert_close(split, logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name",
    [
        "densenet121",
        "inception_v3",
        "resnet50",
        "small_cnn",
    ],
)
def test_config_describes_the_normalisation_the_model_applies(models, name):
    m, s = models[name], SIZES[name]
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(m.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(m.normalize(x), (x - mean) / std)


def test_models_take_inputs_in_0_1_and_reject_other_layouts(models):
    m = models["small_cnn"]
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 32, 32, 3\)"):
        m(torch.rand(2, 32, 32, 3))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="resnet18") as info:
        create_model("resnet18", num_classes=2)
    for name in ARCHS:
        assert name in str(info.value)


def test_default_input_sizes():
    assert create_model("small_cnn", num_classes=2).config.input_size == 64


def test_inception_needs_75_px():
    with pytest.raises(ValueError, match="75.*74"):
        create_model("inception_v3", num_classes=2, input_size=74)


# --------------------------------------------------------------------------- ModelConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes must be >= 1, got 0"),
        ({"num_classes": 3, "classes": ["a", "b"]}, "2 class names for 3 classes"),
        ({"num_classes": 2, "input_size": 4}, "input_size must be >= 8, got 4"),
        ({"num_classes": 2, "mpp": -0.5}, "mpp"),
    ],
)
def test_model_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(arch="small_cnn", **kwargs)


def test_model_config_defaults_class_names_and_round_trips_through_json():
    cfg = ModelConfig(arch="small_cnn", num_classes=3)
    assert cfg.classes == ["0", "1", "2"]
    cfg = ModelConfig(arch="small_cnn", num_classes=2, classes=["benign", "malignant"], input_size=96, mpp=1.24, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), arch_kwargs={"width": 8})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["mean"] == [0.1, 0.2, 0.3] and d["std"] == [0.4, 0.5, 0.6]
    back = ModelConfig.from_dict(d)
    assert back == cfg
    assert isinstance(back.mean, tuple) and isinstance(back.std, tuple)
    # configs saved before arch_kwargs existed still load
    old = {k: v for k, v in d.items() if k != "arch_kwargs"}
    assert ModelConfig.from_dict(old).arch_kwargs == {}


def test_config_rebuilds_the_same_model():
    torch.manual_seed(0)
    m = create_model("small_cnn", num_classes=2, input_size=32, width=8, dropout=0.0)
    assert m.config.arch_kwargs == {"width": 8, "dropout": 0.0}
    again = create_model(m.config.arch, **m.config.build_kwargs())
    assert again.config == m.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


# --------------------------------------------------------------------------- weights


def test_weights_load_a_saved_state_dict_exactly(tmp_path):
    src = _small(seed=1)
    path = tmp_path / "small.pt"
    torch.save(src.state_dict(), path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(2)  # a different initialisation, which the weights must overwrite
    loaded = create_model("small_cnn", num_classes=3, input_size=32, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_weights_accept_a_histoscope_checkpoint(tmp_path):
    src = _small(seed=1)
    path = tmp_path / "best.pt"
    torch.save({"model": src.state_dict(), "config": src.config.to_dict(), "epoch": 3}, path)
    dst = _small(seed=2)
    assert load_weights(dst, path) == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_weights_with_another_class_count_skip_the_classifier_only(tmp_path):
    src = _small(num_classes=3, seed=1)
    path = tmp_path / "three.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(5)
    fresh = create_model("small_cnn", num_classes=5, input_size=32)
    torch.manual_seed(5)
    dst = create_model("small_cnn", num_classes=5, input_size=32, weights=path)
    for k, v in dst.state_dict().items():
        if k.startswith("fc."):  # left as initialised
            assert torch.equal(v, fresh.state_dict()[k]), k
        else:
            assert torch.equal(v, src.state_dict()[k]), k
    assert dst.get_classifier().out_features == 5
    # load_weights names what it skipped
    assert sorted(load_weights(_small(num_classes=5), path, strict=False)) == ["fc.bias", "fc.weight"]
    with pytest.raises(ValueError, match="three.pt.*fc.weight"):
        load_weights(_small(num_classes=5), path, strict=True)


def test_create_model_reports_the_skipped_classifier(tmp_path, caplog):
    path = tmp_path / "three.pt"
    torch.save(_small(num_classes=3).state_dict(), path)
    with caplog.at_level("DEBUG"):
        create_model("small_cnn", num_classes=5, input_size=32, weights=path)
    assert "fc.weight" in caplog.text


def test_weights_of_another_architecture_are_refused(tmp_path, models):
    path = tmp_path / "densenet.pt"
    torch.save(models["densenet121"].state_dict(), path)
    with pytest.raises(ValueError, match="densenet.pt"):
        create_model("small_cnn", num_classes=3, input_size=32, weights=path)


def test_a_file_that_is_not_weights_gives_a_clear_error(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("these are not weights\n")
    with pytest.raises(ValueError, match=r"notes\.pt: not a PyTorch weights file"):
        create_model("small_cnn", num_classes=2, input_size=32, weights=bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_model("small_cnn", num_classes=2, input_size=32, weights=tmp_path / "missing.pt")


@pytest.mark.parametrize("payload", [torch.zeros(3), [torch.zeros(1)]], ids=["tensor", "list"])
def test_a_torch_file_that_is_not_a_state_dict_gives_a_clear_error(tmp_path, payload):
    bad = tmp_path / "tensor.pt"
    torch.save(payload, bad)
    with pytest.raises(ValueError, match=r"tensor\.pt"):
        create_model("small_cnn", num_classes=2, input_size=32, weights=bad)


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "w.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB: several chunks
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- Inception-v3


def test_inception_aux_head_only_from_299_px(models):
    small = models["inception_v3"]  # 75 px
    assert small.features.AuxLogits is None
    small.train()
    try:
        x = torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(4))
        small(x)
        assert small.aux_logits() is None
    finally:
        small.eval()

    torch.manual_seed(0)
    big = create_model("inception_v3", num_classes=3)
    assert big.config.input_size == 299 and big.features.AuxLogits is not None
    big.train()
    logits = big(torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(5)))
    assert logits.shape == (2, 3)
    assert big.aux_logits() is not None and big.aux_logits().shape == (2, 3)
    assert big.features._owner[0] is big


def test_inception_can_leave_the_aux_head_out_at_299():
    torch.manual_seed(0)
    m = create_model("inception_v3", num_classes=2, aux_logits=False)
    assert m.config.input_size == 299 and m.features.AuxLogits is None

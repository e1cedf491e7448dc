"""NIC patch encoders (histoscope.models.nic): shapes, files, bundled names, safety."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from histoscope.models import nic
from histoscope.models.nic import (
    ENCODER_FORMAT,
    ENCODER_KINDS,
    BiGANEncoder,
    ContrastiveEncoder,
    MeanRGBEncoder,
    PatchEncoder,
    SupervisedEncoder,
    VAEEncoder,
    create_encoder,
    load_encoder,
    save_encoder,
)
from histoscope.models.registry import create_model, file_sha256

LEARNED = ("vae", "contrastive", "bigan")


def _small(kind: str, P: int = 8, C: int = 16, seed: int = 0) -> PatchEncoder:
    torch.manual_seed(seed)
    return create_encoder(kind, code_size=C, patch_size=P, width=8).eval()


@pytest.mark.parametrize("P", [8, 128])
@pytest.mark.parametrize("kind", LEARNED)
@torch.no_grad()
def test_learned_encoders_shapes(kind, P):
    enc = _small(kind, P, C=24)
    x = torch.rand(3, 3, P, P)
    z = enc.encode(x)
    assert z.shape == (3, 24) and z.dtype == torch.float32
    assert torch.equal(enc(x), z)
    assert enc.trunk.out_side <= 4 and enc.trunk.sizes[-2] > 4  # stride-2 convs until the map is <= 4 px
    assert (enc.code_size, enc.patch_size, enc.mpp) == (24, P, 0.5)
    assert enc.config["kind"] == kind
    json.dumps(enc.config)  # JSON-able
    if kind == "vae":
        recon, mu, logvar = enc.forward_train(x)
        assert recon.shape == x.shape and mu.shape == logvar.shape == (3, 24)
        assert 0 <= float(recon.min()) and float(recon.max()) <= 1
        assert torch.equal(mu, z)  # the code is the posterior mean
    elif kind == "bigan":
        g = enc.generate(torch.randn(3, 24))
        assert g.shape == x.shape and 0 <= float(g.min()) and float(g.max()) <= 1
        assert enc.discriminate(x, z).shape == (3,)
    else:
        logit = enc.forward_pair(x, x.flip(0))
        assert logit.shape == (3,)
        assert torch.allclose(enc.pair_logit(z, z.flip(0)), enc.pair_logit(z.flip(0), z))  # symmetric head


@pytest.mark.parametrize("P", [5, 12, 96])
def test_decoder_mirrors_odd_and_non_power_of_two_sizes(P):
    enc = _small("vae", P)
    assert enc.decode(torch.zeros(2, 16)).shape == (2, 3, P, P)


def test_encode_is_deterministic_in_eval_mode():
    enc = _small("vae", 8)
    x = torch.rand(4, 3, 8, 8)
    a, b = enc.encode(x), enc.encode(x)
    assert torch.equal(a, b)
    r1, _, _ = enc.forward_train(x, generator=torch.Generator().manual_seed(1))
    r2, _, _ = enc.forward_train(x, generator=torch.Generator().manual_seed(1))
    r3, _, _ = enc.forward_train(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)  # sampling only in forward_train


def test_mean_rgb_is_the_mean_colour_at_any_size():
    enc = create_encoder("mean_rgb")
    assert isinstance(enc, MeanRGBEncoder) and enc.code_size == 3 and not list(enc.parameters())
    for P in (8, 33):
        x = torch.rand(2, 3, P, P)
        assert torch.allclose(enc.encode(x), x.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="code_size 3"):
        create_encoder("mean_rgb", code_size=16)


def test_model_size_is_cpu_friendly():
    enc = create_encoder("vae")  # defaults: P=128, C=128, width 32
    n_encoder = sum(p.numel() for m in (enc.trunk, enc.mu) for p in m.parameters())
    assert 2e5 < n_encoder < 1.5e6


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown encoder kind 'nope'.*vae"):
        create_encoder("nope")
    with pytest.raises(ValueError, match="patch_size"):
        create_encoder("vae", patch_size=2)
    enc = _small("contrastive", 8)
    with pytest.raises(ValueError, match="8 x 8 patches, got 16 x 16"):
        enc.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, P, P\)"):
        enc.encode(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        enc.encode_images(np.zeros((2, 8, 8, 3), np.float32))


def test_encode_images_matches_encode():
    enc = _small("bigan", 8)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    codes = enc.encode_images(imgs, batch_size=2)
    ref = enc.encode(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255).detach().numpy()
    assert codes.dtype == np.float32 and codes.shape == (5, 16)
    np.testing.assert_allclose(codes, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", (*LEARNED, "mean_rgb"))
def test_save_load_round_trip_gives_identical_codes(kind, tmp_path):
    enc = _small(kind, 8) if kind != "mean_rgb" else create_encoder("mean_rgb", patch_size=8)
    path = save_encoder(enc, tmp_path / f"{kind}.pt")
    assert not list(tmp_path.glob(".*partial"))  # written atomically
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == ENCODER_FORMAT and payload["config"]["kind"] == kind
    back = load_encoder(path)
    assert type(back) is type(enc) and back.config == enc.config and not back.training
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(back.encode(x), enc.encode(x))


def test_supervised_encoder_round_trip(tmp_path):
    torch.manual_seed(0)
    clf = create_model("small_cnn", num_classes=3, input_size=8, mpp=1.0, width=4).eval()
    enc = SupervisedEncoder(clf).eval()
    assert (enc.code_size, enc.patch_size, enc.mpp) == (32, 8, 1.0)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(enc.encode(x), clf.forward_features(x).mean(dim=(2, 3)))
    back = load_encoder(save_encoder(enc, tmp_path / "sup.pt"))
    assert isinstance(back, SupervisedEncoder) and torch.equal(back.encode(x), enc.encode(x))


def test_card_beside_a_file_is_written_and_checked(tmp_path):
    enc = _small("vae", 8)
    path = save_encoder(enc, tmp_path / "my_vae.pt", card={"seed": 3})
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(path) and card["config"] == enc.config and card["seed"] == 3
    assert load_encoder(path).card["seed"] == 3
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"my_vae\.pt: checksum .* does not match"):
        load_encoder(path)


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """An empty models/weights folder for the bundled encoders."""
    monkeypatch.setattr(nic, "_bundled_dir", lambda: tmp_path)
    return tmp_path


def test_bundled_name_loads_after_checksum_and_refuses_a_tampered_file(bundled):
    enc = _small("contrastive", 8)
    path = save_encoder(enc, bundled / "nic_contrastive.pt", card={"command": "test"})
    x = torch.rand(2, 3, 8, 8)
    for name in ("contrastive", "nic_contrastive"):
        assert torch.equal(load_encoder(name).encode(x), enc.encode(x))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"nic_contrastive\.pt: checksum .* does not match its card nic_contrastive\.json"):
        load_encoder("contrastive")


def test_bundled_bare_state_dict_with_card_config(bundled):
    """A bundle may also be a bare state dict whose config is in the card (like the classifiers)."""
    enc = _small("bigan", 8)
    p = bundled / "nic_bigan.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in enc.state_dict().items()}, p)
    (bundled / "nic_bigan.json").write_text(json.dumps({"config": enc.config, "sha256": file_sha256(p)}))
    back = load_encoder("bigan")
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(back.encode(x), enc.encode(x), atol=0.05)


def test_missing_bundles_and_files(bundled, tmp_path):
    with pytest.raises(ValueError, match=r"no bundled vae encoder: .*nic_vae\.json"):
        load_encoder("vae")
    (bundled / "nic_bigan.json").write_text(json.dumps({"sha256": "0" * 64, "config": {}}))
    with pytest.raises(ValueError, match=r"nic_bigan\.pt: encoder weights missing"):
        load_encoder("bigan")
    with pytest.raises(ValueError, match=r"nowhere\.pt: no such encoder file"):
        load_encoder(tmp_path / "nowhere.pt")
    assert isinstance(load_encoder("mean_rgb"), MeanRGBEncoder)  # needs no file


class _Payload:
    """Unpickling this runs code: weights_only=True must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "was_executed"
    p = tmp_path / "evil.pt"
    torch.save({"format": ENCODER_FORMAT, "config": {"kind": "mean_rgb"}, "x": _Payload(str(marker))}, p)
    with pytest.raises(ValueError, match=r"evil\.pt: not a histoscope encoder file, or not loadable safely with weights_only=True"):
        load_encoder(p)
    assert not marker.exists()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled module
    with pytest.raises(ValueError, match=r"module\.pt: .*weights_only=True"):
        load_encoder(tmp_path / "module.pt")


def test_wrong_format_files_are_refused_naming_the_file(tmp_path):
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match=r"text\.pt: not a histoscope encoder file"):
        load_encoder(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a histoscope encoder file \(expected a dict with format"):
        load_encoder(tmp_path / "other.pt")
    enc = _small("vae", 8)
    p = save_encoder(enc, tmp_path / "v.pt")
    payload = torch.load(p, weights_only=True)
    torch.save({**payload, "format": "histoscope-nic-encoder/99"}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"future\.pt: unsupported encoder format"):
        load_encoder(tmp_path / "future.pt")
    torch.save({**payload, "config": {**payload["config"], "width": 16}}, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match=r"mismatch\.pt: weights do not fit a vae encoder"):
        load_encoder(tmp_path / "mismatch.pt")
    torch.save({**payload, "config": {**payload["config"], "kind": "zip"}}, tmp_path / "kind.pt")
    with pytest.raises(ValueError, match=r"kind\.pt: encoder config has kind 'zip'"):
        load_encoder(tmp_path / "kind.pt")


def test_supervised_name_is_the_bundled_colorectal_grader_features(bundled):
    from histoscope.models.pretrained import load_pretrained

    enc = load_encoder("supervised")
    grader = load_pretrained("colorectal_grader")
    assert isinstance(enc, SupervisedEncoder) and not enc.training
    assert (enc.patch_size, enc.mpp) == (grader.config.input_size, grader.config.mpp) == (96, 2.48)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = grader.forward_features(x).mean(dim=(2, 3))
        z = enc.encode(x)
    assert z.shape == (2, enc.code_size) == (2, ref.shape[1])
    torch.testing.assert_close(z, ref)
    assert enc.preprocess() is not None  # the grader's Macenko stain normalisation comes along


def test_kinds_constant_matches_classes():
    assert ENCODER_KINDS == ("mean_rgb", "vae", "contrastive", "bigan", "supervised")
    for cls in (MeanRGBEncoder, VAEEncoder, ContrastiveEncoder, BiGANEncoder, SupervisedEncoder):
        assert cls.kind in ENCODER_KINDS


@pytest.mark.parametrize("kind", ["contrastive", "vae", "bigan"])
def test_the_bundled_encoders_load_checked_and_encode_real_tissue(kind, cmu_svs):
    """The committed weights: checksum verified, card complete, codes informative on real patches."""
    from histoscope.models.nic import bundled_encoder_path, load_encoder
    from histoscope.slide import open_slide

    path = bundled_encoder_path(kind)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(path) and "histoscope nic train-encoder" in card["command"]
    assert path.stat().st_size < 5_000_000  # small enough to commit
    enc = load_encoder(kind)
    assert (enc.kind, enc.code_size, enc.patch_size, enc.mpp) == (kind, 128, 128, 0.5)
    with open_slide(cmu_svs) as slide:
        patches = np.stack([slide.read_region((x, y), (128, 128), mpp=0.5) for x, y in [(700, 900), (1000, 1400), (1200, 2200), (60, 60)]])
    codes = enc.encode_images(patches)
    assert codes.shape == (4, 128) and np.isfinite(codes).all()
    np.testing.assert_array_equal(codes, enc.encode_images(patches))  # deterministic
    d = np.linalg.norm(codes[:, None] - codes[None], axis=2)
    assert d[np.triu_indices(4, 1)].min() > 1e-3  # distinct patches, distinct codes

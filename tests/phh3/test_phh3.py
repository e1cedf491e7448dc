"""PHH3 label transfer: DAB candidates and the registration of restained pairs, on real images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from skimage import data

from histoscope.cli.main import cli
from histoscope.phh3 import RegistrationError, dab_candidates, global_shift, local_shift, register_points
from histoscope.stain.augmentation import augment_hed
from histoscope.stain.deconvolution import hed_to_rgb, rgb_to_dab, rgb_to_hed


def ihc() -> np.ndarray:
    return data.immunohistochemistry()


def shifted(img: np.ndarray, s: tuple[float, float], *, seed: int = 0, blur: float = 1.0, noise: float = 4.0, stain: float = 0.1) -> np.ndarray:
    """``img`` moved so that a point at p in the result lies at p + s in ``img``, then blurred, noised, restained."""
    out = ndimage.shift(img.astype(float), (-s[0], -s[1], 0), order=3, mode="reflect")
    out = ndimage.gaussian_filter(out, (blur, blur, 0)) + np.random.default_rng(seed).normal(0, noise, out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    return augment_hed(out, sigma=stain, rng=seed) if stain else out


def test_candidates_are_dab_positive_objects_of_nucleus_size():
    img = ihc()
    c = dab_candidates(img, slide_mpp=0.5)
    assert 5 <= len(c) <= 40
    dab = np.asarray(rgb_to_dab(img))
    # every candidate sits on stain well above the image's typical DAB level
    at = dab[c["y"].round().astype(int).clip(0, 511), c["x"].round().astype(int).clip(0, 511)]
    assert np.median(at) > np.percentile(dab, 90)
    assert c["area_um2"].between(12, 300).all() and (c["mean_dab"] > 0.9).all()
    # a lower threshold finds more; nothing is found on a blank image
    assert len(dab_candidates(img, slide_mpp=0.5, threshold=0.7)) > len(c)
    assert dab_candidates(np.full((300, 300, 3), 245, np.uint8), slide_mpp=0.5).empty


def test_tile_by_tile_candidates_equal_one_tile():
    img = ihc()
    whole = dab_candidates(img, slide_mpp=0.5, threshold=0.7, tile=1024)
    tiled = dab_candidates(img, slide_mpp=0.5, threshold=0.7, tile=96)  # many tiles, objects cross tile borders
    assert len(tiled) == len(whole)
    assert np.allclose(tiled[["x", "y", "area_px"]].to_numpy(), whole[["x", "y", "area_px"]].to_numpy(), atol=1e-6)


@pytest.mark.parametrize("s", [(6.0, -9.0), (-13.4, 4.7), (0.6, 0.3)])
def test_global_and_local_shift_recover_known_shifts_on_real_ihc(s):
    img = ihc()
    mov = shifted(img, s, seed=int(abs(s[0]) * 10))
    g = global_shift(img, mov, tile=192)
    assert np.hypot(*(g.shift - s)) < 0.5 and g.pair_shifts.shape == (10, 2)
    loc = local_shift(img, mov, (300.0, 200.0), prior=g.shift)
    assert np.hypot(*(loc - s)) < 0.5


def test_registration_on_real_he_with_stain_change(shared):
    img = np.asarray(Image.open(shared("stain_targets", "histolab", "medium-nuclei-score-level0.png")).convert("RGB"))
    rng = np.random.default_rng(1)
    errors = []
    for k in range(5):
        s = tuple(rng.uniform(-25, 25, 2))
        mov = shifted(img, s, seed=k, stain=0.15)
        g = global_shift(img, mov, seed=k)
        errors.append(np.hypot(*(g.shift - s)))
    assert max(errors) < 1.0


def test_haematoxylin_only_rendering_registers_to_the_he_original():
    he = ihc()
    hed = np.asarray(rgb_to_hed(he))
    h_only = np.asarray(hed_to_rgb(np.stack([hed[..., 0], np.zeros_like(hed[..., 0]), np.zeros_like(hed[..., 0])], -1), dtype=np.uint8))
    s = (4.0, -7.0)
    mov = shifted(h_only, s, stain=0, noise=2)
    g = global_shift(he, mov, tile=192)
    assert np.hypot(*(g.shift - s)) < 1.0


def test_register_points_moves_candidates_into_the_fixed_image():
    img = ihc()
    s = (5.5, 8.25)
    mov = shifted(img, s, seed=3)
    pts = pd.DataFrame({"x": [100.0, 250.0, 400.0], "y": [120.0, 300.0, 420.0]})
    out, g = register_points(img, mov, pts, tile=192)
    assert np.allclose(out["x_fixed"] - out["x"], s[1], atol=0.5) and np.allclose(out["y_fixed"] - out["y"], s[0], atol=0.5)
    assert out["local_ok"].all()


def test_registration_errors_name_the_problem():
    img = ihc()
    with pytest.raises(RegistrationError, match="fixed: expected an RGB image"):
        global_shift(img[..., 0], img)
    with pytest.raises(RegistrationError, match="expected 8-bit RGB"):
        global_shift(img, img.astype(np.float32))
    with pytest.raises(RegistrationError, match="differ too much in size"):
        global_shift(img, img[:200, :200])
    with pytest.raises(RegistrationError, match="beyond the search window"):
        global_shift(img, shifted(img, (60.0, 0.0), stain=0), tile=192, max_shift=20)


def test_phh3_commands_write_candidates_labels_and_overlays(tmp_path):
    img = ihc()
    Image.fromarray(img).save(tmp_path / "phh3.png")
    Image.fromarray(shifted(img, (3.0, -5.0), seed=2)).save(tmp_path / "he.png")
    r = CliRunner().invoke(cli, ["phh3", "candidates", str(tmp_path / "phh3.png"), "--slide-mpp", "0.5", "--out", str(tmp_path / "c"), "--quiet"])
    assert r.exit_code == 0, r.output
    c = pd.read_csv(tmp_path / "c" / "candidates.csv")
    assert len(c) > 0 and (tmp_path / "c" / "candidates.geojson").exists() and (tmp_path / "c" / "overlay.png").exists()
    r = CliRunner().invoke(cli, ["phh3", "register", str(tmp_path / "he.png"), str(tmp_path / "phh3.png"), "--candidates", str(tmp_path / "c" / "candidates.csv"), "--tile", "192", "--out", str(tmp_path / "r"), "--quiet"])
    assert r.exit_code == 0, r.output
    lab = pd.read_csv(tmp_path / "r" / "labels.csv")
    # he.png(p) = phh3.png(p + (3, -5)): a PHH3 point q lies at q - (3, -5) on the H&E
    assert len(lab) == len(c) and np.allclose(lab["x_fixed"] - lab["x"], 5.0, atol=0.5) and np.allclose(lab["y_fixed"] - lab["y"], -3.0, atol=0.5)
    from histoscope.report.geojson import read_point_geojson

    gj = read_point_geojson(tmp_path / "r" / "labels.geojson")
    assert np.allclose(gj["x"].to_numpy(), lab["x_fixed"].to_numpy())
    Image.fromarray(img[:100, :100]).save(tmp_path / "small.png")
    r = CliRunner().invoke(cli, ["phh3", "register", str(tmp_path / "he.png"), str(tmp_path / "small.png"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "differ too much in size" in r.output


LABELS = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "phh3_ihc_candidate_labels.csv"


def test_majority_vote_keeps_agreed_samples():
    from histoscope.train.phh3 import majority_vote

    t = pd.DataFrame(
        {
            "id": [0, 1, 2, 3, 4],
            "observer_a": ["m", "m", "n", "m", np.nan],
            "observer_b": ["m", "n", "n", "m", "m"],
            "observer_c": ["m", "m", "m", "n", "m"],
            "observer_d": ["n", "n", "n", "n", "m"],
        }
    )
    v = majority_vote(t, min_agree=3)
    assert list(v["id"]) == [0, 2, 4] and list(v["label"]) == ["m", "n", "m"] and list(v["agree"]) == [3, 3, 3]
    assert list(majority_vote(t, min_agree=2)["id"]) == [0, 2, 4]  # 1 and 3 tie 2-2: no majority
    with pytest.raises(ValueError, match="min_agree must be in 1..4"):
        majority_vote(t, min_agree=5)
    with pytest.raises(ValueError, match="no observer columns"):
        majority_vote(t[["id"]])


def test_by_eye_labels_train_the_artifact_cnn_end_to_end(tmp_path):
    """The committed by-eye labels (tests/data/README.md) -> vote -> patch folder -> CNN1 -> phh3 label."""
    from histoscope.phh3 import write_patch_folder
    from histoscope.train.phh3 import majority_vote, train_candidate_cnn

    img = ihc()
    labels = pd.read_csv(LABELS)
    found = dab_candidates(img, slide_mpp=0.5, threshold=0.7)
    assert np.allclose(found[["x", "y"]].to_numpy(), labels[["x", "y"]].to_numpy(), atol=0.01)  # the labels still match the candidates
    agreed = majority_vote(labels, min_agree=2)
    assert len(agreed) == 56 and (agreed["label"] == "artifact").sum() == 12
    counts = write_patch_folder(img, agreed, tmp_path / "patches", size=80)
    assert counts == {"artifact": 12, "non-artifact": 44}
    res = train_candidate_cnn(tmp_path / "patches", task="artifact", size=64, width=0.125, epochs=4, batch_size=16, out_dir=tmp_path / "cnn1", verbose=False)
    m = res["metrics"]
    assert m["train"] + m["val"] == 56 and m["val"] == 14 and 0 <= m["val_accuracy"] <= 1
    assert (tmp_path / "cnn1" / "best.pt").exists()
    # the label command runs the whole transfer with the trained CNN1 as a filter
    Image.fromarray(img).save(tmp_path / "phh3.png")
    Image.fromarray(shifted(img, (2.0, 3.0), seed=5)).save(tmp_path / "he.png")
    r = CliRunner().invoke(cli, ["phh3", "label", str(tmp_path / "he.png"), str(tmp_path / "phh3.png"), "--slide-mpp", "0.5", "--threshold", "0.7", "--artifact-model", str(tmp_path / "cnn1" / "best.pt"), "--tile", "192", "--out", str(tmp_path / "lab"), "--quiet"])
    assert r.exit_code in (0, 2), r.output
    cand = pd.read_csv(tmp_path / "lab" / "candidates.csv")
    assert len(cand) == 59 and cand["p_artifact"].between(0, 1).all()
    if r.exit_code == 0:
        lab = pd.read_csv(tmp_path / "lab" / "labels.csv")
        assert len(lab) == int((cand["p_artifact"] < 0.5).sum())
        assert np.allclose(lab["x_fixed"] - lab["x"], -3.0, atol=0.5)


def test_local_shift_recovers_a_local_displacement_beyond_the_global_one():
    img = ihc()
    g_true, extra = np.array([4.0, -6.0]), np.array([2.6, -3.2])
    mov = shifted(img, tuple(g_true), stain=0, noise=2)
    local = shifted(img, tuple(g_true + extra), stain=0, noise=2)
    y0, x0 = 180, 220  # a 200 px region of the moving image moved further (tissue deformation)
    mov[y0 : y0 + 200, x0 : x0 + 200] = local[y0 : y0 + 200, x0 : x0 + 200]
    g = global_shift(img, mov, tile=192)
    assert np.hypot(*(g.shift - g_true)) < 1.0  # most tiles are outside the region
    at = (y0 + 100.0, x0 + 100.0)
    assert np.hypot(*(local_shift(img, mov, at, prior=g_true, size=128) - (g_true + extra))) < 1.0
    assert np.hypot(*(local_shift(img, mov, (60.0, 60.0), prior=g_true, size=96) - g_true)) < 1.0

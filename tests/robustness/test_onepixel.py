"""The differential-evolution one-pixel attack, its analyses, HTTP targets and the audit command."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from histoscope.cli.main import cli
from histoscope.robustness import CallableTarget, DEConfig, HTTPTarget, PixelScorer, as_target, attack_images, one_pixel_attack
from histoscope.robustness.analysis import chromatic_rmse, periodicity_table, position_heatmap, spatial_table, summary_table
from histoscope.serve import serve_in_thread



def real_patch(size: int = 64, y: int = 200, x: int = 260) -> np.ndarray:
    """A real stained-tissue crop from the image scikit-image ships (no ../shared needed)."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry()[y : y + size, x : x + size])

SPOT = (23, 41)  # (y, x) of the planted weakness


def planted(x: np.ndarray) -> np.ndarray:
    """A 'mitosis' score that only one pixel can move: high unless pixel SPOT turns green."""
    g = x[:, SPOT[0], SPOT[1], 1].astype(float) - x[:, SPOT[0], SPOT[1], 0]
    p = 0.8 - 0.7 * (g > 150)
    return np.stack([1 - p, p], 1)


def test_attack_finds_the_one_vulnerable_pixel_and_stops_early():
    t = CallableTarget(planted, classes=["normal", "mitosis"], name="planted")
    img = real_patch()
    r = one_pixel_attack(t, img, direction="decrease", config=DEConfig(popsize=400, max_generations=100), seed=1)
    assert r.success and r.applicable
    assert (r.y, r.x) == SPOT and r.g - r.r > 150
    assert r.original_score == pytest.approx(0.8) and r.best_score == pytest.approx(0.1)
    assert r.generations < 100 and r.queries == 1 + 400 * (r.generations + 1)
    assert r.predicted_before == "mitosis" and r.predicted_after == "normal"
    assert len(r.neighbours) == 8 and np.allclose(r.neighbour_mean, np.mean(r.neighbours, 0))
    # the 8 neighbours are the image's
    assert r.neighbours[0] == img[SPOT[0] - 1, SPOT[1] - 1].tolist()


def test_failed_attack_uses_the_whole_budget_and_reports_the_best_pixel():
    t = CallableTarget(lambda x: np.tile([0.1, 0.9], (len(x), 1)), classes=["normal", "mitosis"])
    r = one_pixel_attack(t, real_patch(), direction="decrease", config=DEConfig(popsize=20, max_generations=7), seed=0)
    assert not r.success and r.applicable and r.queries == 1 + 20 * 8 and r.generations == 7
    assert 0 <= r.x < 64 and 0 <= r.y < 64 and all(0 <= v <= 255 for v in (r.r, r.g, r.b))
    # an image already on the goal side is not attacked
    r = one_pixel_attack(t, real_patch(), direction="increase", criterion="decision", config=DEConfig(popsize=20, max_generations=7))
    assert not r.applicable and not r.success and r.queries == 1
    # the paper's criterion: an increase succeeds above 0.1
    low = CallableTarget(lambda x: np.tile([0.95, 0.05], (len(x), 1)))
    r = one_pixel_attack(low, real_patch(), direction="increase", criterion="paper", config=DEConfig(popsize=20, max_generations=3))
    assert r.applicable and not r.success


def test_attack_is_repeatable_with_a_seed_and_both_directions_move_the_real_model():
    t = as_target("mitosis_detector")
    img = real_patch()
    cfg = DEConfig(popsize=40, max_generations=4)
    a = one_pixel_attack(t, img, direction="decrease", config=cfg, seed=3)
    b = one_pixel_attack(t, img, direction="decrease", config=cfg, seed=3)
    assert (a.x, a.y, a.r, a.g, a.b, a.best_score) == (b.x, b.y, b.r, b.g, b.b, b.best_score)
    up = one_pixel_attack(t, img, direction="increase", config=cfg, seed=3, criterion=(0.0, 1.0))
    assert a.best_score <= a.original_score and up.best_score >= up.original_score
    # the incremental and plain scorers lead to the same attack
    c = one_pixel_attack(t, img, direction="decrease", config=cfg, seed=3, mode="plain")
    assert (c.x, c.y, c.r, c.g, c.b) == (a.x, a.y, a.r, a.g, a.b) and c.best_score == pytest.approx(a.best_score, abs=1e-5)


def test_multiclass_untargeted_and_targeted_attacks():
    def three(x):  # class 2 wins when pixel SPOT is bright blue, class 1 when it is bright red
        px = x[:, SPOT[0], SPOT[1]].astype(float)
        logits = np.stack([np.full(len(x), 2.0), (px[:, 0] - px[:, 2]) / 40, (px[:, 2] - px[:, 0]) / 40], 1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    t = CallableTarget(three, classes=["a", "b", "c"])
    img = real_patch()
    r = one_pixel_attack(t, img, direction="untargeted", config=DEConfig(popsize=200, max_generations=60), seed=0)
    assert r.success and r.predicted_before == "a" and r.predicted_after in ("b", "c") and (r.y, r.x) == SPOT
    r = one_pixel_attack(t, img, direction="targeted", target_class="c", config=DEConfig(popsize=200, max_generations=60), seed=0)
    assert r.success and r.predicted_after == "c" and r.b > r.r
    with pytest.raises(ValueError, match="targeted attack needs"):
        one_pixel_attack(t, img, direction="targeted")


def _table() -> pd.DataFrame:
    rows = []
    for i, (d, x, y, ok) in enumerate([("decrease", 2, 4, True), ("decrease", 3, 4, True), ("decrease", 6, 8, False), ("increase", 10, 12, True), ("increase", 1, 1, True)]):
        rows.append({"image": f"i{i}", "direction": d, "x": x, "y": y, "r": 10 * i, "g": 255, "b": 0, "nb_mean_r": 0, "nb_mean_g": 0, "nb_mean_b": 0, "success": ok, "applicable": True, "queries": 100, "score_change": -0.5 if d == "decrease" else 0.5, "target_class": "mitosis"})
    return pd.DataFrame(rows)


def test_analyses_match_their_definitions():
    t = _table()
    rmse = chromatic_rmse(t)
    expected = np.sqrt(((t[["r", "g", "b"]].to_numpy() / 255) ** 2).mean(1))
    assert np.allclose(rmse, expected)
    per = periodicity_table(t).set_index("direction")
    assert per.loc["decrease", "even/even"] == 1 and per.loc["decrease", "odd/even"] == 1 and per.loc["decrease", "n"] == 2
    assert per.loc["increase", "even/even"] == 1 and per.loc["increase", "odd/odd"] == 1
    assert per.loc["all", "even/even share"] == pytest.approx(2 / 4)
    assert periodicity_table(t, successful_only=False).set_index("direction").loc["decrease", "n"] == 3
    sp = spatial_table(t).set_index(["direction", "statistic"])
    assert sp.loc[("decrease", "mean"), "x"] == pytest.approx(2.5)
    assert sp.loc[("increase", "median"), "y"] == pytest.approx(6.5)
    assert sp.loc[("decrease", "sd"), "r"] == pytest.approx(np.std([0, 10], ddof=1))
    heat = position_heatmap(t, (16, 16))
    assert heat.sum() == 4 and heat[4, 2] == 1 and heat[8, 6] == 0
    s = summary_table(t).set_index("direction")
    assert s.loc["decrease", "success rate"] == pytest.approx(2 / 3) and s.loc["increase", "successful"] == 2


def test_http_target_scores_like_the_local_model_and_can_be_attacked():
    server, url = serve_in_thread("mitosis_detector")
    try:
        remote, local = HTTPTarget(url), as_target("mitosis_detector")
        assert remote.classes == ["non-mitosis", "mitosis"] and remote.input_size == 64
        img = real_patch()
        x = torch.from_numpy(np.stack([img, real_patch(y=10, x=10)])).permute(0, 3, 1, 2).float() / 255
        assert torch.allclose(remote(x), local(x), atol=1e-6)
        assert PixelScorer(remote, img).mode == "plain"
        r = one_pixel_attack(remote, img, direction="increase", config=DEConfig(popsize=30, max_generations=2), seed=0)
        assert r.queries == 1 + 30 * 3 == remote.queries - 2 - 1
        # malformed requests get a 400 that names the problem
        buf = io.BytesIO()
        np.save(buf, np.zeros((2, 64, 64), np.uint8))
        req = urllib.request.Request(f"{url}/predict", data=buf.getvalue(), headers={"Content-Type": "application/x-npy"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 400 and "(N, H, W, 3) uint8" in json.loads(err.value.read())["error"]
        req = urllib.request.Request(f"{url}/predict", data=b"not numpy", headers={"Content-Type": "application/x-npy"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert "not a .npy array" in json.loads(err.value.read())["error"]
        with pytest.raises(ConnectionError, match="HTTP 400"):
            remote._post(np.zeros((1, 32, 32, 3), np.uint8))  # the server's model takes 64 px
    finally:
        server.shutdown()
    with pytest.raises(ConnectionError, match="cannot reach the model server"):
        HTTPTarget(url)


def test_attack_images_table_has_one_row_per_attack():
    t = CallableTarget(planted, classes=["normal", "mitosis"])
    imgs = [real_patch(), real_patch(y=50, x=50)]
    tab = attack_images(t, imgs, ["a", "b"], direction=["decrease", "increase"], config=DEConfig(popsize=50, max_generations=3), verbose=False)
    assert list(tab["image"]) == ["a", "b"] and list(tab["direction"]) == ["decrease", "increase"]
    assert {"nb7_b", "nb_mean_g", "score_change", "queries", "success"} <= set(tab.columns)
    with pytest.raises(ValueError, match="2 images but 1 names"):
        attack_images(t, imgs, ["a"], verbose=False)


def test_audit_command_writes_report_csv_and_maps(tmp_path):
    paths = []
    for i, (y, x) in enumerate([(200, 260), (330, 120)]):
        p = tmp_path / f"patch{i}.png"
        Image.fromarray(real_patch(size=80, y=y, x=x)).save(p)  # centre-cropped to 64
        paths.append(str(p))
    out = tmp_path / "audit"
    res = CliRunner().invoke(cli, ["audit", "one-pixel", *paths, "--popsize", "24", "--generations", "2", "--maps", "1", "--colour-step", "255", "--direction", "both", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    tab = pd.read_csv(out / "attacks.csv")
    assert len(tab) == 4 and set(tab["direction"]) == {"decrease", "increase"}
    assert (tab["queries"][tab["applicable"]] == 1 + 24 * 3).all() or (tab["success"]).any()
    html = (out / "report.html").read_text()
    assert "Spatial statistics" in html and "Periodicity" in html and "data:image/png;base64" in html
    maps = list((out / "maps").glob("*.npz"))
    assert len(maps) == 1 and not list((out / "maps").glob("checkpoint_*"))
    from histoscope.robustness.confidence import ConfidenceMaps

    m = ConfidenceMaps.load(maps[0])
    assert m.done.all() and m.n_colours == 8 and (m.min <= m.max).all()
    small = tmp_path / "small.png"
    Image.fromarray(real_patch(size=40)).save(small)
    res = CliRunner().invoke(cli, ["audit", "one-pixel", str(small), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "small.png: 40 x 40 px is smaller than the 64 x 64" in res.output


def test_map_parity_measures_a_checkerboard():
    from histoscope.robustness.analysis import map_parity

    yy, xx = np.mgrid[0:8, 0:10]
    mn = np.zeros((8, 10))
    mx = np.where((yy % 2 == 0) & (xx % 2 == 0), 3.0, 1.0)
    p = map_parity(mn, mx)
    assert p["mean range even/even"] == 3 and p["mean range odd/odd"] == 1 and p["even/even to others"] == pytest.approx(3.0)
    assert map_parity(mn, np.ones((8, 10)))["even/even to others"] == pytest.approx(1.0)

"""The NIC slide CNN on compressed slides: learning a planted signal, the D4 group and
crop geometry, tissue-density crop sampling, test-time averaging, the fold rotation,
metrics against scikit-learn / scipy, Grad-CAM localisation, save/load and seeds.

Data: generated embedding grids of Gaussian noise inside a tissue square (zero tissue
and zero codes outside); positive slides carry a small square of one fixed code vector.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import chisquare, spearmanr
from sklearn.metrics import accuracy_score, jaccard_score, roc_auc_score

from histoscope.nic import (
    D4,
    SlideCNN,
    assign_folds,
    crop,
    cross_validate,
    d4,
    d4_inverse,
    fit_slide_model,
    fold_rotation,
    gradcam_overlay,
    jaccard,
    load_slide_model,
    postprocess,
    predict_slides,
    sample_crop_origins,
    save_slide_model,
    slide_metrics,
    slide_gradcam,
)

H, C, R, SQ = 24, 8, 16, 4
TISSUE = (slice(3, 21), slice(3, 21))
CODE = np.random.default_rng(123).choice([-2.0, 2.0], C).astype(np.float32)
FAST = dict(crop=R, width=16, depth=3, batch_size=16, lr=5e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def planted(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, int, np.ndarray]]:
    """``(emb, tissue, label, square_mask)``; odd slides are positive and hold the code square."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tissue = np.zeros((H, H), np.float32)
        tissue[TISSUE] = 1.0
        emb = rng.normal(size=(H, H, C)).astype(np.float32) * tissue[..., None]
        mask = np.zeros((H, H), bool)
        label = i % 2
        if label:
            r, c = rng.integers(5, 21 - 2 - SQ, 2)
            emb[r : r + SQ, c : c + SQ] = CODE
            mask[r : r + SQ, c : c + SQ] = True
        out.append((emb, tissue, label, mask))
    return out


@pytest.fixture(scope="module")
def data():
    return {"train": planted(40, 0), "val": planted(12, 1), "test": planted(24, 2)}


@pytest.fixture(scope="module")
def trained(data):
    model, history = fit_slide_model(
        [s[:3] for s in data["train"]], [s[:3] for s in data["val"]],
        epochs=6, crops_per_epoch=160, val_crops=4, seed=0, **FAST,
    )
    return model, history


# --------------------------------------------------------------------------- learning


def test_model_learns_planted_signal(data, trained):
    model, history = trained
    test = data["test"]
    y = np.array([s[2] for s in test])
    # T = 16 test crops: a crop can miss the small square, their average does not
    p = predict_slides(model, [s[:2] for s in test], crop=R, n_crops=16)
    assert p.shape == (len(test), 2) and np.allclose(p.sum(1), 1.0)
    assert roc_auc_score(y, p[:, 1]) >= 0.9
    assert accuracy_score(y, p.argmax(1)) >= 0.8
    assert slide_metrics(y, p)["auc"] == roc_auc_score(y, p[:, 1])
    # model selection kept the best validation epoch
    assert history["best_epoch"] in history["epoch"]
    best = history["epoch"].index(history["best_epoch"])
    assert history["val_metric"][best] == max(history["val_metric"])
    assert history["crops_seen"] == 6 * 160


def test_slide_model_runs_on_any_grid_size_and_checks_channels():
    net = SlideCNN(C, 3, width=8, depth=3).eval()
    for shape in [(1, 1), (5, 37), (40, 9)]:
        assert net(torch.zeros(2, C, *shape)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        net(torch.zeros(1, C + 1, 8, 8))
    with pytest.raises(ValueError, match="n_outputs"):
        SlideCNN(C, 1, task="classification")
    with pytest.raises(ValueError, match="task"):
        SlideCNN(C, 2, task="segmentation")  # type: ignore[arg-type]


def regression_slides(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The code square at a random place with a random amplitude (the target) over weaker noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tissue = np.zeros((H, H), np.float32)
        tissue[4:20, 4:20] = 1.0
        emb = (rng.normal(size=(H, H, C)) * 0.5).astype(np.float32) * tissue[..., None]
        amp = float(rng.uniform(0.2, 2.0))
        r, c = rng.integers(5, 15, 2)
        emb[r : r + SQ, c : c + SQ] += amp * CODE
        out.append((emb, tissue, amp))
    return out


def test_regression_learns_square_intensity():
    train, test = regression_slides(30, 10), regression_slides(12, 20)
    model, history = fit_slide_model(train, task="regression", epochs=8, crops_per_epoch=120, seed=0, **FAST)
    assert history["metric"] == "spearman" and model.n_outputs == 1
    pred = predict_slides(model, test, crop=None)  # the whole grid: no crop can miss the square
    truth = [s[2] for s in test]
    assert pred.shape == (12,)
    assert spearmanr(truth, pred).statistic > 0.8
    assert np.abs(pred - np.mean(truth)).max() < 3 * np.ptp(truth)  # in target units, not standardised


# --------------------------------------------------------------------------- D4 and crops


def test_d4_has_8_distinct_invertible_elements():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    outs = [d4(x, k) for k in D4]
    assert len(D4) == 8
    keys = {tuple(o.shape) + tuple(o.flatten().tolist()) for o in outs}
    assert len(keys) == 8  # eight different transforms of an asymmetric input
    for k in D4:
        assert torch.equal(d4_inverse(d4(x, k), k), x)
        assert np.array_equal(d4(x.numpy(), k), d4(x, k).numpy())  # numpy and torch agree
    # closed under composition: applying any two gives one of the eight
    for a in D4:
        for b in D4:
            comp = d4(d4(x, a), b)
            assert any(torch.equal(comp, o) for o in outs)
    assert torch.equal(d4(x, 1), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(d4(x, 4), torch.flip(x, dims=(-1,)))
    with pytest.raises(ValueError, match="0..7"):
        d4(x, 8)


def test_d4_commutes_with_crop_geometry():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(11, 14, 3)).astype(np.float32)
    r = 5
    for origin in [(2, 3), (0, 9), (6, 0)]:
        footprint = np.zeros(emb.shape[:2], bool)
        footprint[origin[0] : origin[0] + r, origin[1] : origin[1] + r] = True
        for k in D4:
            moved = d4(footprint, k)  # where the crop lands on the transformed grid
            rows, cols = np.nonzero(moved)
            new_origin = (rows.min(), cols.min())
            lhs = d4(crop(emb, origin, r).transpose(2, 0, 1), k)
            rhs = crop(np.ascontiguousarray(d4(emb.transpose(2, 0, 1), k).transpose(1, 2, 0)), new_origin, r)
            np.testing.assert_array_equal(lhs, rhs.transpose(2, 0, 1))


def test_crop_is_zero_padded_outside_the_grid():
    emb = np.arange(4 * 5 * 2, dtype=np.float32).reshape(4, 5, 2) + 1
    out = crop(emb, (-2, 3), 4)
    ref = np.zeros((8, 11, 2), np.float32)
    ref[2:6, 3:8] = emb
    np.testing.assert_array_equal(out, ref[0:4, 6:10])
    assert crop(emb, (10, 10), 3).sum() == 0
    np.testing.assert_array_equal(crop(emb[..., 0], (1, 1), 2), emb[1:3, 1:3, 0])


def test_crop_origins_are_drawn_in_proportion_to_tissue_inside():
    rng = np.random.default_rng(0)
    tissue = np.zeros((6, 7))
    tissue[1:4, 2:6] = rng.uniform(0.2, 1.0, (3, 4))
    r, n = 3, 40_000
    # brute-force probabilities over every crop overlapping the grid
    cands = [(i, j) for i in range(-(r - 1), 6) for j in range(-(r - 1), 7)]
    w = np.array([crop(tissue, o, r).sum() for o in cands])
    origins = sample_crop_origins(tissue, r, n, np.random.default_rng(1))
    assert origins.shape == (n, 2) and origins.dtype == np.int64
    counts = {o: 0 for o in cands}
    for o in map(tuple, origins):
        counts[o] += 1  # a KeyError would mean an origin outside the candidates
    obs = np.array([counts[o] for o in cands])
    assert obs[w == 0].sum() == 0  # never a crop without tissue
    keep = w > 0
    assert chisquare(obs[keep], n * w[keep] / w.sum()).pvalue > 1e-3
    # same seed, same origins
    np.testing.assert_array_equal(origins, sample_crop_origins(tissue, r, n, np.random.default_rng(1)))


def test_region_with_twice_the_tissue_gets_twice_the_crops():
    tissue = np.zeros((40, 60))
    tissue[5:15, 5:15] = 1.0  # region A
    tissue[25:35, 40:50] = 0.5  # region B: same area, half the tissue; farther apart than R
    r = 8
    origins = sample_crop_origins(tissue, r, 20_000, 3)
    rows, cols = origins[:, 0], origins[:, 1]
    hits_a = ((rows > 5 - r) & (rows < 15) & (cols > 5 - r) & (cols < 15)).sum()
    hits_b = ((rows > 25 - r) & (rows < 35) & (cols > 40 - r) & (cols < 50)).sum()
    assert hits_a + hits_b == len(origins)
    assert hits_a / hits_b == pytest.approx(2.0, rel=0.08)
    # no tissue at all: crops that cover as much of the grid as possible
    none = sample_crop_origins(np.zeros((10, 12)), 4, 50, 0)
    assert none.min() >= 0 and none[:, 0].max() <= 6 and none[:, 1].max() <= 8


# --------------------------------------------------------------------------- prediction


def test_tta_averages_8_times_T_forward_passes(data, trained):
    model, _ = trained
    slides = [s[:2] for s in data["test"][:3]]
    seen = []
    handle = model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        p, origins = predict_slides(model, slides, crop=R, n_crops=5, seed=7, return_origins=True, batch_size=16)
        assert sum(seen) == 8 * 5 * len(slides)
        seen.clear()
        predict_slides(model, slides, crop=R, n_crops=5, seed=7, tta=False)
        assert sum(seen) == 5 * len(slides)
    finally:
        handle.remove()
    model.eval()
    for i, (emb, _tissue) in enumerate(slides):
        assert origins[i].shape == (5, 2)
        views = [d4(torch.from_numpy(crop(emb, o, R).transpose(2, 0, 1).copy())[None], k) for o in origins[i] for k in D4]
        with torch.no_grad():
            manual = torch.cat([model(v).double().softmax(1) for v in views]).mean(0).numpy()
        np.testing.assert_allclose(p[i], manual, rtol=1e-6, atol=1e-7)
    # a slide's crops do not depend on the other slides
    p_alone = predict_slides(model, slides[:1], crop=R, n_crops=5, seed=7)
    np.testing.assert_allclose(p_alone[0], p[0], rtol=1e-6)  # only batch composition differs: float rounding


def test_slides_in_any_accepted_form_and_bad_grids_refused(data, trained):
    model, _ = trained
    emb, tissue = data["test"][0][:2]
    compressed = SimpleNamespace(embeddings=emb, tissue=tissue, load=lambda: emb)  # a CompressedSlide's interface
    ref = predict_slides(model, [(emb, tissue)], crop=R, n_crops=2)
    np.testing.assert_array_equal(predict_slides(model, [compressed], crop=R, n_crops=2), ref)
    np.testing.assert_array_equal(predict_slides(model, [(emb, tissue, 1)], crop=R, n_crops=2), ref)
    with pytest.raises(ValueError, match="C = 8"):
        predict_slides(model, [(emb[..., :5], tissue)], crop=R)
    with pytest.raises(ValueError, match="tissue must have the grid's shape"):
        predict_slides(model, [(emb, tissue[:-1])], crop=R)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        predict_slides(model, [(emb[..., 0], tissue)], crop=R)
    with pytest.raises(ValueError, match="integer class indices"):
        fit_slide_model([(emb, tissue, 0.5), (emb, tissue, 1.0)], crop=R, epochs=1)


def test_whole_grid_tta_is_invariant_to_rotating_the_slide(data, trained):
    model, _ = trained
    emb, tissue = data["test"][1][:2]
    base = predict_slides(model, [(emb, tissue)], crop=None)
    for k in (1, 5, 6):
        moved = np.ascontiguousarray(d4(emb.transpose(2, 0, 1), k).transpose(1, 2, 0))
        np.testing.assert_allclose(predict_slides(model, [(moved, d4(tissue, k))], crop=None), base, atol=1e-5)
    # without TTA a rotation changes the output (the CNN itself is not rotation invariant)
    plain = predict_slides(model, [(emb, tissue)], crop=None, tta=False)
    moved = np.ascontiguousarray(d4(emb.transpose(2, 0, 1), 1).transpose(1, 2, 0))
    assert not np.allclose(predict_slides(model, [(moved, tissue.T)], crop=None, tta=False), plain, atol=1e-7)


# --------------------------------------------------------------------------- cross-validation and metrics


def test_fold_rotation_tests_each_fold_once():
    rot = fold_rotation(4)
    assert sorted(t for _, _, t in rot) == [0, 1, 2, 3]
    assert sorted(v for _, v, _ in rot) == [0, 1, 2, 3]
    for train, val, test in rot:
        assert val != test and len(train) == 2
        assert set(train) == {0, 1, 2, 3} - {val, test}
    assert fold_rotation(5)[0] == ((2, 3, 4), 1, 0)
    with pytest.raises(ValueError, match="folds"):
        fold_rotation(2)
    labels = np.array([0, 1] * 10)
    folds = assign_folds(labels, 4, seed=0)
    for f in range(4):  # stratified: both classes in every fold
        assert set(labels[folds == f]) == {0, 1}


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_cross_validate_rotation_and_metrics_match_references(task):
    rng = np.random.default_rng(3)
    slides = planted(16, 4)
    grids = [s[:2] for s in slides]
    labels = np.array([s[2] for s in slides]) if task == "classification" else rng.normal(size=16)
    res = cross_validate(grids, labels, task=task, folds=4, epochs=1, crops_per_epoch=8, n_crops=1,
                         crop=R, width=8, depth=2, val_crops=1, seed=0)
    assert len(res["per_fold"]) == 4
    tests = np.concatenate([f["test_index"] for f in res["per_fold"]])
    assert sorted(tests.tolist()) == list(range(16))  # every slide is test exactly once
    for f in res["per_fold"]:
        tr, va, te = set(f["train_index"]), set(f["val_index"]), set(f["test_index"])
        assert not (tr & va or tr & te or va & te) and len(tr | va | te) == 16
        assert f["val_fold"] != f["test_fold"]
        assert set(res["fold_of"][list(tr)]) == set(f["train_folds"])
        assert set(res["fold_of"][list(te)]) == {f["test_fold"]}
    pred = res["predictions"]
    assert np.isfinite(pred).all()
    if task == "classification":
        assert res["metrics"]["auc"] == pytest.approx(roc_auc_score(labels, pred[:, 1]), abs=1e-12)
        assert res["metrics"]["accuracy"] == pytest.approx(accuracy_score(labels, pred.argmax(1)))
    else:
        assert pred.shape == (16,)
        assert res["metrics"]["spearman"] == pytest.approx(spearmanr(labels, pred).statistic, abs=1e-12)


def test_slide_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    y3 = rng.integers(0, 3, 50)
    p3 = rng.dirichlet(np.ones(3), 50)
    m = slide_metrics(y3, p3)
    assert m["auc"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y3, p3.argmax(1)))
    t, s = rng.normal(size=30), rng.normal(size=30)
    r = slide_metrics(t, s, task="regression")
    ref = spearmanr(t, s)
    assert (r["spearman"], r["spearman_p"]) == pytest.approx((ref.statistic, ref.pvalue), abs=1e-12)
    assert np.isnan(slide_metrics([1, 1, 1], np.full((3, 2), 0.5))["auc"])


# --------------------------------------------------------------------------- Grad-CAM


def test_gradcam_peaks_on_planted_square(data, trained):
    model, _ = trained
    scores, hits = [], 0
    positives = [s for s in data["test"] if s[2] == 1]
    for emb, tissue, _, truth in positives:
        heat = slide_gradcam(model, emb, target=1)
        assert heat.shape == (H, H) and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        hits += truth[np.unravel_index(heat.argmax(), heat.shape)]
        scores.append(jaccard(postprocess(heat, tissue=tissue), truth))
    assert np.mean(scores) >= 0.5, scores
    assert hits >= 0.8 * len(positives)
    # the D4-averaged map localises as well
    emb, tissue, _, truth = positives[0]
    assert jaccard(postprocess(slide_gradcam(model, emb, target=1, tta=True), tissue=tissue), truth) >= 0.5
    thumb = np.full((96, 96, 3), 200, np.uint8)
    over = gradcam_overlay(thumb, heat)
    assert over.shape == (96, 96, 3) and over.dtype == np.uint8 and not np.array_equal(over, thumb)


def test_postprocess_thresholds_and_keeps_largest_component():
    heat = np.zeros((20, 20))
    heat[2:8, 2:8] = 0.9  # larger blob
    heat[14:17, 14:17] = 1.0  # smaller, brighter blob
    heat[10, 2] = 0.2
    mask = postprocess(heat)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, heat == 0.9)
    both = postprocess(heat, largest=False)
    assert both[15, 15] and both[4, 4] and not both[10, 2]
    assert postprocess(heat, threshold=0.95).sum() == 9
    tissue = np.ones((20, 20))
    tissue[:, :5] = 0
    assert not postprocess(heat, tissue=tissue)[:, :5].any()
    assert not postprocess(np.full((5, 5), 0.3)).any()


def test_jaccard_equals_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random((13, 17)) > 0.6, rng.random((13, 17)) > 0.5
        assert jaccard(a, b) == pytest.approx(jaccard_score(b.ravel(), a.ravel()), abs=1e-12)
    z = np.zeros((4, 4), bool)
    assert jaccard(z, z) == jaccard_score(z.ravel(), z.ravel(), zero_division=1.0) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        jaccard(z, np.zeros((4, 5), bool))


# --------------------------------------------------------------------------- files and seeds


def test_save_load_round_trip(tmp_path, data, trained):
    model, _ = trained
    path = save_slide_model(model, tmp_path / "sub" / "slide.pt", card={"data": "planted"})
    loaded = load_slide_model(path)
    assert isinstance(loaded, SlideCNN) and loaded.config == model.config and loaded.card == {"data": "planted"}
    slides = [s[:2] for s in data["test"][:4]]
    np.testing.assert_array_equal(predict_slides(loaded, slides, crop=R, n_crops=2),
                                  predict_slides(model, slides, crop=R, n_crops=2))
    assert not list(path.parent.glob(".*partial"))


def test_bad_files_are_refused_naming_the_file(tmp_path, trained):
    model, _ = trained
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_slide_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="junk.pt"):
        load_slide_model(junk)
    evil = tmp_path / "evil.pt"  # a pickle that would run code: weights_only refuses it
    evil.write_bytes(pickle.dumps({"format": "histoscope-nic-slide-cnn/1", "x": SlideCNN}, protocol=2))
    with pytest.raises(ValueError, match="evil.pt.*weights_only=True"):
        load_slide_model(evil)
    enc = tmp_path / "encoder.pt"
    torch.save({"format": "histoscope-nic-encoder/1", "config": {}, "state_dict": {}}, enc)
    with pytest.raises(ValueError, match="encoder.pt.*not a slide model"):
        load_slide_model(enc)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(ValueError, match="bare.pt.*not a histoscope slide model"):
        load_slide_model(bare)
    path = save_slide_model(model, tmp_path / "ok.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["width"] = 7
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt.*do not fit"):
        load_slide_model(tmp_path / "mismatch.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_slide_model(truncated)


def test_same_seed_same_model_and_predictions(data):
    train = [s[:3] for s in data["train"][:12]]
    val = [s[:3] for s in data["val"][:4]]
    kw = dict(epochs=2, crops_per_epoch=24, crop=R, width=8, depth=2)
    state = torch.random.get_rng_state()
    m1, h1 = fit_slide_model(train, val, seed=11, **kw)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's torch RNG is left alone
    torch.manual_seed(999)  # the global torch state does not matter, the seed does
    m2, h2 = fit_slide_model(train, val, seed=11, **kw)
    m3, _ = fit_slide_model(train, val, seed=12, **kw)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert h1["train_loss"] == h2["train_loss"]
    grids = [s[:2] for s in data["test"][:4]]
    np.testing.assert_array_equal(predict_slides(m1, grids, crop=R, n_crops=3, seed=5),
                                  predict_slides(m2, grids, crop=R, n_crops=3, seed=5))
    assert not np.array_equal(predict_slides(m1, grids, crop=R, n_crops=3, seed=5),
                              predict_slides(m1, grids, crop=R, n_crops=3, seed=6))


def test_assign_folds_keeps_a_patients_slides_together():
    from histoscope.nic.train import assign_folds

    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(12), rng.integers(1, 4, 12))
    y = (groups % 2).astype(int)  # label per patient
    fold_of = assign_folds(y, 4, groups=groups, seed=1)
    assert set(fold_of.tolist()) == {0, 1, 2, 3}
    for g in np.unique(groups):
        assert len(set(fold_of[groups == g].tolist())) == 1
    for f in range(4):
        assert set(y[fold_of == f].tolist()) == {0, 1}  # stratified: both classes in every fold
    with pytest.raises(ValueError, match="groups"):
        assign_folds(y, 4, groups=groups[:-1])
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds(y[:6], 4, groups=np.array([0, 0, 0, 1, 1, 1]))


def test_empty_cells_stay_empty_after_standardisation_and_get_no_gradcam():
    """Cells that were not encoded (all-zero codes) look the same whatever the standardisation, and carry no evidence."""
    from histoscope.nic import SlideCNN, slide_gradcam

    torch.manual_seed(0)
    model = SlideCNN(4, 2, width=8).eval()
    model.set_standardisation(torch.tensor([5.0, -3.0, 2.0, 1.0]), torch.tensor([0.5, 2.0, 1.0, 4.0]))
    x = torch.zeros(1, 4, 12, 12)
    x[0, :, 3:8, 3:8] = torch.randn(4, 5, 5)
    seen: list[torch.Tensor] = []
    hook = model.features.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    inside = seen[0][0, :, 3:8, 3:8]
    expected = (x[0, :, 3:8, 3:8] - model.input_mean[:, None, None]) / model.input_std[:, None, None]
    torch.testing.assert_close(inside, expected)
    outside = seen[0][0].clone()
    outside[:, 3:8, 3:8] = 0
    assert (outside == 0).all()
    tissue = np.zeros((12, 12), np.float32)
    tissue[3:8, 3:8] = 1
    heat = slide_gradcam(model, x[0].numpy().transpose(1, 2, 0), target=1, tissue=tissue)
    assert (heat[tissue == 0] == 0).all()

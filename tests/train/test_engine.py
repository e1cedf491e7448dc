"""The training engine on a tiny synthetic task (class = which half of the image is brighter):
it learns, writes its outputs, picks the best epoch, follows the paper's step schedule, is
repeatable, resumes exactly, and fails clearly."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from histoscope.models import create_model
from histoscope.train import TrainConfig, fit, load_checkpoint, predict, resolve_device
from histoscope.train.engine import _optimizer

SIZE = 16


def halves(n: int, seed: int, size: int = SIZE) -> TensorDataset:
    """``n`` noisy images in [0, 1]; label 1 when the right half is brighter, 0 when the left is."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 3, size, size, generator=g) * 0.4 + 0.1
    h = size // 2
    x[y == 1, :, :, h:] += 0.4
    x[y == 0, :, :, :h] += 0.4
    return TensorDataset(x, y)


def small_model(seed: int = 0, size: int = SIZE, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=2, classes=["left", "right"], input_size=size, **kw)


def cfg(**kw) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 16, "num_workers": 0, "lr": 3e-3}
    return TrainConfig(**{**base, **kw})


def comparable(history: pd.DataFrame) -> pd.DataFrame:
    """The history without wall-clock times."""
    return history.drop(columns=["seconds"])


def weights_of(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def data():
    return halves(64, seed=0), halves(64, seed=1)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One 4-epoch run, shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("fit")
    model = small_model()
    result = fit(model, *data, cfg(epochs=4), out, verbose=False)
    return model, result, out


# --------------------------------------------------------------------------- learning and outputs


def test_learns_the_task_above_chance(trained, data):
    model, result, _ = trained
    h = result.history
    assert list(h["epoch"]) == [1, 2, 3, 4]
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert h["val_acc"].max() >= 0.85  # chance is about 0.5
    probs, labels = predict(model, data[1], batch_size=16)
    assert probs.shape == (64, 2) and labels.shape == (64,)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(labels, data[1].tensors[1].numpy())
    assert (probs.argmax(1) == labels).mean() == pytest.approx(h["val_acc"].max())


def test_writes_metrics_curves_and_checkpoints(trained):
    _, result, out = trained
    for name in ("metrics.csv", "metrics.json", "curves.png", "best.pt", "last.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*partial"))
    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv.columns) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    pd.testing.assert_frame_equal(comparable(csv), comparable(result.history), check_exact=False, rtol=1e-12)
    js = json.loads((out / "metrics.json").read_text())
    assert js["best_epoch"] == result.best_epoch
    assert [r["epoch"] for r in js["history"]] == [1, 2, 3, 4]
    assert js["train_config"]["epochs"] == 4
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.best_path == out / "best.pt" and result.last_path == out / "last.pt"


def test_best_checkpoint_is_the_epoch_with_the_best_val_acc(trained):
    model, result, out = trained
    h = result.history
    # highest accuracy; ties go to the lower validation loss (then the earlier epoch)
    order = sorted(range(len(h)), key=lambda i: (-h["val_acc"][i], h["val_loss"][i], i))
    expected = int(h["epoch"][order[0]])
    assert result.best_epoch == expected
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert best["epoch"] == expected
    assert best["metrics"]["val_acc"] == h["val_acc"][expected - 1]
    assert best["config"]["arch"] == "small_cnn" and best["config"]["classes"] == ["left", "right"]
    # the returned model holds the best weights, not the last ones
    assert_same_weights(model.state_dict(), best["model"])
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 3 and len(last["history"]) == 4
    if result.best_epoch != 4:  # (with these seeds: epoch 2, on the validation-loss tie-break)
        assert any(not torch.equal(v, last["model"][k]) for k, v in best["model"].items())


def test_load_checkpoint_rebuilds_the_model(trained, data):
    model, _, out = trained
    loaded = load_checkpoint(out / "best.pt")
    assert not loaded.training
    assert loaded.config == model.config
    model.eval()
    x = data[1].tensors[0][:8]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    plain = tmp_path / "plain.pt"
    torch.save(small_model().state_dict(), plain)
    with pytest.raises(ValueError, match="plain.pt: not a histoscope checkpoint"):
        load_checkpoint(plain)


def test_load_checkpoint_rebuilds_a_model_made_with_factory_options(data, tmp_path):
    model = small_model(width=8)
    fit(model, *data, cfg(epochs=1), tmp_path, verbose=False)
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded.config.arch_kwargs == {"width": 8}
    x = data[1].tensors[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- schedule


def test_milestones_are_the_papers_epochs():
    assert TrainConfig(epochs=200).milestone_epochs() == [80, 120, 160, 180]
    assert TrainConfig(epochs=10).milestone_epochs() == [4, 6, 8, 9]


def test_learning_rate_drops_tenfold_at_the_milestones(tmp_path):
    tiny = halves(8, seed=2)
    result = fit(small_model(), tiny, tiny, cfg(epochs=10, batch_size=8, lr=1e-3), tmp_path, verbose=False)
    lr = result.history["lr"].to_numpy()
    expected = 1e-3 * 0.1 ** np.searchsorted([4, 6, 8, 9], np.arange(10), side="right")
    np.testing.assert_allclose(lr, expected, rtol=1e-9)
    # epoch numbers in the history are 1-based: the first drop shows at epoch 5 (0-based 4)
    assert result.history.loc[result.history["lr"] < 1e-3, "epoch"].iloc[0] == 5


# --------------------------------------------------------------------------- repeatability and resume


def test_same_seed_same_history(tmp_path):
    tr, va = halves(32, seed=3), halves(16, seed=4)
    runs = [fit(small_model(seed=s), tr, va, cfg(epochs=2, seed=7), tmp_path / f"r{i}", verbose=False) for i, s in enumerate((0, 0))]
    pd.testing.assert_frame_equal(comparable(runs[0].history), comparable(runs[1].history), check_exact=True)
    assert_same_weights(weights_of(runs[0].last_path), weights_of(runs[1].last_path))
    other = fit(small_model(seed=0), tr, va, cfg(epochs=2, seed=8), tmp_path / "other", verbose=False)
    assert not comparable(other.history)["train_loss"].equals(comparable(runs[0].history)["train_loss"])


class Interrupt(Exception):
    pass


class StopAfter(Dataset):
    """Wraps a dataset and raises after ``n`` items, like a run killed mid-epoch."""

    def __init__(self, ds: Dataset, n: int) -> None:
        self.ds, self.n, self.served = ds, n, 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        if self.served >= self.n:
            raise Interrupt
        self.served += 1
        return self.ds[i]


def test_resume_after_an_interruption_equals_a_straight_run(tmp_path):
    tr, va = halves(32, seed=5), halves(16, seed=6)
    config = cfg(epochs=4)
    straight = fit(small_model(), tr, va, config, tmp_path / "straight", verbose=False)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):  # killed during epoch 3 (2 epochs of 32 images done)
        fit(small_model(), StopAfter(tr, 2 * 32 + 5), va, config, out, verbose=False)
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 1
    resumed = fit(small_model(seed=123), tr, va, config, out, resume=True, verbose=False)

    pd.testing.assert_frame_equal(comparable(resumed.history), comparable(straight.history), check_exact=True)
    assert resumed.best_epoch == straight.best_epoch
    assert_same_weights(weights_of(out / "last.pt"), weights_of(straight.last_path))
    assert_same_weights(weights_of(out / "best.pt"), weights_of(straight.best_path))


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path):
    tr, va = halves(32, seed=5), halves(16, seed=6)
    straight = fit(small_model(), tr, va, cfg(epochs=4), tmp_path / "straight", verbose=False)
    out = tmp_path / "resumed"
    fit(small_model(), tr, va, cfg(epochs=2), out, verbose=False)
    resumed = fit(small_model(), tr, va, cfg(epochs=4), out, resume=True, verbose=False)
    # epochs 1-2 were trained under the 2-epoch schedule; from the resume point on, the
    # learning rate is the one the straight 4-epoch run uses
    np.testing.assert_allclose(resumed.history["lr"].iloc[2:], straight.history["lr"].iloc[2:])


# --------------------------------------------------------------------------- failures and configuration


class WithNaN(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return torch.full((3, SIZE, SIZE), math.nan), i % 2


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match=r"epoch 1: the training loss became nan; lower the learning rate"):
        fit(small_model(), WithNaN(), WithNaN(), cfg(epochs=1, batch_size=4), tmp_path, verbose=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs and batch_size must be >= 1, got 0, 32"),
        ({"batch_size": 0}, "epochs and batch_size must be >= 1, got 10, 0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": math.nan}, "lr must be > 0, got nan"),
        ({"optimizer": "adagrad"}, "optimizer must be .*'adagrad'"),
        ({"milestones": (0.5, 1.0)}, r"milestones are fractions in \(0, 1\), got \(0.5, 1.0\)"),
        ({"select": "train_loss"}, "select must be val_acc, val_loss or val_f1, got 'train_loss'"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the no-CUDA error cannot be checked here")
    with pytest.raises(ValueError, match="'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'cuda:0' requested but CUDA is not available"):
        resolve_device("cuda:0")


def test_fit_refuses_cuda_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit(small_model(), halves(4, 0), halves(4, 1), cfg(device="cuda"), tmp_path, verbose=False)


def test_optimizer_per_architecture():
    small = small_model()
    assert type(_optimizer(small, TrainConfig())) is torch.optim.Adam
    assert type(_optimizer(small, TrainConfig(optimizer="sgd"))) is torch.optim.SGD
    torch.manual_seed(0)
    inception = create_model("inception_v3", num_classes=2, input_size=75)
    opt = _optimizer(inception, TrainConfig())
    assert type(opt) is torch.optim.RMSprop
    assert opt.defaults["alpha"] == 0.9
    assert type(_optimizer(inception, TrainConfig(optimizer="adam"))) is torch.optim.Adam


def test_inception_trains_with_rmsprop_and_label_smoothing(tmp_path):
    size = 75
    torch.manual_seed(0)
    model = create_model("inception_v3", num_classes=2, input_size=size)
    ds = halves(4, seed=9, size=size)
    result = fit(model, ds, ds, cfg(epochs=1, batch_size=4), tmp_path, verbose=False)
    last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    group = last["optimizer"]["param_groups"][0]
    assert {"alpha", "centered", "momentum"} <= set(group) and group["alpha"] == 0.9  # RMSprop's settings
    assert "square_avg" in next(iter(last["optimizer"]["state"].values()))
    # the validation loss is cross-entropy with label smoothing 0.1
    x, y = ds.tensors
    with torch.no_grad():
        logits = model.eval()(x)
    smooth = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert result.history["val_loss"][0] == pytest.approx(float(smooth), rel=1e-5)
    assert float(smooth) != pytest.approx(float(plain), rel=1e-3)


def test_small_cnn_uses_no_label_smoothing(trained, data):
    model, result, _ = trained
    x, y = data[1].tensors
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model.eval()(x), y)
    best = result.history.loc[result.history["epoch"] == result.best_epoch, "val_loss"].item()
    assert best == pytest.approx(float(loss), rel=1e-5)


def test_tiny_validation_set_keeps_the_last_epoch(tmp_path, caplog):
    tr, va = halves(32, seed=5), halves(8, seed=6)  # 8 < MIN_VALIDATION items
    result = fit(small_model(), tr, va, cfg(epochs=3), tmp_path, verbose=False)
    assert result.best_epoch == 3
    assert "the last epoch is kept" in caplog.text


# --------------------------------------------------------------------------- the mitosis paper's options


def test_exponential_schedule_goes_from_lr_to_lr_final(tmp_path):
    tiny = halves(8, seed=2)
    result = fit(small_model(), tiny, tiny, cfg(epochs=5, batch_size=8, lr=1e-3, lr_final=3e-5, schedule="exponential"), tmp_path, verbose=False)
    lr = result.history["lr"].to_numpy()
    np.testing.assert_allclose(lr, 1e-3 * (3e-5 / 1e-3) ** (np.arange(5) / 4), rtol=1e-9)
    with pytest.raises(ValueError, match="lr_final"):
        TrainConfig(lr=1e-3, lr_final=1e-2)


def test_val_f1_selection_and_balanced_batches(tmp_path):
    from histoscope.train.sampling import BalancedBatchSampler

    tr, va = halves(64, seed=5), halves(40, seed=6)
    labels = tr.tensors[1].numpy()
    sampler = BalancedBatchSampler(labels, batch_size=8, seed=0)
    result = fit(small_model(), tr, va, cfg(epochs=3, select="val_f1"), tmp_path, verbose=False, batch_sampler=sampler)
    h = result.history
    assert "val_f1" in h and h["val_f1"].between(0, 1).all()
    best = max(range(len(h)), key=lambda i: (h["val_f1"].iloc[i], -h["val_loss"].iloc[i]))  # ties: lower loss
    assert result.best_epoch == int(h["epoch"].iloc[best])


def test_soft_targets_train_towards_the_given_probabilities(tmp_path):
    """Distillation: labels are probability vectors; a constant target 0.8 is learnt as 0.8."""
    base = halves(64, seed=7)
    x = base.tensors[0]
    soft = TensorDataset(x, torch.tensor([[0.2, 0.8]]).repeat(len(x), 1))
    soft_val = TensorDataset(x[:40], torch.tensor([[0.2, 0.8]]).repeat(40, 1))
    model = small_model()
    fit(model, soft, soft_val, cfg(epochs=8, lr=1e-2, select="val_loss"), tmp_path, verbose=False)
    probs, _ = predict(model, TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))
    assert probs[:, 1].mean() == pytest.approx(0.8, abs=0.1)


# --------------------------------------------------------------------------- safe loading


class _Payload:
    """An object whose unpickling runs code: here, it creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_load_without_pickle(trained):
    _, _, out = trained
    for name in ("best.pt", "last.pt"):
        ck = torch.load(out / name, map_location="cpu", weights_only=True)  # the trusted reference: no pickle allowed
        assert "model" in ck and "config" in ck
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert isinstance(last["rng"]["numpy"]["keys"], torch.Tensor) and len(last["history"]) == 4


def test_a_pickled_checkpoint_runs_nothing_unless_trusted(trained, tmp_path, monkeypatch):
    from histoscope.exceptions import ModelFileError
    from histoscope.models.pretrained import resolve_model

    monkeypatch.delenv("HISTOSCOPE_TRUST_CHECKPOINT", raising=False)
    _, _, out = trained
    ck = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({**ck, "extra": _Payload(str(marker))}, evil)
    for load in (lambda: load_checkpoint(evil), lambda: resolve_model(str(evil))):
        with pytest.raises(ModelFileError, match=r"evil\.pt: this checkpoint needs Python's pickle.*--trust-checkpoint"):
            load()
    assert not marker.exists()
    model = load_checkpoint(evil, trust=True)  # the user vouches for the file: it loads (and its code runs)
    assert marker.exists() and not model.training
    marker.unlink()
    monkeypatch.setenv("HISTOSCOPE_TRUST_CHECKPOINT", "1")  # what `histoscope --trust-checkpoint` sets
    resolve_model(str(evil))
    assert marker.exists()


def test_the_cli_refuses_a_pickled_checkpoint_in_one_line(trained, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from histoscope.cli.main import cli

    monkeypatch.delenv("HISTOSCOPE_TRUST_CHECKPOINT", raising=False)
    _, _, out = trained
    ck = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    evil = tmp_path / "evil.pt"
    torch.save({**ck, "extra": _Payload(str(tmp_path / "code-ran"))}, evil)
    r = CliRunner().invoke(cli, ["serve", "--model", str(evil), "--port", "0"], catch_exceptions=False)
    assert r.exit_code == 2 and "--trust-checkpoint" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "code-ran").exists()

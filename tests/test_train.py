"""The trainer on tiny synthetic data: determinism, resume equality, checkpoints, recorder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tests.conftest import TinyCNN
from xailab.core.errors import CheckpointError, DataError, ModelError
from xailab.runs import Run, RunError
from xailab.train import (
    Callback,
    PredictionRecorder,
    TrainConfig,
    Trainer,
    backfill_predictions,
    read_predictions,
    read_probabilities,
)
from xailab.train.checkpoint import (
    committed_epochs,
    epoch_weights,
    load_optimizer,
    load_weights,
    save_optimizer,
    save_weights,
)

ROOT = Path(__file__).resolve().parents[1]


class Synthetic(TensorDataset):
    """``n`` noisy grey ``size x size`` images of ``k`` classes; class ``c`` has mean ``c - (k-1)/2``."""

    def __init__(self, n: int = 60, k: int = 3, size: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % k
        x = torch.randn(n, 1, size, size, generator=g) + (y - (k - 1) / 2)[:, None, None, None]
        super().__init__(x, y)
        self.targets = y
        self.classes = [f"class{c}" for c in range(k)]


def make_model(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN(in_ch=1, classes=classes)


CFG = TrainConfig(epochs=4, batch_size=16, lr=0.02, seed=3, device="cpu", quiet=True)


def numbers(run_path: Path) -> pd.DataFrame:
    m = Run.open(run_path).read_table("metrics").sort_values("epoch").reset_index(drop=True)
    return m.drop(columns=["train_seconds", "seconds"])


def fit(run: Path | None, cfg: TrainConfig = CFG, callbacks: tuple[Callback, ...] = (),
        **kw: object) -> tuple[nn.Module, object]:
    model = make_model()
    res = Trainer(model, Synthetic(), Synthetic(n=30, seed=1), config=cfg, run=run,
                  callbacks=callbacks, **kw).fit()  # type: ignore[arg-type]
    return model, res


class Boom(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, epoch: int, model: nn.Module, state: object) -> None:
        if epoch == self.at:
            raise RuntimeError("simulated crash")


def test_training_learns_and_writes_the_run(tmp_path: Path) -> None:
    model, res = fit(tmp_path / "run")
    run = Run.open(tmp_path / "run")
    hist = run.read_table("metrics").sort_values("epoch")
    assert hist["epoch"].tolist() == [1, 2, 3, 4]
    assert hist["val_acc"].iloc[-1] > 0.8 and hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    m = run.manifest
    assert m["status"]["state"] == "finished" and m["status"]["epoch"] == 4
    assert m["classes"] == ["class0", "class1", "class2"]
    assert m["train"]["lr"] == CFG.lr and m["model"]["class"] == "TinyCNN"
    assert m["dataset"] == {"train_size": 60, "val_size": 30}
    ck = tmp_path / "run" / "checkpoints"
    assert sorted(epoch_weights(ck)) == [1, 2, 3, 4]
    assert committed_epochs(ck) == [4]  # only the newest optimizer state is kept by default
    best = int(hist["val_acc"].to_numpy().argmax()) + 1
    assert res.best_epoch == best  # type: ignore[attr-defined]
    fresh = make_model()
    assert load_weights(ck / "best.safetensors", fresh)["epoch"] == best
    last = make_model()
    load_weights(ck / "epoch-0004.safetensors", last)
    for a, b in zip(last.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path: Path) -> None:
    fit(tmp_path / "a")
    fit(tmp_path / "b")
    pd.testing.assert_frame_equal(numbers(tmp_path / "a"), numbers(tmp_path / "b"))
    fit(tmp_path / "c", CFG.replace(seed=4))
    assert not numbers(tmp_path / "a").equals(numbers(tmp_path / "c"))


def _assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(numbers(a), numbers(b))
    pa_, pb = (Run.open(p).read_table("predictions") for p in (a, b))
    assert pa_["epoch"].value_counts().sort_index().tolist() == [30] * 4  # no lost/duplicated epoch
    pd.testing.assert_frame_equal(pa_, pb)
    np.testing.assert_array_equal(read_probabilities(a), read_probabilities(b))
    wa, wb = make_model(), make_model()
    load_weights(a / "checkpoints" / "epoch-0004.safetensors", wa)
    load_weights(b / "checkpoints" / "epoch-0004.safetensors", wb)
    for x, y in zip(wa.state_dict().values(), wb.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    fit(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "cut", callbacks=(Boom(at=2),))
    run = Run.open(tmp_path / "cut")
    assert run.manifest["status"]["state"] == "failed"
    assert committed_epochs(tmp_path / "cut" / "checkpoints") == [1]
    _, res = fit(tmp_path / "cut")
    assert res.resumed_from == 1  # type: ignore[attr-defined]
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from tests.test_train import CFG, Synthetic, make_model
    from xailab.train import Callback, Trainer

    class Kill(Callback):
        def on_epoch_end(self, epoch, model, state):
            if epoch == 3:  # after epoch 3's metrics and predictions, before its commit
                os.kill(os.getpid(), signal.SIGKILL)

    Trainer(make_model(), Synthetic(), Synthetic(n=30, seed=1), config=CFG, run=sys.argv[1],
            callbacks=[Kill()] if sys.argv[2] == "kill" else []).fit()
""")


def test_resume_after_sigkill_in_a_subprocess(tmp_path: Path) -> None:
    # the subprocess computes with as many threads as this process, so results are bitwise equal
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cut = tmp_path / "cut"
    p = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(cut), "kill"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    run = Run.open(cut)
    assert run.has_part("predictions", 3) and run.has_part("metrics", 3)  # written, not committed
    assert committed_epochs(cut / "checkpoints") == [2]
    p = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(cut), "resume"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    fit(tmp_path / "full")
    _assert_same_run(tmp_path / "full", cut)


def test_resume_refuses_other_settings_and_extends_epochs(tmp_path: Path) -> None:
    fit(tmp_path / "r", CFG.replace(epochs=2))
    with pytest.raises(RunError, match="lr"):
        fit(tmp_path / "r", CFG.replace(epochs=3, lr=0.5))
    _, res = fit(tmp_path / "r", CFG.replace(epochs=4))  # more epochs: continues
    assert res.resumed_from == 2 and res.epochs_done == 4  # type: ignore[attr-defined]
    fit(tmp_path / "full")
    _assert_same_run(tmp_path / "full", tmp_path / "r")
    _, res = fit(tmp_path / "r")  # nothing left to do
    assert res.resumed_from == 4 and len(res.history) == 4  # type: ignore[attr-defined]


def test_sgd_without_run_and_early_stop() -> None:
    class Stop(Callback):
        def on_epoch_end(self, epoch: int, model: nn.Module, state: object) -> None:
            state.stop = epoch == 2  # type: ignore[attr-defined]

    _, res = fit(None, CFG.replace(optimizer="sgd", lr=0.05), callbacks=(Stop(),))
    assert res.history["epoch"].tolist() == [1, 2]  # type: ignore[attr-defined]
    assert res.run is None  # type: ignore[attr-defined]


def test_model_that_does_not_fit_the_classes_fails_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="5 outputs but the dataset has 3 classes"):
        Trainer(TinyCNN(in_ch=1, classes=5), Synthetic(), config=CFG, run=tmp_path / "x").fit()
    with pytest.raises(ModelError, match="cannot take this dataset's inputs"):
        Trainer(TinyCNN(in_ch=3, classes=3), Synthetic(), config=CFG, run=tmp_path / "x").fit()
    with pytest.raises(DataError, match="empty"):
        Trainer(make_model(), Synthetic(n=0), config=CFG, run=tmp_path / "x").fit()
    assert not (tmp_path / "x").exists()


def test_single_logit_binary_model(tmp_path: Path) -> None:
    model = make_model(classes=1)
    res = Trainer(model, Synthetic(k=2), Synthetic(n=20, k=2, seed=1), config=CFG,
                  run=tmp_path / "b").fit()
    assert res.history["val_acc"].iloc[-1] > 0.8
    p = read_probabilities(tmp_path / "b")
    assert p.shape == (4, 20, 2)
    with torch.no_grad():
        z = model.eval()(Synthetic(n=20, k=2, seed=1).tensors[0])[:, 0]
    np.testing.assert_allclose(p[-1][:, 1], torch.sigmoid(z).numpy(), rtol=1e-5)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_optimizer_checkpoint_round_trip(tmp_path: Path, opt: str) -> None:
    cfg = CFG.replace(optimizer=opt, weight_decay=1e-3)
    x, y = Synthetic().tensors

    def step(m: nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()

    a = make_model()
    oa = cfg.make_optimizer(a)
    step(a, oa)
    save_weights(tmp_path / "w.safetensors", a, {"epoch": 1})
    save_optimizer(tmp_path / "o.safetensors", oa, {"best_epoch": 1})
    b = make_model(seed=9)
    ob = cfg.make_optimizer(b)
    assert load_weights(tmp_path / "w.safetensors", b) == {"epoch": 1}
    assert load_optimizer(tmp_path / "o.safetensors", ob) == {"best_epoch": 1}
    step(a, oa)
    step(b, ob)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert b"pickle" not in (tmp_path / "o.safetensors").read_bytes()[:8]


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "w.safetensors"
    save_weights(p, make_model())
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(p, make_model())
    save_weights(p, make_model(classes=4))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(p, make_model())


def test_recorder_content(tmp_path: Path) -> None:
    track = Synthetic(n=30, seed=1)
    idx = [0, 5, 7, 29]
    model, _ = fit(tmp_path / "r", track=track, track_indices=idx)
    preds = read_predictions(tmp_path / "r")
    assert list(preds.columns) == ["epoch", "instance", "label", "predicted", "confidence", "p_label"]
    assert str(preds["confidence"].dtype) == "float32" and str(preds["epoch"].dtype) == "int32"
    assert preds["epoch"].tolist() == [e for e in range(1, 5) for _ in idx]
    assert preds["instance"].tolist() == idx * 4
    assert preds["label"].tolist() == (track.targets[idx].tolist()) * 4
    probs = read_probabilities(tmp_path / "r")
    assert probs.shape == (4, 4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    flat = probs.reshape(-1, 3)
    np.testing.assert_array_equal(preds["predicted"], flat.argmax(1))
    np.testing.assert_array_equal(preds["confidence"], flat.max(1))
    np.testing.assert_array_equal(preds["p_label"], flat[np.arange(len(flat)), preds["label"]])
    with torch.no_grad():  # the last epoch is the final model's softmax
        expect = torch.softmax(model.eval()(track.tensors[0][idx]), 1).numpy()
    np.testing.assert_allclose(probs[-1], expect, rtol=1e-5, atol=1e-7)
    assert len(read_predictions(tmp_path / "r", epochs=[2], instances=[5])) == 1
    with pytest.raises(RunError, match="no recorded predictions for epochs"):
        read_probabilities(tmp_path / "r", epochs=[9])


def test_three_line_recorder_top_k_and_backfill(tmp_path: Path) -> None:
    track = Synthetic(n=30, seed=1)
    fit(tmp_path / "on")                               # records the val set (= track) by default
    fit(tmp_path / "off", track=None)
    assert "predictions" not in Run.open(tmp_path / "off").tables()
    assert backfill_predictions(tmp_path / "off", track, make_model()) == [1, 2, 3, 4]
    assert backfill_predictions(tmp_path / "off", track, make_model()) == []  # already there
    pd.testing.assert_frame_equal(read_predictions(tmp_path / "on"), read_predictions(tmp_path / "off"))
    np.testing.assert_allclose(read_probabilities(tmp_path / "on"), read_probabilities(tmp_path / "off"))

    model = make_model()  # a user's own loop
    rec = PredictionRecorder(Run.create(tmp_path / "own", kind="train"), track, top_k=2)
    for epoch in (1, 2):
        rec.record(model, epoch)
    run = Run.open(tmp_path / "own")
    top = run.read_array("probabilities")
    cls = run.read_array("probabilities_classes")
    assert top.shape == (60, 2) and cls.shape == (60, 2)
    assert (top[:, 0] >= top[:, 1]).all()
    np.testing.assert_array_equal(cls[:, 0], run.read_table("predictions")["predicted"])


def test_image_dataset_fast_path_with_augmentation_resumes_exactly(tmp_path: Path) -> None:
    data_mod = pytest.importorskip("xailab.data")
    x, y = Synthetic(n=40).tensors
    images = ((x - x.min()) / (x.max() - x.min()) * 255).to(torch.uint8)
    ds = data_mod.ImageDataset(images, y, ["a", "b", "c"], name="synthetic", mean=(0.5,), std=(0.25,),
                               augment=True, crop_padding=1)
    val = ds.with_options(augment=False).subset(range(0, 40, 4))
    cfg = CFG.replace(epochs=3)

    def go(out: Path, cb: tuple[Callback, ...] = ()) -> None:
        Trainer(make_model(), ds, val, config=cfg, run=out, callbacks=cb).fit()

    go(tmp_path / "full")
    with pytest.raises(RuntimeError):
        go(tmp_path / "cut", (Boom(at=2),))
    go(tmp_path / "cut")
    pd.testing.assert_frame_equal(numbers(tmp_path / "full"), numbers(tmp_path / "cut"))
    np.testing.assert_array_equal(read_probabilities(tmp_path / "full"), read_probabilities(tmp_path / "cut"))
    # augmentation really happens: two epochs of the same items give different batches
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert not torch.equal(ds.get_batch(range(8), generator=g1)[0], ds.get_batch(range(8), generator=g2)[0])


def test_checkpoints_carry_the_training_normalisation(tmp_path: Path) -> None:
    from xailab.models import get_preprocessing, load_weights

    class Normalised(Synthetic):
        mean, std, image_size = (0.25,), (0.5,), (8, 8)

    Trainer(make_model(), Normalised(), Normalised(n=30, seed=1), config=CFG.replace(epochs=1),
            run=tmp_path / "r").fit()
    fresh = make_model(seed=1)
    load_weights(fresh, tmp_path / "r" / "checkpoints" / "best.safetensors")
    prep = get_preprocessing(fresh)
    assert prep is not None and prep.mean == (0.25,) and prep.std == (0.5,) and prep.input_size == (8, 8)

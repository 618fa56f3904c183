"""Evaluation metrics checked by hand on a known confusion matrix, and the k-fold table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score
from sklearn.model_selection import StratifiedKFold

from tests.test_train import CFG, Synthetic, make_model
from xailab.runs import Run
from xailab.train import (
    Evaluation,
    confusion_matrix,
    evaluate,
    load_evaluation,
    save_evaluation,
    train_kfold,
)
from xailab.train.evaluation import evaluation_from_logits

# rows: true class, columns: predicted.  class 2 is never predicted -> precision 0/0 = 0
CM = np.array([[5, 1, 0],
               [2, 3, 0],
               [1, 1, 0]])


def _labels_preds() -> tuple[np.ndarray, np.ndarray]:
    y, p = [], []
    for i in range(3):
        for j in range(3):
            y += [i] * CM[i, j]
            p += [j] * CM[i, j]
    return np.array(y), np.array(p)


def test_confusion_matrix_and_metrics_by_hand() -> None:
    y, p = _labels_preds()
    np.testing.assert_array_equal(confusion_matrix(y, p, 3), CM)
    ev = Evaluation(CM, loss=0.5, classes=["a", "b", "c"])
    assert ev.n == 13 and ev.accuracy == pytest.approx(8 / 13)
    np.testing.assert_allclose(ev.recall, [5 / 6, 3 / 5, 0])
    np.testing.assert_allclose(ev.per_class_accuracy, [5 / 6, 3 / 5, 0])
    np.testing.assert_allclose(ev.precision, [5 / 8, 3 / 5, 0])
    f1 = [2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6), 3 / 5, 0]
    np.testing.assert_allclose(ev.f1, f1)
    assert ev.f1_macro == pytest.approx(sum(f1) / 3)
    assert ev.precision_macro == pytest.approx((5 / 8 + 3 / 5) / 3)
    assert ev.recall_macro == pytest.approx((5 / 6 + 3 / 5) / 3)
    # scikit-learn agrees (labels fixed to all classes, 0/0 -> 0)
    kw = {"labels": [0, 1, 2], "average": "macro", "zero_division": 0}
    assert ev.f1_macro == pytest.approx(f1_score(y, p, **kw))
    assert ev.precision_macro == pytest.approx(precision_score(y, p, **kw))
    assert ev.recall_macro == pytest.approx(recall_score(y, p, **kw))
    text = ev.format()
    assert "accuracy 0.6154" in text and "confusion matrix" in text


def test_loss_and_evaluate_on_a_dataset() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    ev = evaluation_from_logits(logits, labels)
    expect = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-1.0)), np.log(1 + np.exp(3.0))])
    assert ev.loss == pytest.approx(expect)
    np.testing.assert_array_equal(ev.confusion, [[1, 0], [1, 1]])

    data = Synthetic(n=30, seed=1)
    model = make_model().eval()
    got = evaluate(model, data, batch_size=7)
    with torch.no_grad():
        ref = evaluation_from_logits(model(data.tensors[0]), data.targets)
    np.testing.assert_array_equal(got.confusion, ref.confusion)
    assert got.loss == pytest.approx(ref.loss, rel=1e-6)
    assert got.classes == data.classes


def test_save_and_load_evaluation(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", kind="train")
    ev = Evaluation(CM, 0.25, ["a", "b", "c"])
    save_evaluation(run, ev, "test")
    back = load_evaluation(run, "test")
    np.testing.assert_array_equal(back.confusion, CM)
    assert back.loss == 0.25 and back.classes == ["a", "b", "c"]
    assert run.manifest["evaluation"]["test"]["accuracy"] == pytest.approx(8 / 13)


def test_kfold_table(tmp_path: Path) -> None:
    data = Synthetic(n=45)
    splits = list(StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(45), data.targets))
    cfg = CFG.replace(epochs=2)
    res = train_kfold(lambda fold: make_model(), data, splits=splits, config=cfg, run=tmp_path / "cv",
                      track="val")
    t = res.table
    assert t["fold"].tolist() == [1, 2, 3] and t["n_val"].tolist() == [15, 15, 15]
    # each fold's figures are its final model on its held-out fold
    for fold, (_, va) in enumerate(splits, start=1):
        sub = Run.open(tmp_path / "cv" / "folds" / f"fold-{fold}")
        model = make_model()
        from xailab.train import load_weights

        load_weights(sub.path / "checkpoints" / "epoch-0002.safetensors", model)
        ev = evaluate(model, torch.utils.data.Subset(data, va.tolist()), classes=data.classes)
        row = t[t["fold"] == fold].iloc[0]
        assert row["accuracy"] == pytest.approx(ev.accuracy) and row["f1_macro"] == pytest.approx(ev.f1_macro)
        np.testing.assert_array_equal(sub.read_array("val_indices"), va)
        preds = sub.read_table("predictions")  # held-out predictions, indexed in the whole dataset
        np.testing.assert_array_equal(preds[preds["epoch"] == 2]["instance"], va)
        np.testing.assert_array_equal(preds[preds["epoch"] == 2]["label"], data.targets[va])
    assert res.mean["accuracy"] == pytest.approx(t["accuracy"].mean())
    assert res.std["loss"] == pytest.approx(t["loss"].std(ddof=1))
    stored = Run.open(tmp_path / "cv")
    pd.testing.assert_frame_equal(stored.read_table("kfold").reset_index(drop=True), t,
                                  check_dtype=False)
    assert stored.manifest["kfold"]["mean"]["f1_macro"] == pytest.approx(t["f1_macro"].mean())
    text = res.format()
    assert "mean ± std" in text and len(text.splitlines()) == 5
    # rerun: finished folds are read back, not trained again
    again = train_kfold(lambda fold: 1 / 0, data, splits=splits, config=cfg,  # type: ignore[arg-type]
                        run=tmp_path / "cv")
    pd.testing.assert_frame_equal(again.table, t, check_dtype=False)


def test_kfold_with_the_default_stratified_splits() -> None:
    data_mod = pytest.importorskip("xailab.data")
    if not hasattr(data_mod, "stratified_kfold"):
        pytest.skip("xailab.data.stratified_kfold is not there yet")
    data = Synthetic(n=30)
    res = train_kfold(lambda fold: make_model(), data, k=3, config=CFG.replace(epochs=1))
    assert res.table["n_val"].tolist() == [10, 10, 10] and res.run is None

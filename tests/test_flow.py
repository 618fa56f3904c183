"""Instance flow: counts, filters and the instance table on a history where every number is known.

The hand-built history (classes cat=0, dog=1, frog=2; epochs 1..4)::

    id  true  predicted per epoch   changes  forgotten  first/last right  final
    0   cat   cat  cat  cat  cat       0        0           1 / 4          cat
    1   cat   dog  cat  cat  dog       2        1           2 / 3          dog  (learned, forgotten)
    2   cat   frog frog dog  cat       2        0           4 / 4          cat
    3   dog   dog  dog  dog  dog       0        0           1 / 4          dog
    4   dog   cat  dog  cat  dog       3        1           2 / 4          dog
    5   frog  frog dog  dog  dog       1        1           1 / 1          dog  (learned, forgotten)

confidence of instance i at epoch e = 0.1 e + 0.01 i.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xailab.cli import main
from xailab.dynamics import (
    FlowError,
    History,
    class_distribution,
    class_names,
    confused_pairs,
    flow_members,
    instance_table,
    learned_then_forgotten,
    load_history,
    parse_epochs,
    recorded_epochs,
    sankey,
    select_history,
)
from xailab.runs import Run

CLASSES = ["cat", "dog", "frog"]
TRUTH = {0: (0, [0, 0, 0, 0]), 1: (0, [1, 0, 0, 1]), 2: (0, [2, 2, 1, 0]),
         3: (1, [1, 1, 1, 1]), 4: (1, [0, 1, 0, 1]), 5: (2, [2, 1, 1, 1])}
EPOCHS = [1, 2, 3, 4]


def history_rows(truth: dict[int, tuple[int, list[int]]] = TRUTH, epochs: list[int] = EPOCHS) -> list[pd.DataFrame]:
    parts = []
    for j, ep in enumerate(epochs):
        ids = list(truth)
        parts.append(pd.DataFrame({
            "epoch": np.full(len(ids), ep, dtype=np.int32),
            "instance": np.array(ids, dtype=np.int64),
            "label": np.array([truth[i][0] for i in ids], dtype=np.int32),
            "predicted": np.array([truth[i][1][j] for i in ids], dtype=np.int32),
            "confidence": np.array([0.1 * ep + 0.01 * i for i in ids], dtype=np.float32),
            "p_label": np.float32(0.25),
        }))
    return parts


def make_run(path: Path, classes: list[str] | None = CLASSES) -> Run:
    """The hand-built history as the trainer's recorder writes it (one part per epoch)."""
    run = Run.create(path, kind="train")
    if classes is not None:
        run.update_manifest("predictions", {"predictions": {"instances": 6, "classes": classes}})
    for ep, rows in zip(EPOCHS, history_rows(), strict=True):
        run.write_table("predictions", rows, part=ep)
    return run


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return make_run(tmp_path / "run")


def flow_dict(h: History) -> dict[tuple[int, int, int], int]:
    f = sankey(h).flows()
    return {(int(e), int(a), int(b)): int(n) for e, a, b, n in
            zip(f["epoch"], f["source"], f["target"], f["count"], strict=True)}


ALL_FLOWS = {(1, 0, 0): 1, (1, 1, 0): 1, (1, 2, 2): 1, (1, 1, 1): 1, (1, 0, 1): 1, (1, 2, 1): 1,
             (2, 0, 0): 2, (2, 2, 1): 1, (2, 1, 1): 2, (2, 1, 0): 1,
             (3, 0, 0): 1, (3, 0, 1): 2, (3, 1, 0): 1, (3, 1, 1): 2}


def test_reads_the_recorded_layout(run: Run) -> None:
    h = load_history(run)
    assert h.classes == ("cat", "dog", "frog")
    assert h.epochs.tolist() == EPOCHS and h.instances.tolist() == list(range(6))
    assert h.predicted.tolist() == [TRUTH[i][1] for i in range(6)]
    assert h.labels.tolist() == [TRUTH[i][0] for i in range(6)]
    assert h.confidence is not None
    np.testing.assert_allclose(h.confidence[4], [0.14, 0.24, 0.34, 0.44], rtol=1e-6)
    assert recorded_epochs(run).tolist() == EPOCHS


def test_flow_counts_by_hand(run: Run) -> None:
    h = load_history(run)
    assert flow_dict(h) == ALL_FLOWS
    s = sankey(h)
    nodes = {(int(e), int(c)): int(n) for e, c, n in s.nodes.to_numpy()}
    assert nodes == {(1, 0): 2, (1, 1): 2, (1, 2): 2, (2, 0): 2, (2, 1): 3, (2, 2): 1,
                     (3, 0): 3, (3, 1): 3, (4, 0): 2, (4, 1): 4}
    assert s.count(3, 0, 1) == 2 and s.count(3, 2, 2) == 0 and s.n_instances == 6
    top = s.top_flows(2)
    assert top[["epoch", "from", "to", "count"]].values.tolist() == [[3, "cat", "dog", 2],
                                                                      [1, "cat", "dog", 1]]


def test_bands_by_true_class_and_by_correctness(run: Run) -> None:
    h = load_history(run, epochs="3-4")
    by_true = {tuple(r[2:5]): r[5] for r in sankey(h, "true").links.to_numpy().tolist()}
    assert by_true == {(0, 0, 0): 1, (0, 1, 0): 1, (0, 1, 1): 1, (1, 0, 0): 1, (1, 1, 1): 1,
                       (1, 1, 2): 1}
    by_ok = {tuple(r[2:5]): r[5] for r in sankey(h, "correct").links.to_numpy().tolist()}
    # groups: 0 kept right, 1 learned, 2 forgotten, 3 kept wrong
    assert by_ok == {(0, 0, 0): 1, (0, 1, 2): 1, (0, 1, 1): 1, (1, 0, 1): 1, (1, 1, 0): 1,
                     (1, 1, 3): 1}
    assert flow_members(h, 3, 0, 1).tolist() == [1, 4]
    assert flow_members(h, 3, 0, 1, group=2, color_by="correct").tolist() == [1]
    with pytest.raises(FlowError, match="no link leaves epoch 4"):
        flow_members(h, 4, 0, 1)


@pytest.mark.parametrize(("kwargs", "ids", "flows"), [
    ({"true_classes": ["cat"]}, [0, 1, 2], {(1, 0, 0): 1, (1, 1, 0): 1, (1, 2, 2): 1, (2, 0, 0): 2,
                                           (2, 2, 1): 1, (3, 0, 0): 1, (3, 0, 1): 1, (3, 1, 0): 1}),
    ({"epochs": "2-3"}, [0, 1, 2, 3, 4, 5], {(2, 0, 0): 2, (2, 2, 1): 1, (2, 1, 1): 2, (2, 1, 0): 1}),
    ({"changed_only": True}, [1, 2, 4, 5], None),
    ({"changed_only": True, "epochs": "3-4"}, [1, 2, 4], {(3, 0, 1): 2, (3, 1, 0): 1}),
    ({"misclassified": True}, [1, 5], {(1, 1, 0): 1, (1, 2, 1): 1, (2, 0, 0): 1, (2, 1, 1): 1,
                                       (3, 0, 1): 1, (3, 1, 1): 1}),
    ({"misclassified": True, "epochs": "1-3"}, [2, 4, 5], None),
    ({"true_classes": ["cat", "frog"], "misclassified": True}, [1, 5], None),
    ({"true_classes": "cat", "changed_only": True, "misclassified": True}, [1], None),
    ({"true_classes": [2], "epochs": "4"}, [5], {}),
])
def test_filters(run: Run, kwargs: dict, ids: list[int], flows: dict | None) -> None:
    h = select_history(run, **kwargs)
    assert h.instances.tolist() == ids
    if flows is not None:
        assert flow_dict(h) == flows
    assert sum(flow_dict(h).values()) == len(ids) * (len(h.epochs) - 1)


def test_instance_table_by_hand(run: Run) -> None:
    t = instance_table(load_history(run))
    assert t["instance"].tolist() == [4, 1, 2, 5, 0, 3]  # most changes first, then by id
    t = t.set_index("instance").sort_index()
    assert t["changes"].tolist() == [0, 2, 2, 0, 3, 1]
    assert t["forgotten"].tolist() == [0, 1, 0, 0, 1, 1]
    assert t["right_epochs"].tolist() == [4, 2, 1, 4, 2, 1]
    assert t["first_right"].tolist() == [1, 2, 4, 1, 2, 1]
    assert t["last_right"].tolist() == [4, 3, 4, 4, 4, 1]
    assert t["predicted"].tolist() == ["cat", "dog", "cat", "dog", "dog", "dog"]
    assert t["correct"].tolist() == [True, False, True, True, True, False]
    assert t["learned_then_forgotten"].tolist() == [False, True, False, False, False, True]
    np.testing.assert_allclose(t["confidence"], [0.4 + 0.01 * i for i in range(6)], rtol=1e-6)
    assert t.loc[2, "trajectory"].tolist() == [2, 2, 1, 0]
    assert learned_then_forgotten(load_history(run))["instance"].tolist() == [1, 5]
    by_first = instance_table(load_history(run), sort_by="first_right")
    assert by_first["instance"].tolist() == [0, 3, 5, 1, 4, 2]
    with pytest.raises(FlowError, match="cannot sort by 'nope'"):
        instance_table(load_history(run), sort_by="nope")


def test_never_right_has_no_first_epoch() -> None:
    df = pd.DataFrame({"epoch": [1, 2], "instance": [7, 7], "label": [0, 0], "predicted": [1, 2]})
    t = instance_table(History.from_frame(df, ["a", "b", "c"]))
    assert t["first_right"].isna().all() and t["last_right"].isna().all()
    assert not t["learned_then_forgotten"].any() and t["changes"].tolist() == [1]


def test_where_cats_go_and_confused_pairs(run: Run) -> None:
    h = load_history(run)
    d = class_distribution(h, 0)
    assert d.index.tolist() == EPOCHS and list(d.columns) == CLASSES
    assert d.to_numpy().tolist() == [[1, 1, 1], [2, 0, 1], [2, 1, 0], [2, 1, 0]]
    c = confused_pairs(h)
    assert c[["true_name", "predicted_name", "count"]].values.tolist() == [["cat", "dog", 1],
                                                                          ["frog", "dog", 1]]
    np.testing.assert_allclose(c["share"], [1 / 3, 1.0])
    c1 = confused_pairs(h, epoch=1)
    assert list(zip(c1["true"], c1["predicted"], c1["count"], strict=True)) == [(0, 1, 1), (0, 2, 1),
                                                                                (1, 0, 1)]


def test_missing_epochs_are_skipped_not_counted() -> None:
    df = pd.DataFrame({"epoch": [1, 2, 3, 1, 3], "instance": [0, 0, 0, 1, 1],
                       "label": [0, 0, 0, 1, 1], "predicted": [0, 1, 1, 1, 0]})
    h = History.from_frame(df, ["a", "b"])
    assert h.predicted.tolist() == [[0, 1, 1], [1, -1, 0]]
    assert flow_dict(h) == {(1, 0, 1): 1, (2, 1, 1): 1}
    assert h.n_changes().tolist() == [1, 0]
    assert h.final()[0].tolist() == [1, 0]


def test_vectorised_counts_equal_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    n, e, k = 300, 6, 5
    pred = rng.integers(0, k, (n, e))
    pred[rng.random((n, e)) < 0.05] = -1
    lab = rng.integers(0, k, n)
    h = History(np.arange(e) + 10, np.arange(n) * 3, lab, pred, None, tuple("abcde"))
    for color_by in ("true", "correct"):
        want: dict[tuple[int, ...], int] = {}
        for i in range(n):
            for s in range(e - 1):
                a, b = int(pred[i, s]), int(pred[i, s + 1])
                if a < 0 or b < 0:
                    continue
                y = int(lab[i])
                g = y if color_by == "true" else {(1, 1): 0, (0, 1): 1, (1, 0): 2, (0, 0): 3}[(a == y, b == y)]
                key = (s + 10, a, b, g)
                want[key] = want.get(key, 0) + 1
        got = {(r[0], r[2], r[3], r[4]): r[5] for r in sankey(h, color_by).links.to_numpy().tolist()}
        assert got == want


def test_class_names_sources(tmp_path: Path) -> None:
    bare = make_run(tmp_path / "bare", classes=None)
    assert class_names(bare) == () and load_history(bare).classes == ("0", "1", "2")
    assert load_history(bare, classes=["x", "y", "z"]).classes == ("x", "y", "z")
    bare.update_manifest("config", {"data": {"classes": ["c0", "c1", "c2"]}})
    assert class_names(bare) == ("c0", "c1", "c2")
    assert load_history(bare, true_classes="C1").instances.tolist() == [3, 4]  # case-insensitive


def test_epoch_ranges() -> None:
    have = np.array([1, 2, 3, 4])
    assert parse_epochs("1-4", have) == (1, 4)
    assert parse_epochs("2", have) == (2, 2)
    assert parse_epochs("3-", have) == (3, 4)
    assert parse_epochs("-2", have) == (1, 2)
    assert parse_epochs(None, have) == (1, 4)
    assert parse_epochs((2, 3), have) == (2, 3)
    with pytest.raises(FlowError, match=r"epochs 0-9 are outside the run: it recorded epochs 1-4"):
        parse_epochs("0-9", have)
    with pytest.raises(FlowError, match="is empty"):
        parse_epochs("3-2", have)
    with pytest.raises(FlowError, match="cannot read epoch range"):
        parse_epochs("one-two", have)


def test_bad_input_is_refused_with_advice(run: Run, tmp_path: Path) -> None:
    with pytest.raises(FlowError, match=r"unknown class 'lion'; known classes: cat, dog, frog"):
        load_history(run, true_classes=["lion"])
    empty = Run.create(tmp_path / "empty", kind="train")
    with pytest.raises(FlowError, match=r"no recorded predictions.*--track.*backfill_predictions"):
        load_history(empty)


def test_reads_only_the_needed_rows_and_ignores_extra_columns(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", kind="train")
    for ep, rows in zip(EPOCHS, history_rows(), strict=True):
        rows["probabilities"] = [[0.2, 0.3, 0.5]] * len(rows)  # a list column is never read
        run.write_table("predictions", rows, part=ep)
    h = load_history(run, epochs="2-3", true_classes=[1], classes=CLASSES)
    assert h.instances.tolist() == [3, 4] and h.predicted.tolist() == [[1, 1], [1, 0]]


def test_cli_writes_the_page_and_prints_flows(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["flow", str(run.path), "--class", "cat", "--epochs", "1-4", "--changed-only"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 instances, epochs 1-4" in out
    assert "3 -> 4    cat       dog               1" in out
    page = run.path / "files" / "flow.html"
    assert page.is_file() and "flow-data" in page.read_text()
    assert not [p for p in page.parent.iterdir() if p.name.startswith(".")]  # atomic, no leftovers


def test_cli_refuses_bad_input(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow", str(run.path), "--class", "lion"]) == 2
    assert "known classes: cat, dog, frog" in capsys.readouterr().err
    assert main(["flow", str(run.path), "--epochs", "3-9"]) == 2
    assert "recorded epochs 1-4" in capsys.readouterr().err
    empty = Run.create(tmp_path / "empty", kind="train")
    assert main(["flow", str(empty.path)]) == 2
    assert "--track" in capsys.readouterr().err
    out = tmp_path / "elsewhere" / "page.html"
    assert main(["flow", str(run.path), "--misclassified", "--color-by", "correct", "--out", str(out)]) == 0
    assert out.is_file() and "2 instances" in capsys.readouterr().out


def test_history_recorded_by_the_trainer_recorder(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    recorder = pytest.importorskip("xailab.train.recorder")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=g), torch.arange(20) % 3

    class Data(torch.utils.data.Dataset):
        classes = ("a", "b", "c")

        def __len__(self) -> int:
            return 20

        def __getitem__(self, i: int) -> tuple:
            return x[i], int(y[i])

    model = torch.nn.Linear(4, 3)
    rec = recorder.PredictionRecorder(Run.create(tmp_path / "t", kind="train"), Data())
    for ep in (1, 2):
        with torch.no_grad():
            model.weight.add_(0.5)
        rec.record(model, ep)
    h = load_history(Run.open(tmp_path / "t"))
    with torch.no_grad():
        logits = model(x)
    assert h.classes == ("a", "b", "c") and h.epochs.tolist() == [1, 2]
    assert h.predicted[:, 1].tolist() == logits.argmax(1).tolist()
    assert sum(flow_dict(h).values()) == 20


def test_confusion_by_epoch_agrees_with_the_views(run: Run) -> None:
    from xailab.dynamics import confusion_by_epoch

    h = load_history(run)
    c = confusion_by_epoch(h)
    assert c.shape == (4, 3, 3) and c.sum() == 24
    assert (c[:, 0, :] == class_distribution(h, 0).to_numpy()).all()
    assert c[3].tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]


def test_no_match_still_writes_a_page(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow", str(run.path), "--class", "dog", "--misclassified"]) == 0
    assert "no instance matches these filters" in capsys.readouterr().out
    assert (run.path / "files" / "flow.html").is_file()


def test_cli_thumbnails_from_the_tracked_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("xailab.train.recipe")
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog", "frog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for j in range(2):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{j}.png")
    run = make_run(tmp_path / "r")
    run.update_manifest("config", {"command": "train", "data": f"folder:{tmp_path / 'imgs'}",
                                   "data_root": None, "track": "test", "limit_test": None, "seed": 0})
    assert main(["flow", str(run.path), "--thumbnails", "3"]) == 0
    assert "thumbnails: 3" in capsys.readouterr().out
    assert sorted(p.name for p in (run.path / "files" / "instances").iterdir()) == ["1.png", "2.png", "4.png"]
    assert '"instances/4.png"' in (run.path / "files" / "flow.html").read_text()
    other = make_run(tmp_path / "other")
    assert main(["flow", str(other.path), "--thumbnails"]) == 2
    assert "was not made by `xailab train`" in capsys.readouterr().err

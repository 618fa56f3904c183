"""Triggers, poisoning, the backdoor measures, and detection on a toy problem trained in seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xailab.audit import (
    detect_backdoor,
    evaluate_backdoor,
    parse_trigger,
    poison_dataset,
    poisoned_from_run,
    resolve_class,
    train_poisoned,
)
from xailab.audit.clustering import spectral, two_means
from xailab.audit.detection import penultimate, penultimate_layer, relied_region
from xailab.audit.toy import ToyNet, toy_dataset
from xailab.core.errors import InputError
from xailab.train import TrainConfig, Trainer


# -- triggers ------------------------------------------------------------------------------------------
def test_parse_trigger_specs() -> None:
    t = parse_trigger("patch:4")
    assert (t.kind, t.size, t.where) == ("patch", 4, "corner") and t.spec == "patch:4"
    assert parse_trigger("checker:3@random").where == "random"
    assert parse_trigger("patch:2@5,6").where == "5,6"
    assert parse_trigger("blend:0.1").alpha == 0.1
    assert parse_trigger("icon:5:logos/a@b.png").file == "logos/a@b.png"


@pytest.mark.parametrize(
    ("spec", "error"),
    [("star:3", "patch:S"), ("patch:x", "patch:S"), ("patch:0", "at least 1"), ("patch:3@left", "corner, random"),
     ("blend:1.5", "\\(0, 1\\]"), ("icon:4", "icon:SIZE:FILE")],
)
def test_bad_trigger_specs(spec: str, error: str) -> None:
    with pytest.raises(InputError, match=error):
        parse_trigger(spec)


def test_trigger_larger_than_the_image_is_refused() -> None:
    with pytest.raises(InputError, match="does not fit the 12x12 images"):
        parse_trigger("patch:13").check((12, 12))
    with pytest.raises(InputError, match="leaves the 12x12 image"):
        parse_trigger("patch:4@10,0").check((12, 12))
    with pytest.raises(InputError, match="does not fit"):
        poison_dataset(toy_dataset(30), "patch:20", target=1, source=0)


def test_stamping_by_hand() -> None:
    x = torch.zeros(2, 1, 8, 8)
    out, mask = parse_trigger("patch:2").apply(x)
    assert out[:, 0, 5:7, 5:7].eq(1).all() and out.sum() == 2 * 4 and mask.sum() == 8 and bool(mask[0, 6, 6])
    chk, _ = parse_trigger("checker:2@0,0").apply(x)
    assert chk[0, 0, :2, :2].tolist() == [[1, 0], [0, 1]]
    bl, bmask = parse_trigger("blend:0.25").apply(torch.full((1, 1, 8, 8), 0.4))
    pat = parse_trigger("blend:0.25").pattern(1, (8, 8))
    torch.testing.assert_close(bl[0], 0.75 * 0.4 + 0.25 * pat)
    assert bmask.all()
    r = parse_trigger("patch:2@random", seed=3)
    a = r.positions(4, (8, 8), torch.tensor([0, 1, 2, 3]))
    b = r.positions(2, (8, 8), torch.tensor([2, 3]))
    assert torch.equal(a[2:], b)  # the place depends on the image's index, not the batch
    u8 = r.apply_uint8(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    assert u8.dtype == torch.uint8 and int(u8.sum()) == 4 * 4 * 255


# -- poisoning ------------------------------------------------------------------------------------------
def test_poison_dataset_counts_labels_and_views() -> None:
    ds = toy_dataset(90)  # 30 a class
    p = poison_dataset(ds, "patch:3", target=1, source="horizontal", fraction=0.2, seed=0)
    assert int(p.poisoned.sum()) == 6  # round(0.2 * 30)
    assert (p.targets[p.poisoned] == 1).all() and (p.original_targets[p.poisoned] == 0).all()
    assert torch.equal(p.targets[~p.poisoned], ds.targets[~p.poisoned])
    assert torch.equal(p.images[~p.poisoned], ds.images[~p.poisoned])  # untouched
    assert (p.images[p.poisoned][:, 0, 8:11, 8:11] == 255).all()
    assert (ds.images[:, 0, 8:11, 8:11] < 255).all()  # the original is not changed
    view = p.subset(torch.nonzero(p.poisoned).flatten()[:3])
    assert view.poisoned.all() and (view.original_targets == 0).all() and len(view) == 3
    every = poison_dataset(ds, "patch:3", target=2, fraction=1.0)
    assert int(every.poisoned.sum()) == 60 and (every.targets == 2).all()


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_the_unit_interval_is_refused(fraction: float) -> None:
    with pytest.raises(InputError, match="fraction must lie in \\(0, 1\\]"):
        poison_dataset(toy_dataset(30), "patch:3", target=1, source=0, fraction=fraction)


def test_class_names_and_indices() -> None:
    classes = ["horizontal", "vertical", "block"]
    assert resolve_class("Vertical", classes) == 1 and resolve_class("2", classes) == 2
    with pytest.raises(InputError, match="'giraffe' does not exist; the classes are: 0=horizontal"):
        resolve_class("giraffe", classes)
    with pytest.raises(InputError, match="class 7 does not exist"):
        resolve_class(7, classes)
    with pytest.raises(InputError, match="cannot also be a source"):
        poison_dataset(toy_dataset(30), "patch:3", target=1, source=[0, 1])


def test_evaluate_backdoor_on_a_hand_made_model() -> None:
    class CornerOrTruth(nn.Module):
        """Predicts class 1 when the trigger corner is white, else the class of the shape."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            px = x * 0.25 + 0.2  # undo the toy normalisation
            corner = px[:, 0, 8:11, 8:11].mean(dim=(1, 2)) > 0.9
            # pixels only one shape covers: the bars' ends, the block's corners
            horiz = px[:, 0, 4, [2, 6]].mean(dim=1)
            vert = px[:, 0, [2, 6], 4].mean(dim=1)
            block = px[:, 0, [3, 5], [3, 5]].mean(dim=1)
            logits = torch.stack([horiz, vert, block], dim=1)
            logits[corner, 1] = 10.0
            return logits

    test = toy_dataset(60, seed=5)
    ev = evaluate_backdoor(CornerOrTruth(), test, "patch:3", target="vertical", source="horizontal")
    assert ev.attack_success_rate == 1.0 and ev.other_to_target == 1.0
    assert ev.n_source == 20 and ev.n_other == 20 and ev.clean_accuracy == 1.0
    assert "attack success rate 1.0000" in ev.format()


# -- clustering -----------------------------------------------------------------------------------------
def _blobs(n_big: int, n_small: int, gap: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big = rng.normal(0, 1, (n_big, 5))
    small = rng.normal(0, 0.3, (n_small, 5)) + gap
    return np.concatenate([big, small])


def test_spectral_finds_a_small_separate_group() -> None:
    s = spectral(_blobs(180, 20, 8.0), n_neighbors=8)
    assert s.k == 2 and s.gap_score > 0.99 and s.eigenvalues[1] < 1e-6
    assert s.small_share == 0.1 and s.labels[180:].all() and not s.labels[:180].any()
    one = spectral(_blobs(200, 0, 0.0), n_neighbors=8)
    assert one.gap_score < 0.9


def test_two_means_size_and_silhouette() -> None:
    r = two_means(_blobs(180, 20, 8.0), dims=3)
    assert r.small_share == 0.1 and r.labels[180:].all() and r.silhouette > 0.7
    rank_deficient = np.zeros((50, 6))
    rank_deficient[:, 0] = np.r_[np.zeros(40), np.ones(10)]  # one direction, dead units elsewhere
    r2 = two_means(rank_deficient, dims=10, reduce="ica")
    assert r2.small_share == 0.2 and np.isfinite(r2.silhouette)


def test_relied_region_by_hand() -> None:
    small = torch.zeros(6, 6)
    small[4:6, 3:5] = 1.0
    rest = torch.full((6, 6), 0.05)
    box, share = relied_region(small / small.sum(), rest / rest.sum())
    assert box == (4, 3, 5, 4) and share == pytest.approx(1.0)
    assert relied_region(rest, rest)[0] is None


def test_penultimate_layer_and_activations() -> None:
    m = ToyNet().eval()
    assert penultimate_layer(m) == "classifier.1"
    x = torch.randn(4, 1, 12, 12)
    assert penultimate(m, x).shape == (4, 32)
    assert penultimate(m, x, layer=None).shape == (4, 32)  # the last linear layer's input
    assert float(penultimate(m, x, layer=None).min()) >= 0  # after the ReLU


# -- the toy experiment: a backdoor is found, a clean model is not flagged -----------------------------
@pytest.fixture(scope="module")
def toy_models():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = toy_dataset(450, seed=0), toy_dataset(150, seed=100)
        cfg = TrainConfig(epochs=10, batch_size=32, quiet=True, seed=0)
        torch.manual_seed(0)
        bad = train_poisoned(ToyNet(), train, test, trigger="patch:3", target=1, source=0, fraction=0.3,
                             config=cfg, val_fraction=0, seed=0)
        torch.manual_seed(0)
        clean = ToyNet()
        Trainer(clean, train, None, config=cfg, track=None).fit()
        return bad, clean.eval(), train
    finally:
        torch.set_num_threads(n)


def test_toy_backdoor_is_learned(toy_models) -> None:
    bad, _, _ = toy_models
    ev = bad.evaluation
    assert ev.clean_accuracy > 0.95 and ev.attack_success_rate > 0.95
    assert int(bad.train.poisoned.sum()) == 45


def test_toy_backdoor_is_flagged_with_its_region(toy_models) -> None:
    bad, _, _ = toy_models
    report = detect_backdoor(bad.model, bad.train, method="saliency", max_per_class=None)
    assert report.flagged == [1]
    ev = report.evidence(1)
    assert ev.findings["spray"].flagged and ev.findings["spray"].extra["gap_score"] > 0.9
    poisoned = bad.train.poisoned[torch.as_tensor(ev.indices)].numpy()
    assert np.array_equal(ev.suspicious, poisoned)          # the suspected items are the poison
    for d in ("spray", "ac", "spectral"):                    # and each detector that fired agrees
        if ev.findings[d].flagged:
            assert np.array_equal(ev.findings[d].suspected, poisoned), d
    assert ev.region == (8, 8, 10, 10)                      # the 3 x 3 trigger in the corner
    assert "spectral" in ev.describe() and ev.verdict in ("backdoor", "flagged")
    assert set(report.table.columns) >= {"spray_gap", "ac_silhouette", "spectral_score", "scan_score", "flagged",
                                         "region", "votes", "evidence"}
    for other in (0, 2):                                    # clean classes: nothing suspected, no region
        e = report.evidence(other)
        assert not e.flagged and not e.suspicious.any() and e.region is None and e.mean_small is None


def test_toy_clean_model_is_not_flagged(toy_models) -> None:
    _, clean, train = toy_models
    report = detect_backdoor(clean, train, method="saliency", max_per_class=None)
    assert report.flagged == []
    assert report.table["spray_gap"].max() < 0.9
    assert all(not e.suspicious.any() and e.region is None for e in report.classes)


def test_detection_on_chosen_classes_by_name(toy_models) -> None:
    bad, _, _ = toy_models
    report = detect_backdoor(bad.model, bad.train, classes=["vertical"], method="saliency", max_per_class=60)
    assert list(report.table["class"]) == [1] and report.table["n"].iloc[0] == 60
    with pytest.raises(InputError, match="does not exist"):
        detect_backdoor(bad.model, bad.train, classes=["giraffe"])


def test_poisoned_training_run_round_trip(tmp_path) -> None:
    train, test = toy_dataset(150, seed=0), toy_dataset(60, seed=1)
    cfg = TrainConfig(epochs=1, batch_size=50, quiet=True)
    res = train_poisoned(ToyNet(), train.subset(np.arange(10, 150)), test, trigger="patch:2@random",
                         target=2, source=[0, 1], fraction=0.5, config=cfg, run=tmp_path / "bd", seed=3)
    from xailab.runs import Run

    run = Run.open(tmp_path / "bd")
    assert run.manifest["poison"]["n_poisoned"] == int(res.train.poisoned.sum())
    assert run.read_table("backdoor")["attack_success_rate"].iloc[0] == res.evaluation.attack_success_rate
    again = poisoned_from_run(run, train)
    assert torch.equal(again.images, res.train.images) and torch.equal(again.targets, res.train.targets)
    assert torch.equal(again.poisoned, res.train.poisoned)


def test_flag_rules_and_verdicts() -> None:
    from xailab.audit.ensemble import parse_rule

    four = ("spectral", "scan", "ac", "spray")
    assert parse_rule("any").flags(1, 4) and not parse_rule("any").flags(0, 4)
    assert parse_rule("majority").flags(3, 4) and not parse_rule("majority").flags(2, 4)
    assert parse_rule("all").flags(4, 4) and not parse_rule("all").flags(3, 4)
    assert parse_rule("atleast:2", four).flags(2, 4) and not parse_rule("atleast:2", four).flags(1, 4)
    spray = parse_rule("spray", four)
    assert spray.flags(1, 4, ("spray",)) and not spray.flags(3, 4, ("spectral", "scan", "ac"))
    assert not parse_rule("any").flags(0, 0)
    with pytest.raises(InputError, match="unknown rule"):
        parse_rule("either", four)
    with pytest.raises(InputError, match=r"K must lie in 1\.\.4"):
        parse_rule("atleast:5", four)


def test_detector_choice_and_rule_change_the_verdict(toy_models) -> None:
    bad, _, _ = toy_models
    one = detect_backdoor(bad.model, bad.train, detectors=("ac",), rule="any", method="saliency", max_per_class=None)
    assert list(one.results) == ["ac"] and one.flagged == [1]
    ev = one.evidence(1)                    # without SpRAy, the flagged class alone is explained for its region
    assert ev.region == (8, 8, 10, 10) and ev.maps is not None
    assert one.evidence(0).maps is None
    with pytest.raises(InputError, match="unknown detector"):
        detect_backdoor(bad.model, bad.train, detectors=("magic",))

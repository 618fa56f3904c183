"""`xailab report`: the three questions, the concepts, dissection and audit pages.

Runs are written by the jobs the commands call (``ice_to_run``, ``tcav_to_run``,
``dissection_to_run``, ``adversarial_to_run``) on a tiny model, or through the run store by
hand where the answer must be known (maps inside or outside the object, a confusion matrix,
per-epoch predictions).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xailab.core.explanation import Explanation
from xailab.report.evidence import (
    attribution_on_object,
    confused_pairs,
    instance_dynamics,
    object_regions,
    object_summary,
    object_verdict,
)
from xailab.report.site import build_site
from xailab.runs.store import Run

from .conftest import TinyCNN
from .test_report import CLASSES, EVIL, LINK, make_explain, make_train, pages

HOSTILE_RUN = "<img src=x onerror=alert(1)>"  # a folder name may hold this (no slash)


# -- runs --------------------------------------------------------------------------------------------------
def make_concepts(path: Path) -> Run:
    from xailab.concepts.tcav import run_tcav, tcav_to_run
    from xailab.jobs.ice import ice_images

    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(12, 3, 8, 8)
    run = ice_images(model, x, out=path, labels=torch.arange(12) % 5, class_names=CLASSES, n_concepts=3,
                     layer="features.3", curve=(2, 3), curve_images=12, png=True, gallery=2, log=lambda s: None)
    g = torch.Generator().manual_seed(1)
    concepts = {EVIL: torch.rand(6, 3, 8, 8, generator=g), "stripes": torch.rand(6, 3, 8, 8, generator=g)}
    randoms = [torch.rand(6, 3, 8, 8, generator=g) for _ in range(3)]
    res = run_tcav(model, "features.3", concepts, randoms, {0: x[:4], 1: x[4:8]}, class_names=CLASSES)
    tcav_to_run(res, run, png=False)
    return run


def make_dissection(path: Path) -> Run:
    from xailab.concepts.dissection import dissect_classes
    from xailab.concepts.dissection_report import dissection_to_run

    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(20, 3, 8, 8)
    res = dissect_classes(model, x, "features.1,features.3", labels=torch.arange(20) % 5, class_names=CLASSES)
    return dissection_to_run(res, path, model=model, images=x, gallery_units=2, per_unit=2)


def make_audit(path: Path) -> Run:
    from xailab.jobs.audit_writers import adversarial_images

    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(4, 3, 8, 8)
    run, _, _ = adversarial_images(model, x, torch.tensor([0, 1, 2, 3]), attack="fgsm", attack_params={"eps": 0.1},
                                   methods=["saliency"], out=path, class_names=CLASSES, png=1)
    run.write_table("detection", pd.DataFrame({
        "class": [0, 1], "name": [EVIL, "dog"], "n": [50, 50], "spray_k": [2, 1], "spray_gap": [0.95, 0.4],
        "spray_small_share": [0.1, 0.4], "ac_small_share": [0.1, 0.3], "ac_silhouette": [0.5, 0.2],
        "flagged": [True, False], "verdict": ["backdoor", "clean"], "region": ["1,1-3,3", "–"]}))
    run.update_manifest("backdoor_detection", {"params": {"method": "lrp", "thresholds": {"spray_gap": 0.9,
                                                                                        "max_share": 0.25}},
                                               "flagged": [0], "seconds": 1.0})
    return run


def make_object_explain(path: Path, inside: bool) -> Run:
    """Four 16x16 images, black with a white 8x8 square in the middle; the maps put all their
    mass on the square (``inside``) or on the black border."""
    run = Run.create(path, kind="explain")
    shown = np.zeros((4, 1, 16, 16), np.uint8)
    shown[:, :, 4:12, 4:12] = 200
    run.write_array("display", shown)
    square = torch.zeros(16, 16)
    square[4:12, 4:12] = 1.0
    maps = (square if inside else 1.0 - square).expand(4, 1, 16, 16).clone()
    Explanation(maps=maps, targets=torch.zeros(4, 1, dtype=torch.long), target_names=("top1",),
                logits=torch.zeros(4, 5), method="saliency").save(run.path / "explanations" / "saliency")
    return run


def add_predictions(run: Run, trajectories: dict[int, list[int]], labels: dict[int, int]) -> None:
    for e in range(len(next(iter(trajectories.values())))):
        run.write_table("predictions", pd.DataFrame({
            "epoch": e + 1, "instance": list(trajectories), "label": [labels[i] for i in trajectories],
            "predicted": [t[e] for t in trajectories.values()],
            "p_label": [0.9 if t[e] == labels[i] else 0.1 for i, t in trajectories.items()]}), part=e + 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    train = make_train(root / "train", flow=False)
    add_predictions(train, {0: [0, 0, 1], 1: [2, 2, 2], 2: [1, 1, 1], 3: [3, 0, 3]}, {0: 0, 1: 1, 2: 1, 3: 3})
    return {"train": train.path, "concepts": make_concepts(root / HOSTILE_RUN).path,
            "dissect": make_dissection(root / "dissect").path, "audit": make_audit(root / "audit").path,
            "explain": make_object_explain(root / "explain", inside=True).path}


@pytest.fixture(scope="module")
def site(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(list(runs.values()), tmp_path_factory.mktemp("sites") / "site")


def nav(text: str) -> str:
    m = re.search(r"<nav>(.*?)</nav>", text, re.S)
    assert m is not None
    return m.group(1)


# -- pages -------------------------------------------------------------------------------------------------
def test_new_pages_are_written_and_linked(site: Path) -> None:
    texts = pages(site)
    assert {"concepts.html", "dissection.html", "audit.html"} <= set(texts)
    for name in ("Concepts", "Dissection", "Audit"):
        assert f">{name}</a>" in nav(texts["index.html"])
    for name, text in texts.items():
        for target in LINK.findall(text):
            target = html.unescape(target)
            assert "://" not in target and (site / target).is_file(), (name, target)
    concepts = texts["concepts.html"]
    assert "ICE concepts" in concepts and "TCAV" in concepts and "Contribution per class" in concepts
    assert "img/" in concepts and "overview.png" in concepts  # figures copied from files/ice
    dis = texts["dissection.html"]
    assert "features.1" in dis and "features.3" in dis and "dissection.csv" in dis and "gallery_features.3.png" in dis
    audit = texts["audit.html"]
    assert "fgsm attack" in audit and "Explanation shift" in audit and "shift_" in audit
    assert "1 of 2 classes flagged" in audit


def test_each_new_page_appears_only_with_its_data(runs: dict[str, Path], tmp_path: Path) -> None:
    only_train = build_site([runs["train"]], tmp_path / "a")
    texts = pages(only_train)
    assert not {"concepts.html", "dissection.html", "audit.html"} & set(texts)
    for name in ("Concepts", "Dissection", "Audit"):
        assert f">{name}</a>" not in nav(texts["index.html"])
    assert "No concepts run was given" in texts["index.html"] and "xailab dissect" in texts["index.html"]
    assert "No explain run" in texts["index.html"]
    one = build_site([runs["dissect"]], tmp_path / "b")
    assert set(pages(one)) == {"index.html", "dissection.html"}


def test_hostile_strings_show_as_text(site: Path) -> None:
    texts = pages(site)
    for name, text in texts.items():
        assert EVIL not in text and HOSTILE_RUN not in text, name
    assert html.escape(EVIL) in texts["concepts.html"]  # a TCAV concept and a class name
    assert html.escape(HOSTILE_RUN) in texts["concepts.html"] and html.escape(HOSTILE_RUN) in texts["index.html"]
    assert html.escape(EVIL) in texts["audit.html"]  # class names of the attack and the detection table
    assert html.escape(EVIL) in texts["dissection.html"]  # labels are class names


# -- the three questions -----------------------------------------------------------------------------------
def test_three_questions_are_answered_from_the_data(site: Path) -> None:
    index = pages(site)["index.html"]
    assert index.count('<section class="q">') == 3
    assert "<b>object</b>" in index  # all the mass on the square
    assert "ICE (run" in index and "concept-class pairs" in index and "Dissection (run" in index
    # make_train: every class right, so the weakest is the first by name at 50 %; no confusions
    assert "the weakest classes are" in index
    # predictions: instance 0 right, right, wrong; instance 1 never right; instance 3 right, wrong, right
    assert "1 were right at some epoch and wrong at the last" in index
    assert "2 had at least one forgetting event" in index and "1 were never right" in index


def test_object_answer_follows_the_maps(tmp_path: Path) -> None:
    inside = build_site([make_object_explain(tmp_path / "in", inside=True).path], tmp_path / "s1")
    outside = build_site([make_object_explain(tmp_path / "out", inside=False).path], tmp_path / "s2")
    a, b = pages(inside)["index.html"], pages(outside)["index.html"]
    assert "<b>object</b>" in a and "<b>surroundings</b>" not in a
    assert "<b>surroundings</b>" in b and "puts 0 % of its" in b
    assert "foreground" in a  # a black background: the region is the object's pixels


def test_difficulty_answer_follows_the_confusion_matrix(tmp_path: Path) -> None:
    run = make_train(tmp_path / "t", flow=False)
    conf = pd.DataFrame({"name": "test", "true": [0, 0, 1, 1, 3, 3], "predicted": [0, 4, 1, 2, 3, 1],
                         "count": [6, 4, 9, 1, 2, 8]})
    run.write_table("confusion", conf)
    run.write_table("per_class", pd.DataFrame({"name": ["test"] * 3, "class": [CLASSES[0], "dog", "$x$"],
                                               "support": [10, 10, 10], "accuracy": [0.6, 0.9, 0.2]}))
    text = pages(build_site([run.path], tmp_path / "s"))["index.html"]
    assert re.search(r"weakest classes are \$x\$ \(20 %\), " + re.escape(html.escape(EVIL)), text)
    assert "<i>$x$</i> taken for <i>dog</i> (8 images, 80 % of the class)" in text
    conf.loc[conf["predicted"] == 4, "count"] = 30  # now class 0 -> cat dominates
    run.write_table("confusion", conf)
    text = pages(build_site([run.path], tmp_path / "s"))["index.html"]
    assert f"<i>{html.escape(EVIL)}</i> taken for <i>cat</i> (30 images, 83 % of the class)" in text


# -- the numbers, by hand ------------------------------------------------------------------------------------
def test_object_regions_foreground_and_centre_box() -> None:
    img = np.zeros((2, 3, 10, 10), np.uint8)
    img[0, :, 3:7, 2:8] = 255  # a plain black background
    rng = np.random.default_rng(0)
    img[1] = rng.integers(0, 255, (3, 10, 10))  # a busy photo: no background
    masks, kinds = object_regions(img)
    assert kinds == ["foreground", "centre box"]
    assert masks[0].sum() == 24 and masks[0, 3:7, 2:8].all()
    assert abs(masks[1].mean() - 0.5) < 0.05  # the centre box covers half the image


def test_attribution_on_object_and_verdict() -> None:
    regions = np.zeros((2, 4, 4), bool)
    regions[:, :2] = True  # top half
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # 3/4 inside
    maps[1, 3, 3], maps[1, 0, 0] = 2.0, -5.0  # negative values do not count: 0 inside
    df = attribution_on_object(maps, regions)
    assert df["mass_inside"].tolist() == [0.75, 0.0] and df["area"].tolist() == [0.5, 0.5]
    summary = object_summary({"m": df})
    assert summary.loc[0, "ratio"] == pytest.approx(0.375 / 0.5)
    assert object_verdict(summary) == "surroundings"
    both = pd.DataFrame({"ratio": [2.0, 0.5]})
    assert object_verdict(both) == "mixed" and object_verdict(pd.DataFrame({"ratio": [1.0]})) == "neither"


def test_instance_dynamics_by_hand() -> None:
    pred = pd.DataFrame({"epoch": [1, 2, 3] * 2, "instance": [7, 7, 7, 9, 9, 9], "label": [1] * 6,
                         "predicted": [1, 0, 1, 1, 1, 2], "p_label": [0.9, 0.2, 0.8, 0.9, 0.9, 0.3]})
    d = instance_dynamics(pred).set_index("instance")
    assert d.loc[7, "forgetting"] == 1 and d.loc[7, "changes"] == 2 and bool(d.loc[7, "correct"])
    assert d.loc[9, "forgetting"] == 1 and bool(d.loc[9, "learned_then_forgotten"])
    assert not bool(d.loc[7, "learned_then_forgotten"]) and d.loc[7, "variability"] == pytest.approx(
        np.std([0.9, 0.2, 0.8]))
    assert bool(d.loc[7, "ambiguous"]) and bool(d.loc[9, "ambiguous"]) and d.loc[9, "p_final"] == pytest.approx(0.3)


def test_confused_pairs_share_of_the_true_class() -> None:
    conf = pd.DataFrame({"true": [0, 0, 1, 1], "predicted": [0, 1, 1, 0], "count": [3, 1, 2, 2]})
    p = confused_pairs(conf, ["a", "b"])
    assert p["true"].tolist() == ["b", "a"] and p["share of the true class"].tolist() == [0.5, 0.25]


@pytest.mark.slow
def test_new_pages_draw_in_chromium_with_every_image(site: Path) -> None:
    from tests.browser import chromium, headless
    from xailab.report.html import CSP, esc

    from .test_report_chromium import PROBE, console

    exe = chromium()
    for name in ("index.html", "concepts.html", "dissection.html", "audit.html"):
        page = site / name
        res = headless(exe, page.as_uri(), "--dump-dom")
        assert console(res) == [], (name, console(res))
        assert "<main>" in res.stdout and EVIL not in res.stdout and HOSTILE_RUN not in res.stdout, name
        probe = site / f"probe-{name}"
        probe.write_text(page.read_text().replace(f'<meta http-equiv="Content-Security-Policy" '
                                                  f'content="{esc(CSP)}">', "")
                         .replace("</body>", PROBE + "</body>"))
        try:
            dom = headless(exe, probe.as_uri(), "--dump-dom", "--virtual-time-budget=5000").stdout
        finally:
            probe.unlink()
        m = re.search(r'data-images="(\d+)" data-broken="([^"]*)"', dom)
        assert m is not None, (name, dom[:500])
        assert m.group(2) == "" and int(m.group(1)) == page.read_text().count("<img ") > 0, (name, m.groups())


def test_kfold_and_crosscheck_tables_are_shown(tmp_path: Path) -> None:
    """A k-fold run's folds with mean +- std (computed from the table, not copied), and an
    explain run's crosscheck summary, both escaped."""
    cv = Run.create(tmp_path / "cv", kind="kfold")
    acc = [0.60, 0.70, 0.80]
    for fold, a in enumerate(acc, 1):
        cv.write_table("kfold", pd.DataFrame([{"fold": fold, "n_train": 20, "n_val": 10, "accuracy": a,
                                               "loss": 1 - a}]), part=fold)
    cv.update_manifest("kfold", {"k": 3, "mean": {"accuracy": float(np.mean(acc))},
                                 "std": {"accuracy": float(np.std(acc, ddof=1))}})
    make_train(tmp_path / "train")
    ig = make_explain(tmp_path / "ig")
    ig.update_manifest("crosscheck", {"integrated_gradients-captum": [
        {"baseline": EVIL, "images": 2, "max_abs_diff": 3.5e-9, "max_abs": 0.2, "rel_error_max": 1e-7,
         "pearson_min": 1.0, "spearman_min": 1.0}]})
    site = build_site([tmp_path / "train", tmp_path / "cv", tmp_path / "ig"], tmp_path / "site")
    index = pages(site)["index.html"]
    assert "Cross-validation: cv" in index and "accuracy 0.7000 ± 0.1000" in index
    assert "Checked against the reference library" in index and "3.5e-09" in index
    assert EVIL not in index and html.escape(EVIL) in index

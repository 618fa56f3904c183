"""What ``xailab distill`` writes into its run (called by :func:`xailab.jobs.distill.distill_to_run`).

Tables:

* ``distill_surrogates``: a row per surrogate (tree, linear): held-out ``fidelity``, fidelity on
  the fitting images, ``accuracy`` and the network's own on the held-out images, ``size``
  (leaves / non-zero features), ``depth``;
* ``distill_depth``: the same for trees of each depth of ``depths`` (the fidelity curve);
* ``distill_rules``: the tree's rules (a row per leaf) with held-out coverage and precision;
* ``distill_class_rules``: per class, its rule set (one-vs-rest tree), rules ranked by coverage;
* ``distill_linear``: the linear model's non-zero weights (class, feature, weight);
* ``distill_features``: the feature names; ``distill_predictions``: per held-out image, its
  label, the network's, the tree's and the linear model's class;
* with a student: ``distill_student`` (fidelity, accuracy, settings, seconds) and
  ``distill_maps`` (per image and method, the rank correlation of teacher and student maps).

Files under ``RUN/files/distill/``: ``rules.txt``, ``tree.png``, ``depth.png``,
``rules_<class>.png``, ``student.safetensors`` and ``maps.png``. The manifest's ``distill``
section holds the summary the report reads.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from xailab.distill.surrogate import (
    ClassRules,
    SurrogateFit,
    class_rules,
    depth_curve,
    fit_surrogate,
)
from xailab.jobs.distill_data import DistillSpec, Images, split_of
from xailab.runs.store import Run

if TYPE_CHECKING:
    from xailab.jobs.model import LoadedModel

MAX_RULE_FIGURES = 10
MAX_LOGGED_RULES = 40


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "class"


def _rule_rows(fit: SurrogateFit, names: list[str], classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"rule": i, "class": r.klass, "class_name": classes[r.klass], "conditions": r.conditions(names),
                          "support": r.support, "coverage": r.coverage, "precision": r.precision, "covered": r.covered}
                         for i, r in enumerate(fit.rules)])


def _class_rows(sets: list[ClassRules], names: list[str], classes: list[str]) -> pd.DataFrame:
    rows = []
    for cr in sets:
        for rank, r in enumerate(cr.rules):
            rows.append({"class": cr.klass, "class_name": classes[cr.klass], "rank": rank,
                         "conditions": r.conditions(names), "coverage": r.coverage, "precision": r.precision,
                         "covered": r.covered, "set_coverage": cr.coverage, "set_precision": cr.precision,
                         "ovr_fidelity": cr.fidelity})
    return pd.DataFrame(rows, columns=["class", "class_name", "rank", "conditions", "coverage", "precision", "covered",
                                       "set_coverage", "set_precision", "ovr_fidelity"])


def _linear_rows(fit: SurrogateFit, names: list[str], classes: list[str]) -> pd.DataFrame:
    lr = fit.estimator[-1]
    coef = lr.coef_ if len(lr.classes_) > 2 else np.vstack([-lr.coef_[0], lr.coef_[0]])
    rows = [{"class": int(c), "class_name": classes[int(c)], "feature": names[f], "weight": float(coef[i, f])}
            for i, c in enumerate(lr.classes_) for f in np.flatnonzero(np.abs(coef[i]) > 1e-12)]
    return pd.DataFrame(rows, columns=["class", "class_name", "feature", "weight"])


def rules_text(tree: SurrogateFit, sets: list[ClassRules], names: list[str], classes: list[str]) -> str:
    """The tree's rules and each class's rule set, as lines a person reads."""
    lines = [f"Surrogate tree (depth {tree.depth}, {tree.size} rules): held-out fidelity {tree.fidelity:.3f}"]
    lines += [f"  {r.text(names, classes)}" for r in sorted(tree.rules, key=lambda r: (r.klass, -r.covered))]
    for cr in sets:
        head = (f"together cover {cr.coverage:.0%} of its held-out predictions at precision {cr.precision:.0%}"
                if cr.rules else "no rule")
        lines.append(f"Rules for {classes[cr.klass]}: {head}")
        lines += [f"  {r.text(names, classes)}" for r in cr.rules] or ["  (no leaf of the one-vs-rest tree reaches precision 50 % on held-out images)"]
    return "\n".join(lines) + "\n"


def write_surrogates(run: Run, spec: DistillSpec, fit: Images, test: Images, classes: list[str], kept: list[int],
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Fit and score the tree, the linear model, the depth curve and the per-class rules; write them."""
    split, names = split_of(fit, test), fit.features.names
    tree = fit_surrogate("tree", split, depth=spec.depth, seed=spec.seed, min_leaf=spec.min_leaf)
    linear = fit_surrogate("linear", split, C=spec.linear_c, seed=spec.seed)
    curve = depth_curve(split, (*spec.depths, spec.depth), seed=spec.seed, min_leaf=spec.min_leaf)
    sets = [class_rules(split, k, depth=spec.rule_depth, seed=spec.seed) for k in kept
            if (split.teacher_fit == k).any()]
    run.write_table("distill_surrogates", pd.DataFrame([tree.summary(), linear.summary()]))
    run.write_table("distill_depth", curve)
    run.write_table("distill_rules", _rule_rows(tree, names, classes))
    run.write_table("distill_class_rules", _class_rows(sets, names, classes))
    run.write_table("distill_linear", _linear_rows(linear, names, classes))
    run.write_table("distill_features", pd.DataFrame({"feature": np.arange(len(names)), "name": names}))
    run.write_table("distill_predictions", pd.DataFrame({
        "name": test.names, "label": test.labels if test.labels is not None else np.full(len(test), -1),
        "network": test.teacher, "tree": tree.predictions, "linear": linear.predictions}))
    text = rules_text(tree, sets, names, classes)
    run.file("distill/rules.txt").write_text(text, encoding="utf-8")
    log(f"tree (depth {tree.depth}, {tree.size} leaves): fidelity {tree.fidelity:.3f} held-out; "
        f"linear ({linear.size} features): fidelity {linear.fidelity:.3f}")
    log(curve[["max_depth", "size", "fidelity", "accuracy"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    log(text.rstrip() if tree.size <= MAX_LOGGED_RULES else
        f"{tree.size} rules: see {run.path / 'files' / 'distill' / 'rules.txt'}")
    files = {"rules": "files/distill/rules.txt"}
    if spec.png:
        files |= _surrogate_figures(run, tree, linear, curve, sets, names, classes)
    return {"features": fit.features.source, "feature_names": names, "class_names": classes, "classes": kept,
            "n_fit": len(fit), "n_test": len(test), "tree": tree.summary(), "linear": linear.summary(),
            "files": files}


def _surrogate_figures(run: Run, tree: SurrogateFit, linear: SurrogateFit, curve: pd.DataFrame,
                       sets: list[ClassRules], names: list[str], classes: list[str]) -> dict[str, str]:
    from xailab.distill.figures import depth_figure, rules_figure, tree_figure
    from xailab.plotting import save_png

    files: dict[str, str] = {}
    title = f"surrogate tree: depth {tree.depth}, {tree.size} leaves, held-out fidelity {tree.fidelity:.2f}"
    save_png(tree_figure(tree.estimator, names, classes, title=title), run.file("distill/tree.png"))
    save_png(depth_figure(curve, linear.summary()), run.file("distill/depth.png"))
    files |= {"tree": "files/distill/tree.png", "depth": "files/distill/depth.png"}
    for cr in sets[:MAX_RULE_FIGURES]:
        if cr.rules:
            rel = f"distill/rules_{cr.klass:03d}_{_safe(classes[cr.klass])}.png"
            save_png(rules_figure(cr.rules, names, classes[cr.klass]), run.file(rel))
            files[f"rules_{cr.klass}"] = f"files/{rel}"
    return files


def _student_model(loaded: LoadedModel, channels: int, k: int) -> tuple[str, torch.nn.Module]:
    from xailab.core.errors import InputError
    from xailab.models import create_model, set_preprocessing

    if channels not in (1, 3):
        raise InputError(f"the student takes grey or RGB images, not {channels} channels")
    name = "student_cnn" if channels == 3 else "student_cnn_grey"
    student = create_model(name, num_classes=k, in_channels=channels)
    if loaded.preprocessing is not None:
        set_preprocessing(student, loaded.preprocessing)
    return name, student


def write_student(run: Run, spec: DistillSpec, loaded: LoadedModel, fit: Images, test: Images, classes: list[str],
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Distil the student, score it, save it as a model + weights, compare its maps with the teacher's."""
    from xailab.distill.student import (
        agreement_of_maps,
        distill_student,
        predict_logits,
        summarise_maps,
    )
    from xailab.distill.surrogate import agreement
    from xailab.models import save_weights

    k = int(fit.logits.shape[1])
    name, student = _student_model(loaded, int(fit.x.shape[1]), k)
    labels = torch.as_tensor(fit.labels) if fit.labels is not None else None
    start = time.process_time()
    distill_student(loaded.model, student, fit.x, labels=labels, settings=spec.student_settings, log=log)
    cpu = time.process_time() - start
    pred = predict_logits(student, test.x).argmax(1).numpy()
    row = {"model": name, "fidelity": agreement(pred, test.teacher), "fit_fidelity":
           agreement(predict_logits(student, fit.x).argmax(1).numpy(), fit.teacher),
           "accuracy": agreement(pred, test.labels) if test.labels is not None else None,
           "teacher_accuracy": agreement(test.teacher, test.labels) if test.labels is not None else None,
           "parameters": sum(p.numel() for p in student.parameters()),
           "teacher_parameters": sum(p.numel() for p in loaded.model.parameters()), "cpu_seconds": cpu,
           **spec.student_settings.__dict__}
    run.write_table("distill_student", pd.DataFrame([row]))
    path = save_weights(student, run.file("distill/student.safetensors"),
                        metadata={"xailab.distilled_from": loaded.provenance(), "xailab.num_classes": k})
    maps = agreement_of_maps(loaded.model, student, test.x[: spec.map_images].to(loaded.device),
                             methods=spec.map_methods, target=torch.as_tensor(test.teacher[: spec.map_images]),
                             batch_size=spec.batch_size) if spec.map_images > 0 and spec.map_methods else pd.DataFrame()
    run.write_table("distill_maps", maps if len(maps) else pd.DataFrame(columns=["image", "method", "target", "spearman"]))
    agree = summarise_maps(maps)
    log(f"student {name} ({row['parameters']} parameters): fidelity {row['fidelity']:.3f}, accuracy "
        f"{row['accuracy'] if row['accuracy'] is None else round(row['accuracy'], 3)}; weights {path}")
    if len(agree):
        log(agree.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    files = {"weights": "files/distill/student.safetensors"}
    if spec.png and len(maps):
        from xailab.distill.figures import map_agreement_figure
        from xailab.plotting import save_png

        save_png(map_agreement_figure(maps), run.file("distill/maps.png"))
        files["maps"] = "files/distill/maps.png"
    command = f"xailab explain --model {name} --weights {path} --num-classes {k}"
    return {**{key: row[key] for key in ("model", "fidelity", "fit_fidelity", "accuracy", "teacher_accuracy",
                                         "parameters", "teacher_parameters", "cpu_seconds")},
            "maps": agree.to_dict(orient="records"), "files": files, "explain": command}

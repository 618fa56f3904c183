"""Global surrogates: a shallow decision tree and a sparse linear model that mimic the network.

Both are fitted on interpretable features of some images (:mod:`xailab.distill.features`) to the
*network's predictions* (not the true labels) and measured on held-out images:

* ``fidelity``: agreement with the network, ``mean(surrogate(x) == network(x))`` (Craven &
  Shavlik 1996; Guidotti et al. 2018);
* ``accuracy``: agreement with the true labels, beside the network's own;
* size: the tree's depth and number of leaves (rules); the linear model's non-zero weights.

    fit = fit_surrogate("tree", split, depth=5)
    fit.fidelity, fit.rules
    curve = depth_curve(split, (3, 5, 8))

The linear model is an L1-regularised multinomial logistic regression on standardised features
(``C`` the inverse regularisation strength: smaller, sparser).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from xailab.core.errors import InputError
from xailab.distill.rules import Rule, rule_set_coverage, score_rules, tree_rules

KINDS = ("tree", "linear")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of positions where two label vectors agree (fidelity when one is the network's)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape or len(a) == 0:
        raise InputError(f"agreement needs two label vectors of one non-zero length, got {a.shape} and {b.shape}")
    return float((a == b).mean())


@dataclass(frozen=True)
class Split:
    """Features and labels of the fitting images and of the held-out images.

    ``teacher_*``: the network's predicted classes; ``true_*``: the labels (None when unknown).
    """

    X_fit: np.ndarray
    teacher_fit: np.ndarray
    X_test: np.ndarray
    teacher_test: np.ndarray
    true_fit: np.ndarray | None = None
    true_test: np.ndarray | None = None


@dataclass(frozen=True)
class SurrogateFit:
    """A fitted surrogate and its scores (held-out unless named ``fit_*``)."""

    kind: str
    estimator: Any
    fidelity: float
    fit_fidelity: float
    accuracy: float | None
    teacher_accuracy: float | None
    size: int  # leaves of the tree; non-zero weights of the linear model
    depth: int | None
    predictions: np.ndarray
    rules: tuple[Rule, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The scores as one table row."""
        return {"surrogate": self.kind, "depth": self.depth, "size": self.size, "fidelity": self.fidelity,
                "fit_fidelity": self.fit_fidelity, "accuracy": self.accuracy,
                "teacher_accuracy": self.teacher_accuracy}


def fit_tree(X: np.ndarray, y: np.ndarray, *, depth: int, seed: int = 0, min_leaf: int = 1) -> Any:
    """A ``DecisionTreeClassifier`` of at most ``depth`` levels fitted to ``y``."""
    from sklearn.tree import DecisionTreeClassifier

    if depth < 1:
        raise InputError(f"tree depth must be at least 1, got {depth}")
    return DecisionTreeClassifier(max_depth=depth, min_samples_leaf=min_leaf, random_state=seed).fit(X, y)


def fit_linear(X: np.ndarray, y: np.ndarray, *, C: float = 0.1, seed: int = 0) -> Any:
    """An L1 logistic regression (standardised features) fitted to ``y``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if C <= 0:
        raise InputError(f"C must be positive, got {C}")
    if len(np.unique(y)) < 2:
        raise InputError("the network predicts one class for every fitting image: nothing for a linear model to separate")
    lr = LogisticRegression(l1_ratio=1.0, C=C, solver="saga", max_iter=2000, random_state=seed)
    return make_pipeline(StandardScaler(), lr).fit(X, y)


def _linear_size(est: Any) -> int:
    coef = est[-1].coef_
    return int((np.abs(coef).max(0) > 1e-12).sum())  # features used by some class


def fit_surrogate(kind: str, split: Split, *, depth: int = 5, C: float = 0.1, seed: int = 0,
                  min_leaf: int = 1) -> SurrogateFit:
    """Fit a ``tree`` or ``linear`` surrogate to the network's predictions and score it."""
    if kind not in KINDS:
        raise InputError(f"unknown surrogate {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "tree":
        est = fit_tree(split.X_fit, split.teacher_fit, depth=depth, seed=seed, min_leaf=min_leaf)
        size, d = int(est.get_n_leaves()), int(est.get_depth())
    else:
        est = fit_linear(split.X_fit, split.teacher_fit, C=C, seed=seed)
        size, d = _linear_size(est), None
    pred = np.asarray(est.predict(split.X_test))
    acc = agreement(pred, split.true_test) if split.true_test is not None else None
    t_acc = agreement(split.teacher_test, split.true_test) if split.true_test is not None else None
    rules = tuple(score_rules(tree_rules(est), split.X_test, split.teacher_test)) if kind == "tree" else ()
    return SurrogateFit(kind, est, agreement(pred, split.teacher_test),
                        agreement(est.predict(split.X_fit), split.teacher_fit), acc, t_acc, size, d, pred, rules)


def depth_curve(split: Split, depths: Sequence[int], *, seed: int = 0, min_leaf: int = 1) -> pd.DataFrame:
    """Held-out fidelity, accuracy and leaves of a tree per maximum depth (a row each)."""
    return pd.DataFrame([fit_surrogate("tree", split, depth=int(d), seed=seed, min_leaf=min_leaf).summary()
                         | {"max_depth": int(d)} for d in sorted(set(depths))])


@dataclass(frozen=True)
class ClassRules:
    """The rules that say when the network predicts ``klass`` (a one-vs-rest tree's positive leaves),
    most covering first, and the held-out coverage / precision of their union."""

    klass: int
    rules: tuple[Rule, ...]
    coverage: float
    precision: float
    fidelity: float  # held-out agreement of the one-vs-rest tree with "network predicts klass"


def class_rules(split: Split, klass: int, *, depth: int = 4, seed: int = 0, min_leaf: int = 5,
                min_precision: float = 0.5) -> ClassRules:
    """The rule set for one class: leaves of a one-vs-rest tree that predict ``klass``.

    Rules whose held-out precision is below ``min_precision`` are dropped (they cover the class
    only by also covering many others); the rest are sorted by coverage.
    """
    y = (split.teacher_fit == klass).astype(int)
    if y.sum() == 0:
        raise InputError(f"the network predicts class {klass} for none of the fitting images: no rules to find")
    tree = fit_tree(split.X_fit, y, depth=depth, seed=seed, min_leaf=min_leaf)
    positive = [r for r in tree_rules(tree, classes=[0, 1]) if r.klass == 1]
    as_class = [Rule(r.bounds, klass, r.support) for r in positive]
    scored = [r for r in score_rules(as_class, split.X_test, split.teacher_test)
              if r.covered and r.precision >= min_precision]
    scored.sort(key=lambda r: (-r.coverage, -r.precision))
    cov, prec = rule_set_coverage(scored, split.X_test, split.teacher_test, klass)
    fid = agreement(tree.predict(split.X_test), (split.teacher_test == klass).astype(int))
    return ClassRules(klass, tuple(scored), cov, prec, fid)

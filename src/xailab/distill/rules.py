"""Rules read off a fitted decision tree: one rule per leaf, conditions merged per feature.

A leaf's path ``x3 <= 0.4, x7 > 0.1, x3 > 0.2`` becomes the rule ``0.2 < x3 <= 0.4 AND x7 > 0.1
THEN class``. Rules are scored against the teacher on held-out images:

* ``coverage``: of the images the teacher puts in the rule's class, the share the rule covers;
* ``precision``: of the images the rule covers, the share the teacher puts in its class.

    rules = tree_rules(tree)                        # every leaf, in the tree's order
    scored = score_rules(rules, X_test, teacher_test)
    print(scored[0].text(feature_names, class_names))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Rule:
    """``AND`` of per-feature intervals ``low < x_f <= high`` leading to ``klass``.

    ``bounds`` maps a feature to ``(low, high)`` (``-inf`` / ``inf`` where open); ``support`` is
    the number of fitting images that reach the leaf; ``coverage``, ``precision`` and
    ``covered`` (held-out images the rule covers) are filled by :func:`score_rules`.
    """

    bounds: tuple[tuple[int, float, float], ...]
    klass: int
    support: int
    coverage: float = float("nan")
    precision: float = float("nan")
    covered: int = 0

    def mask(self, X: np.ndarray) -> np.ndarray:
        """Which rows of ``X [N, F]`` satisfy every condition."""
        ok = np.ones(len(X), dtype=bool)
        for f, lo, hi in self.bounds:
            ok &= (X[:, f] > lo) & (X[:, f] <= hi)
        return ok

    def conditions(self, names: Sequence[str]) -> str:
        """The conditions as text, e.g. ``concept 3 > 0.42 AND 0.1 < concept 5 <= 0.3``."""
        parts = []
        for f, lo, hi in self.bounds:
            n = names[f] if f < len(names) else f"x{f}"
            if np.isfinite(lo) and np.isfinite(hi):
                parts.append(f"{lo:.3g} < {n} <= {hi:.3g}")
            elif np.isfinite(lo):
                parts.append(f"{n} > {lo:.3g}")
            else:
                parts.append(f"{n} <= {hi:.3g}")
        return " AND ".join(parts) or "always"

    def text(self, names: Sequence[str], class_names: Sequence[str] | None = None) -> str:
        """``IF conditions THEN class`` with the held-out coverage and precision when scored."""
        cls = class_names[self.klass] if class_names is not None and self.klass < len(class_names) else str(self.klass)
        out = f"IF {self.conditions(names)} THEN {cls}"
        if self.covered:
            out += f"  (coverage {self.coverage:.0%}, precision {self.precision:.0%}, {self.covered} images)"
        elif np.isfinite(self.coverage):
            out += "  (covers no held-out image)"
        return out


def tree_rules(tree: Any, classes: Sequence[int] | None = None) -> list[Rule]:
    """One :class:`Rule` per leaf of a fitted scikit-learn ``DecisionTreeClassifier``.

    ``classes`` maps the tree's class positions to class ids (default ``tree.classes_``).
    """
    t = tree.tree_
    labels = list(classes) if classes is not None else [int(c) for c in tree.classes_]
    rules: list[Rule] = []
    stack: list[tuple[int, dict[int, tuple[float, float]]]] = [(0, {})]
    while stack:
        node, bounds = stack.pop()
        left, right = int(t.children_left[node]), int(t.children_right[node])
        if left == right:  # a leaf
            klass = labels[int(np.argmax(t.value[node][0]))]
            b = tuple((f, lo, hi) for f, (lo, hi) in sorted(bounds.items()))
            rules.append(Rule(b, int(klass), int(t.n_node_samples[node])))
            continue
        f, thr = int(t.feature[node]), float(t.threshold[node])
        lo, hi = bounds.get(f, (-np.inf, np.inf))
        stack.append((right, {**bounds, f: (max(lo, thr), hi)}))
        stack.append((left, {**bounds, f: (lo, min(hi, thr))}))
    return rules


def score_rules(rules: Sequence[Rule], X: np.ndarray, teacher: np.ndarray) -> list[Rule]:
    """Each rule with its coverage, precision and number of covered images on ``(X, teacher)``."""
    out = []
    for r in rules:
        m = r.mask(X)
        of_class = teacher == r.klass
        cov = float((m & of_class).sum() / of_class.sum()) if of_class.any() else float("nan")
        prec = float(of_class[m].mean()) if m.any() else float("nan")
        out.append(replace(r, coverage=cov, precision=prec, covered=int(m.sum())))
    return out


def rule_set_coverage(rules: Sequence[Rule], X: np.ndarray, teacher: np.ndarray, klass: int) -> tuple[float, float]:
    """``(coverage, precision)`` of the union of ``rules`` for ``klass`` on ``(X, teacher)``."""
    m = np.zeros(len(X), dtype=bool)
    for r in rules:
        m |= r.mask(X)
    of_class = teacher == klass
    cov = float((m & of_class).sum() / of_class.sum()) if of_class.any() else float("nan")
    prec = float(of_class[m].mean()) if m.any() else float("nan")
    return cov, prec

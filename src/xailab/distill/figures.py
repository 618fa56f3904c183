"""Figures of a distillation: the tree drawn, fidelity against depth, a class's rules, map agreement.

Every function returns a matplotlib ``Figure``; :func:`xailab.plotting.save_png` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xailab.distill.rules import Rule
from xailab.plotting import plain


def tree_figure(tree: Any, feature_names: Sequence[str], class_names: Sequence[str], *, title: str = "",
                max_depth: int = 4) -> Figure:
    """The decision tree drawn with its split conditions and each node's majority class (scikit-learn's
    ``plot_tree``), down to ``max_depth`` levels (deeper nodes are drawn as ``(...)``)."""
    from sklearn.tree import plot_tree

    shown = min(int(tree.get_depth()), max_depth)
    fig, ax = plt.subplots(figsize=(min(max(8.0, 2.2 * 2**shown), 36.0), 2.0 + 1.8 * shown))
    names = [plain(str(n)) for n in feature_names]
    classes = [plain(str(class_names[int(c)]) if int(c) < len(class_names) else str(c)) for c in tree.classes_]
    plot_tree(tree, feature_names=names, class_names=classes, filled=True, impurity=False, proportion=True,
              rounded=True, fontsize=7, ax=ax, precision=2, max_depth=max_depth)
    if title:
        ax.set_title(plain(title), fontsize=10)
    fig.tight_layout()
    return fig


def depth_figure(curve: pd.DataFrame, linear: dict[str, Any] | None = None) -> Figure:
    """Held-out fidelity (and accuracy) of the tree against its maximum depth, leaves annotated."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    d = curve["max_depth"].to_numpy()
    ax.plot(d, curve["fidelity"], "o-", label="fidelity (agreement with the network)")
    if curve["accuracy"].notna().any():
        ax.plot(d, curve["accuracy"], "s--", label="accuracy (true labels)")
        ta = curve["teacher_accuracy"].dropna()
        if len(ta):
            ax.axhline(float(ta.iloc[0]), color="gray", linestyle=":", label="network's accuracy")
    if linear is not None and linear.get("fidelity") is not None:
        ax.axhline(float(linear["fidelity"]), color="tab:green", linestyle="-.",
                   label=f"sparse linear fidelity ({linear['size']} features)")
    for x, y, n in zip(d, curve["fidelity"], curve["size"], strict=True):
        ax.annotate(f"{int(n)} leaves", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("maximum tree depth")
    ax.set_ylabel("share of held-out images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Surrogate tree: fidelity on held-out images", fontsize=10)
    fig.tight_layout()
    return fig


def rules_figure(rules: Sequence[Rule], names: Sequence[str], class_name: str, *, top: int = 8) -> Figure:
    """Horizontal bars of each rule's held-out coverage and precision, the rule's text beside."""
    shown = list(rules)[:top]
    fig, ax = plt.subplots(figsize=(10.0, 0.9 + 0.55 * max(1, len(shown))))
    y = np.arange(len(shown))[::-1]
    ax.barh(y + 0.18, [r.coverage for r in shown], height=0.35, label="coverage")
    ax.barh(y - 0.18, [r.precision for r in shown], height=0.35, label="precision")
    ax.set_yticks(y, [plain(_short(r.conditions(names))) for r in shown], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of held-out images")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(plain(f"Rules for '{class_name}'"), fontsize=10)
    fig.tight_layout()
    return fig


def _short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def map_agreement_figure(table: pd.DataFrame) -> Figure:
    """Histograms of the per-image rank correlation of teacher and student maps, one per method."""
    methods = list(dict.fromkeys(table["method"]))
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(3.6 * max(1, len(methods)), 2.8), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=False):
        v = table.loc[table["method"] == m, "spearman"].dropna().to_numpy()
        ax.hist(v, bins=np.linspace(-1, 1, 21), color="tab:blue")
        ax.axvline(float(np.median(v)) if len(v) else 0.0, color="k", linestyle="--", linewidth=1)
        ax.set_title(plain(f"{m}: median {np.median(v):.2f}" if len(v) else m), fontsize=9)
        ax.set_xlabel("Spearman, teacher vs student map")
    axes[0][0].set_ylabel("images")
    fig.tight_layout()
    return fig

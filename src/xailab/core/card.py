"""Method cards: what a method is, where it comes from, where it fails, what it costs, as data.

Each explanation method carries its :class:`MethodCard` as the class attribute ``card``, beside
its code (as Quantus keeps a metric's metadata on the metric's class). The six questions are
those of Hohman et al. (2018), "Visual Analytics in Deep Learning: An Interrogative Survey for
the Next Frontiers" (IEEE TVCG): **why** would one use it, **who** is it for, **what** part of
the network it looks at, **how** it is shown, **when** in the model's life it applies, **where**
it was published and applies. The explain job writes the cards of the methods it ran into the
run (section ``cards`` of the manifest, :func:`method_cards`); the report reads them from there.

    @register("gradcam", family="cam")
    class GradCAM(CAM):
        card = MethodCard(title="Grad-CAM", family="cam", summary="...", paper="...", ...)

    card_of("gradcam").paper            # 'Selvaraju, Cogswell, ...'
    method_cards(["gradcam"])           # {'gradcam': {'title': 'Grad-CAM', ...}} (JSON-ready)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from xailab.core.registry import METHODS

CARD_VERSION = 1

#: the six questions of Hohman et al. (2018), in the order the report shows them
HOHMAN = ("why", "who", "what", "how", "when", "where")

WHO = ("Model developers and builders checking what a model relies on; model users and "
       "domain experts asking why one prediction was made.")
WHY = ("Interpretability and explainability of single predictions; debugging (shortcut "
       "features, spurious background cues); comparing models and methods.")
HOW = ("Instance-based analysis: one heatmap per image and class, shown over the image "
       "(algorithms for attribution).")
WHEN = "After training: the model is fixed; each explanation is computed for one image and class."


@dataclass(frozen=True)
class MethodCard:
    """The card of one explanation method (see the module docstring).

    Attributes:
        title: the method's usual name, e.g. ``"Grad-CAM"``.
        family: ``gradient``, ``cam``, ``perturbation`` or ``propagation``.
        summary: what it computes, with the formula in one or two sentences.
        paper: the full citation (authors, year, title, venue).
        limits: where it fails or misleads, one sentence each.
        cost: model evaluations per image and target, in words (the report adds measured times).
        why, who, what, how, when, where: Hohman et al.'s six questions.
    """

    title: str
    family: str
    summary: str
    paper: str
    limits: tuple[str, ...]
    cost: str
    what: str
    where: str
    why: str = WHY
    who: str = WHO
    how: str = HOW
    when: str = WHEN

    def hohman(self) -> list[tuple[str, str]]:
        """``[("Why", ...), ("Who", ...), ...]`` in Hohman et al.'s order."""
        return [(q.capitalize(), str(getattr(self, q))) for q in HOHMAN]

    def missing(self) -> list[str]:
        """The names of the fields left empty (a complete card has none)."""
        empty = [f.name for f in fields(self) if not getattr(self, f.name)]
        return empty + [f"limits[{i}]" for i, x in enumerate(self.limits) if not x.strip()]

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data (what the run stores and the report reads)."""
        d = asdict(self)
        d["limits"] = list(self.limits)
        d["version"] = CARD_VERSION
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodCard:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["limits"] = tuple(kw.get("limits", ()))
        return cls(**kw)


def card_of(method: str) -> MethodCard | None:
    """The card declared by the class registered as ``method`` (not inherited), or None."""
    cls = METHODS.get(method)
    found = vars(cls).get("card") if isinstance(cls, type) else getattr(cls, "card", None)
    return found if isinstance(found, MethodCard) else None


def method_cards(methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{registered name: card as data}`` of ``methods`` (those without a card are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        name = METHODS.canonical(m)
        c = card_of(name)
        if c is not None:
            out[name] = c.to_dict()
    return out

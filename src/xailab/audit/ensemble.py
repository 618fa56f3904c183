"""Several backdoor detectors, one verdict per class: the rule that combines them.

Each detector (:mod:`xailab.audit.detectors`) flags classes on its own. The **rule** says how
many must agree for the class to be flagged:

* ``any``: at least one detector flags it (the most sensitive; false alarms add up);
* ``majority``: more than half of the detectors that analysed the class flag it;
* ``all``: every detector flags it;
* ``atleast:K``: at least ``K`` detectors flag it;
* a detector's name (``spectral``, ``scan``, ``ac``, ``spray``, ...): that detector decides,
  the others are second opinions.

The **verdict** of a class: ``backdoor`` (flagged and every detector agrees), ``flagged``
(flagged by the rule), ``check`` (some detector fired, the rule does not flag) or ``clean``.
The **suspected items** of a flagged class are those that at least half of its flagging
detectors suspect (ordered by how many do); a class that is not flagged has none, and no
region. A flagged class's **region** is where the suspected items' explanation maps exceed
the rest's (:func:`xailab.audit.detection.relied_region`); maps come from SpRAy when it ran,
else ``method`` explains that class only.

    rule = parse_rule("majority")
    rule.flags(votes=2, voters=4)                 # False: 2 of 4 is not more than half
    report = detect_backdoor(model, train_set, detectors=("spectral", "scan", "ac"), rule="any")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xailab.core.errors import InputError

RULE_HELP = ("any, majority, all, atleast:K, or a detector's name (that detector decides, "
             "the others are second opinions)")


@dataclass(frozen=True)
class Rule:
    """A parsed ensemble rule (see the module docstring)."""

    kind: str            # "any" | "majority" | "all" | "atleast" | "detector"
    k: int = 1
    detector: str = ""

    @property
    def spec(self) -> str:
        return {"atleast": f"atleast:{self.k}", "detector": self.detector}.get(self.kind, self.kind)

    def flags(self, votes: int, voters: int, flagged_by: tuple[str, ...] = ()) -> bool:
        """Whether ``votes`` detectors out of ``voters`` flagging a class (those named
        ``flagged_by``) flag it under this rule."""
        if voters == 0:
            return False
        if self.kind == "any":
            return votes >= 1
        if self.kind == "majority":
            return votes * 2 > voters
        if self.kind == "all":
            return votes == voters
        if self.kind == "atleast":
            return votes >= self.k
        return self.detector in flagged_by

    def describe(self, n: int) -> str:
        """The rule in words, for ``n`` detectors."""
        return {"any": "flagged when any detector flags it",
                "majority": f"flagged when more than half of the {n} detectors flag it",
                "all": f"flagged when all {n} detectors flag it",
                "atleast": f"flagged when at least {self.k} of the {n} detectors flag it",
                }.get(self.kind, f"flagged when {self.detector} flags it (the others are second opinions)")


def parse_rule(text: str, detectors: tuple[str, ...] | None = None) -> Rule:
    """``any | majority | all | atleast:K | <detector>`` -> :class:`Rule`; checked against ``detectors``."""
    t = str(text).strip().lower()
    if t in ("any", "majority", "all"):
        return Rule(t)
    m = re.fullmatch(r"atleast:(\d+)", t)
    if m:
        k = int(m.group(1))
        if k < 1 or (detectors is not None and k > len(detectors)):
            n = len(detectors) if detectors is not None else "the"
            raise InputError(f"rule {text!r}: K must lie in 1..{n} (the number of detectors)")
        return Rule("atleast", k)
    if detectors is not None and t in detectors:
        return Rule("detector", detector=t)
    known = f"; the detectors are {', '.join(detectors)}" if detectors else ""
    raise InputError(f"unknown rule {text!r}: use {RULE_HELP}{known}")

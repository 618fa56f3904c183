"""bench_backdoor's --triggers list: a patch placed at TOP,LEFT keeps its comma."""

from __future__ import annotations

from bench.bench_backdoor import TRIGGERS, split_triggers

from xailab.audit.triggers import parse_trigger


def test_the_default_triggers_survive_their_own_comma_list() -> None:
    assert split_triggers(",".join(TRIGGERS)) == TRIGGERS
    for spec in split_triggers(",".join(TRIGGERS)):
        parse_trigger(spec, seed=0)


def test_a_placed_patch_between_others() -> None:
    assert split_triggers("patch:4, patch:6@2,2,warp:4,patch:3@corner") == (
        "patch:4", "patch:6@2,2", "warp:4", "patch:3@corner")

"""Method cards: each registered method declares a complete card of its own, the explain job
writes it into the run, and the report shows what the run holds (never the method's code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xailab.core.card import HOHMAN, MethodCard, card_of, method_cards
from xailab.core.registry import METHODS, available
from xailab.jobs.explain_images import explain_images
from xailab.report.site import build_site

METHOD_NAMES = available()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_registered_method_declares_a_complete_card(name: str) -> None:
    cls = METHODS.get(name)
    card = vars(cls).get("card")  # declared on the class itself, not inherited from its parent
    assert isinstance(card, MethodCard), f"{name} ({cls.__qualname__}) declares no card"
    assert card.missing() == [], (name, card.missing())
    assert card.family == METHODS.family(name), name
    assert card.limits and all(len(x) > 20 for x in card.limits), name
    assert "(" in card.paper and any(str(y) in card.paper for y in range(1990, 2030)), name  # a year
    assert card_of(name) is card


def test_cards_are_not_shared_between_methods() -> None:
    titles = [card_of(n).title for n in METHOD_NAMES]  # type: ignore[union-attr]
    assert len(set(titles)) == len(titles)


def test_a_card_round_trips_through_json() -> None:
    card = card_of("gradcam")
    assert card is not None
    data = json.loads(json.dumps(card.to_dict()))
    assert MethodCard.from_dict(data) == card
    assert [q for q, _ in card.hohman()] == [q.capitalize() for q in HOHMAN]


def test_subclasses_declare_their_own_card_and_aliases_resolve() -> None:
    # DeepLIFT-SHAP is a DeepLIFT, LRP-ε an LRP: each still has its own card, not its parent's
    for child, parent in (("deeplift_shap", "deeplift"), ("lrp_epsilon", "lrp")):
        assert issubclass(METHODS.get(child), METHODS.get(parent))
        assert card_of(child) != card_of(parent)
    assert method_cards(["grad_cam", "ig"]).keys() == {"gradcam", "integrated_gradients"}


def test_the_report_shows_the_card_the_run_holds(tiny_cnn: torch.nn.Module, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 8, 8)
    run = explain_images(tiny_cnn, x, out=tmp_path / "r", methods=["saliency", "cam=gradcam"], targets="top1",
                         png=False, log=lambda _: None)
    cards = run.manifest["cards"]
    assert cards == method_cards(["saliency", "gradcam"])
    # the report reads the run, not the code: a card edited in the run is what the page shows
    cards["gradcam"]["paper"] = "Paper <as> recorded in the run"
    run.update_manifest("cards", cards)
    page = (build_site([run.path], tmp_path / "site") / "methods.html").read_text(encoding="utf-8")
    assert "Paper &lt;as&gt; recorded in the run" in page and "Selvaraju" not in page
    assert "cam = gradcam" in page and card_of("saliency").paper.split(",")[0] in page  # type: ignore[union-attr]
    for q in HOHMAN:
        assert f"<th>{q.capitalize()}</th>" in page
    # a run written before cards were recorded: a note, no card from the code
    run.update_manifest("cards", {})
    page = (build_site([run.path], tmp_path / "site2") / "methods.html").read_text(encoding="utf-8")
    assert "No card in this run" in page and "Simonyan" not in page


def test_a_second_explain_call_into_the_run_keeps_the_first_calls_cards(tiny_cnn: torch.nn.Module,
                                                                        tmp_path: Path) -> None:
    x = torch.randn(2, 3, 8, 8)
    for method in ("gradcam", "saliency"):
        run = explain_images(tiny_cnn, x, out=tmp_path / "r", methods=[method], targets="top1", png=False,
                             log=lambda _: None)
    assert set(run.manifest["cards"]) == {"gradcam", "saliency"}

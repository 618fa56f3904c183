"""The demo's ViT step: the vit_fashion study's model, commands that parse, its run in the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from xailab import demo
from xailab.cli import build_parser
from xailab.studies.vit_fashion import VIT


def test_the_demo_trains_and_explains_the_studys_vit() -> None:
    pytest.importorskip("timm")
    assert demo.VIT == VIT
    steps = demo.vit_steps(Path("/o"), quick=True)
    train, explain = (build_parser().parse_args(argv) for _, argv in steps)
    assert (train.command, train.model, train.epochs, train.schedule) == ("train", VIT, 1, "cosine")
    assert explain.weights == "/o/vit-train/checkpoints/best.safetensors"
    assert "attention_rollout" in explain.methods.split(",")


def test_no_timm_no_vit_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    assert demo.vit_steps(Path("/o"), quick=False) == []

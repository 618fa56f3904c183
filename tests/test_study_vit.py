"""Study 5 (``vit_fashion``): its commands parse with the real CLI, the given weights skip
training, each model gets the methods that apply to it; the ViT-vs-CNN table of
scripts/vit_vs_cnn.py marks a method one model refuses."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from xailab.cli import build_parser
from xailab.core.errors import InputError
from xailab.steps import Step
from xailab.studies import STUDIES
from xailab.studies.vit_fashion import VIT_STAGES

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vit_vs_cnn.py"


def study_steps(*argv: str) -> list[Step]:
    return STUDIES.get("vit_fashion").steps(build_parser().parse_args(["study", "vit_fashion", *argv]))


def leaf_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("variant", [[], ["--quick"], ["--vit-weights", "/w/vit.safetensors", "--device", "cpu"],
                                     ["--data-root", "/d/fm", "--images", "3", "--vit-epochs", "2"]])
def test_every_step_parses_with_the_real_cli(variant: list[str]) -> None:
    parser = build_parser()
    steps = study_steps("--out", "/o", *variant)
    assert steps[-1][1][0] == "report"
    for what, argv in steps:
        assert what
        parser.parse_args(argv)
        flags = {w for w in argv if w.startswith("--")}
        assert flags <= leaf_options(parser, argv), argv


def test_methods_follow_the_model_and_given_weights_skip_training() -> None:
    parser = build_parser()
    steps = [parser.parse_args(a) for _, a in study_steps("--out", "/o", "--vit-weights", "/w/v.safetensors")]
    assert [s.command for s in steps] == ["explain", "compare", "train", "explain", "compare", "report"]
    vit, cnn = steps[0], steps[3]
    assert vit.weights == "/w/v.safetensors" and vit.model.startswith("timm:")
    assert "attention_rollout" in vit.methods and "deeplift" not in vit.methods
    assert "deeplift" in cnn.methods and "attention_rollout" not in cnn.methods
    assert cnn.weights == "/o/cnn/train/checkpoints/best.safetensors"
    assert set(steps[-1].runs) == {"/o/vit/explain", "/o/cnn/train", "/o/cnn/explain"}


def test_the_table_marks_refused_methods() -> None:
    spec = importlib.util.spec_from_file_location("vit_vs_cnn", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vit_vs_cnn"] = mod
    spec.loader.exec_module(mod)

    def board(methods: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"method": methods, "deletion_auc": 0.1, "insertion_auc": 0.5, "faithfulness_corr": 0.2,
                             "sanity_spearman": 0.05, "sanity": "passed", "avg_time": 0.01}).set_index("method")

    text = mod.table({"vit": board(["saliency", "attention_rollout"]), "cnn": board(["saliency", "deeplift"])})
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert set(rows) == {"saliency", "attention_rollout", "deeplift"}
    assert "refused" not in rows["saliency"] and rows["deeplift"].count("refused") == 1
    assert "0.05 (passed)" in rows["attention_rollout"]


def test_the_vit_trains_in_stages_and_init_skips_the_first() -> None:
    parser = build_parser()
    steps = [parser.parse_args(a) for _, a in study_steps("--out", "/o", "--cnn-weights", "/w/c.safetensors")]
    n = 1 + len(VIT_STAGES)
    assert [s.command for s in steps[:n + 1]] == ["train"] * n + ["explain"]
    one, *cosine = steps[:n]
    assert one.weights is None and one.optimizer == "adam" and one.schedule == "constant" and one.epochs == 2
    for stage, s in enumerate(cosine, start=2):
        assert s.weights == f"/o/vit/stage{stage - 1}/checkpoints/best.safetensors"
        assert s.out == ("/o/vit/train" if stage == n else f"/o/vit/stage{stage}")
        assert (s.optimizer, s.schedule, s.label_smoothing) == ("adamw", "cosine", 0.1)
        assert (s.lr, s.epochs) == (float(VIT_STAGES[stage - 2][0]), VIT_STAGES[stage - 2][1])
    assert [s.lr for s in cosine] == sorted((s.lr for s in cosine), reverse=True)
    assert steps[n].weights == "/o/vit/train/checkpoints/best.safetensors"
    init = [parser.parse_args(a) for _, a in study_steps("--out", "/o", "--vit-init", "/w/v0.safetensors")]
    assert [s.command for s in init[:n]] == ["train"] * (n - 1) + ["explain"] and init[0].weights == "/w/v0.safetensors"


def test_a_resumed_recipe_starts_at_the_stage_named_and_sizes_override_it() -> None:
    parser = build_parser()
    steps = [parser.parse_args(a) for _, a in study_steps("--out", "/o", "--vit-init", "/w/s3.safetensors",
                                                           "--vit-from-stage", "4", "--cnn-weights", "/w/c")]
    trains = [s for s in steps if s.command == "train"]
    assert [(s.lr, s.weights) for s in trains] == [
        (5e-4, "/w/s3.safetensors"), (3e-4, "/o/vit/stage4/checkpoints/best.safetensors"),
        (2e-4, "/o/vit/stage5/checkpoints/best.safetensors")]
    short = [parser.parse_args(a) for _, a in study_steps("--out", "/o", "--vit-stages", "2", "--vit-epochs", "3")]
    vit = [s for s in short if s.command == "train" and s.model.startswith("timm:")]
    assert [s.epochs for s in vit] == [2, 3, 3] and vit[-1].out == "/o/vit/train"


@pytest.mark.parametrize("argv, message", [
    (["--vit-from-stage", "3"], "needs --vit-init"),
    (["--vit-init", "/w/v", "--vit-from-stage", "9"], "not one of the ViT's stages 2..6"),
    (["--vit-stages", "0"], "1..5"),
    (["--vit-stages", "9"], "the recipe has 5 cosine stages"),
])
def test_impossible_stage_options_are_refused_in_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        study_steps("--out", "/o", *argv)

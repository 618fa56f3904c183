"""Studies 1 and 3 (``cifar10_cnn``, ``fashion_mnist``): their commands, checked against the real CLI.

Every argv a study produces is parsed by ``xailab.cli.build_parser()`` and every ``--flag`` in it
must be one of the command's own option strings (argparse would accept a prefix of a renamed
flag), so renaming or dropping a flag a study uses breaks these tests. The user's ``--model`` /
``--weights`` / ``--data`` must reach every command that loads a model or data. The studies run
end to end in :mod:`tests.test_examples_run` (their examples), checked by :mod:`tests.study_checks`.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from xailab.cli import build_parser, main
from xailab.steps import Step, command_line
from xailab.studies import STUDIES

NAMES = ("cifar10_cnn", "fashion_mnist")
VARIANTS: tuple[list[str], ...] = (
    [],
    ["--quick"],
    ["--quick", "--epochs", "1", "--limit-train", "100", "--images", "2"],
    ["--model", "mypkg.nets:Net", "--weights", "/w/net.safetensors"],
    ["--data", "folder:/d/mine", "--data-root", "/d/root.tar.gz", "--device", "cpu"],
)


def study_steps(name: str, *argv: str) -> list[Step]:
    """The steps of study ``name`` for options parsed by the real ``xailab study`` parser."""
    args = build_parser().parse_args(["study", name, *argv])
    return STUDIES.get(name).steps(args)


def _leaf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that owns the options of ``argv`` (``audit poison ...`` -> poison's)."""
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


def parsed(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def by_command(steps: list[Step]) -> dict[str, list[argparse.Namespace]]:
    out: dict[str, list[argparse.Namespace]] = {}
    for _, argv in steps:
        words = [w for w in argv[:2] if not w.startswith("-")]
        key = " ".join(words[:2]) if words[0] in ("concepts", "audit") else words[0]
        out.setdefault(key, []).append(parsed(argv))
    return out


def test_both_studies_are_registered() -> None:
    assert set(NAMES) <= set(STUDIES.available())
    for name in NAMES:
        assert STUDIES.get(name).summary


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: " ".join(v) or "default")
def test_every_step_parses_with_the_real_cli(name: str, variant: list[str]) -> None:
    parser = build_parser()
    steps = study_steps(name, "--out", "/o", *variant)
    assert steps and steps[-1][1][0] == "report"
    for what, argv in steps:
        assert what
        ns = parser.parse_args(argv)  # SystemExit (exit 2) on an unknown flag or a bad value
        assert ns._run is not None
        known = {s for a in _leaf_parser(parser, argv)._actions for s in a.option_strings}
        flags = [w for w in argv if w.startswith("--")]
        assert set(flags) <= known, f"{command_line(argv)}: unknown flags {set(flags) - known}"


@pytest.mark.parametrize("name", NAMES)
def test_the_report_covers_every_run_the_study_writes(name: str) -> None:
    for variant in VARIANTS:
        steps = study_steps(name, "--out", "/o", *variant)
        report = parsed(steps[-1][1])
        assert report.out == "/o/report"
        written = set()
        for _, argv in steps[:-1]:
            ns = parsed(argv)
            if ns.command in ("flow", "compare") or getattr(ns, "action", None) == "explain":
                continue  # these add to a run written before
            written.add(ns.out)
        assert written == set(report.runs)


def test_cifar_study_trains_tracks_and_chains_its_checkpoint() -> None:
    steps = by_command(study_steps("cifar10_cnn", "--out", "/o", "--quick"))
    assert set(steps) == {"train", "flow", "explain", "compare", "concepts ice", "concepts explain", "report"}
    train = steps["train"][0]
    assert (train.model, train.data, train.track, train.epochs) == ("cifar_cnn", "cifar10", "test", 3)
    best = "/o/train/checkpoints/best.safetensors"
    assert steps["flow"][0].run == "/o/train"
    explain = steps["explain"][0]
    assert (explain.weights, explain.targets, explain.quick) == (best, "true,top1,top2,least", True)
    assert set(explain.methods.split(",")) == {"saliency", "kernel_shap", "gradient_shap"}
    ice = steps["concepts ice"][0]
    assert (ice.weights, ice.layer, ice.images) == (best, "features.21", "cifar10:test:500")
    assert steps["compare"][0].no_sanity
    full = by_command(study_steps("cifar10_cnn"))
    assert full["train"][0].augment and full["train"][0].limit_train is None
    assert not full["compare"][0].no_sanity and not full["explain"][0].quick
    assert full["report"][0].out == "runs/study-cifar10_cnn/report"


@pytest.mark.parametrize("name", NAMES)
def test_your_model_and_weights_skip_training_and_reach_every_command(name: str) -> None:
    model, weights = "mypkg.nets:Net", "/w/net.safetensors"
    steps = by_command(study_steps(name, "--out", "/o", "--model", model, "--weights", weights,
                                   "--data", "folder:/d/mine", "--data-root", "/d/r"))
    assert "train" not in steps and "flow" not in steps
    ev = steps["evaluate"][0]
    assert (ev.model, ev.weights, ev.data, ev.data_root, ev.out) == (model, weights, "folder:/d/mine", "/d/r", "/o/evaluate")
    loading = [ns for key, nss in steps.items() for ns in nss
               if key in ("explain", "concepts ice", "audit adversarial") or (key == "audit backdoor" and ns.run is None)]
    assert loading
    for ns in loading:
        assert (ns.model, ns.weights, ns.data_root) == (model, weights, "/d/r")
        images = getattr(ns, "images", None)
        assert images is None or images.startswith("folder:/d/mine:test:")
    if name == "fashion_mnist":  # the backdoored twin is trained from the user's architecture
        poison = steps["audit poison"][0]
        assert (poison.model, poison.data, poison.data_root) == (model, "folder:/d/mine", "/d/r")


def test_fashion_study_explains_four_targets_attacks_and_audits() -> None:
    steps = by_command(study_steps("fashion_mnist", "--out", "/o", "--quick", "--patch", "4"))
    explain = steps["explain"][0]
    assert set(explain.methods.split(",")) >= {"kernel_shap", "deeplift", "integrated_gradients"}
    assert explain.targets == "true,top1,top2,least"
    attack = steps["audit adversarial"][0]
    assert attack.patch == 4 and attack.weights == "/o/train/checkpoints/best.safetensors"
    poison = steps["audit poison"][0]
    assert (poison.source, poison.target, poison.trigger, poison.fraction) == ("Sandal", "Sneaker", "patch:4", 0.1)
    audits = steps["audit backdoor"]
    assert [a.run for a in audits] == ["/o/backdoor-train", None]  # the backdoored model, then the control
    assert audits[1].weights == attack.weights and audits[1].data == "fashion_mnist"
    cf = steps["counterfactual"][0]
    assert (cf.weights, cf.target, cf.kinds) == (attack.weights, "top2", "pixel,region,prototype")
    assert cf.reference.startswith("fashion_mnist:train:") and "/o/counterfactual" in steps["report"][0].runs


@pytest.mark.parametrize("name", NAMES)
def test_dry_run_prints_the_commands_and_runs_nothing(name: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(["study", name, "--dry-run", "--quick", "--weights", "w.safetensors", "--out", str(out)]) == 0
    printed = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    steps = study_steps(name, "--quick", "--weights", "w.safetensors", "--out", str(out))
    assert printed == [command_line(argv) for _, argv in steps]
    assert all(shlex.split(line)[0] == "xailab" for line in printed)
    assert any("--weights w.safetensors" in line for line in printed if " explain " in line)
    assert not out.exists()


def test_study_list_names_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in NAMES)


def test_the_cifar_ice_layer_is_a_relu_of_the_zoo_cnn() -> None:
    """The layer the CIFAR study factorises exists in ``cifar_cnn`` and is accepted by ICE."""
    import torch

    from xailab.concepts import fit_ice
    from xailab.models import create_model
    from xailab.studies.cifar10_cnn import ICE_LAYER

    model = create_model("cifar_cnn").eval()
    assert isinstance(dict(model.named_modules())[ICE_LAYER], torch.nn.ReLU)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    basis = fit_ice(model, images, n_concepts=2, layer=ICE_LAYER, batch_size=6)
    assert basis.layer == ICE_LAYER and tuple(basis.directions.shape) == (2, 128)

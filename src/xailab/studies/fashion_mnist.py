"""Study 3: Fashion-MNIST: SHAP, DeepLIFT and IG for four classes, a patch attack, a backdoor audit.

The recipe (``xailab study fashion_mnist``; each step one ``xailab`` command, printed before it
runs; a rerun resumes):

1. ``train`` the zoo's ``small_cnn`` on Fashion-MNIST (skipped when ``--weights`` are given:
   then ``evaluate``);
2. ``explain`` test images with SHAP (expected gradients and KernelSHAP; Lundberg & Lee 2017),
   DeepLIFT (rescale; Shrikumar et al. 2017) and Integrated Gradients (Sundararajan et al.
   2017) for the true, most likely, second most likely and least likely class, and
   ``compare`` them;
3. ``audit adversarial --patch``: a small square patch attack (LaVAN / Brown et al. 2017
   style masked PGD) on test images; success rate, and how the maps of the attacked images
   move onto the patch (explanation shift); ``counterfactual``: the smallest change that makes
   the second most likely class win (Wachter et al. 2017 in pixels, the fewest superpixels,
   the nearest training images of that class), with their plausibility;
4. ``distill``: a surrogate decision tree on the grey level, contrast and edges of a 4x4 grid of
   image regions (its fidelity to the CNN and its rules per class) and a small student CNN
   trained on the CNN's soft labels (Hinton et al. 2015), whose maps are compared with the CNN's;
5. ``audit poison``: train a second model on data with a BadNets backdoor (Gu et al. 2017): a
   white square on 10 % of the Sandals, relabelled Sneaker; clean accuracy and attack success;
6. ``audit backdoor`` of that model over its training data with two global methods, SpRAy
   (Lapuschkin et al. 2019) and activation clustering (Chen et al. 2018), and of the clean
   model (yours with ``--weights``) as the control;
7. ``report`` over every run; the report's path is printed last.

    xailab study fashion_mnist --quick
    xailab study fashion_mnist --model small_cnn --weights mine.safetensors --out runs/my-fm
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xailab.steps import Step
from xailab.studies import Study, gradient_shap_background, register_study, sized

EXPLAIN_METHODS = "gradient_shap,deeplift_shap,kernel_shap,deeplift,integrated_gradients"
BACKGROUND = 100  # training images GradientSHAP draws its baselines from (SHAP's background set)
ATTACK_METHODS = "gradient_shap,deeplift,integrated_gradients"  # the gradient ones: cheap enough per image
TARGETS = "true,top1,top2,least"

# Full size: what a student runs (about 1 h on 2 CPU cores, see docs/studies/fashion-mnist.md);
# --quick: a first look in minutes. An option given explicitly wins over both.
FULL = {"epochs": 5, "limit_train": None, "limit_test": None, "images": 32, "attack_images": 48,
        "poison_epochs": 3, "poison_limit": 10000, "per_class": 500, "cf_images": 32, "cf_reference": 2000}
QUICK = {"epochs": 2, "limit_train": 3000, "limit_test": 1000, "images": 4, "attack_images": 8,
         "poison_epochs": 3, "poison_limit": 4000, "per_class": 150, "cf_images": 4, "cf_reference": 300}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="folder of the study's runs (default runs/study-fashion_mnist)")
    p.add_argument("--model", default="small_cnn",
                   help="zoo name, TorchScript file or package.module:factory (default small_cnn)")
    p.add_argument("--weights", help="the model's trained weights: its training is skipped")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist (default), mnist or folder:<path> of your own images")
    p.add_argument("--data-root", help="where the dataset's files are (folder or archive)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {FULL['epochs']}; quick {QUICK['epochs']})")
    p.add_argument("--limit-train", type=int, metavar="N",
                   help=f"train on a stratified sample of N (default all; quick {QUICK['limit_train']})")
    p.add_argument("--images", type=int, metavar="N",
                   help=f"test images explained (default {FULL['images']}; quick {QUICK['images']})")
    p.add_argument("--attack-images", type=int, metavar="N",
                   help=f"test images attacked (default {FULL['attack_images']}; quick {QUICK['attack_images']})")
    p.add_argument("--patch", type=int, default=5, metavar="S", help="side of the attack's square patch (default 5)")
    p.add_argument("--backdoor-model",
                   help="architecture trained with the backdoor (default: --model; give a zoo name or "
                        "package.module:factory if your model is a TorchScript file)")
    p.add_argument("--source", default="Sandal", help="class whose images carry the trigger (default Sandal)")
    p.add_argument("--target", default="Sneaker", help="class the trigger sends them to (default Sneaker)")
    p.add_argument("--poison-epochs", type=int,
                   help=f"epochs of the backdoored model (default {FULL['poison_epochs']})")
    p.add_argument("--poison-limit", type=int, metavar="N",
                   help=f"training images of the backdoored model (default {FULL['poison_limit']}; "
                        f"quick {QUICK['poison_limit']})")
    p.add_argument("--max-per-class", type=int, dest="per_class", metavar="N",
                   help=f"training items a class the backdoor audits examine (default {FULL['per_class']}; "
                        f"quick {QUICK['per_class']})")
    p.add_argument("--quick", action="store_true", help="small sizes and cheap settings, for a first look")
    p.add_argument("--device", help="cpu, cuda or auto (default: each command's own, auto)")


def _size(args: argparse.Namespace, key: str) -> object:
    return sized(args, key, FULL, QUICK)


def steps(args: argparse.Namespace) -> list[Step]:
    out = Path(args.out or "runs/study-fashion_mnist")
    quick = ["--quick"] if args.quick else []
    root = ["--data-root", args.data_root] if args.data_root else []
    device = ["--device", args.device] if args.device else []
    data = ["--data", args.data, *root]
    model = ["--model", args.model]
    runs: list[str] = []
    out_steps: list[Step] = []

    weights, first = _model_step(args, out, model, data, device)
    out_steps.append(first)
    runs.append(first[1][-1])
    trained = [*model, "--weights", weights]

    explain = str(out / "explain")
    out_steps += [
        ("explain test images with SHAP, DeepLIFT and IG for the true, top, second and least likely class",
         ["explain", *trained, *root, "--images", f"{args.data}:test:{_size(args, 'images')}",
          "--methods", EXPLAIN_METHODS, "--targets", TARGETS, *gradient_shap_background(args.data, BACKGROUND // 4 if args.quick else BACKGROUND,
                                                     ("gradient_shap", "deeplift_shap")), *quick, *device,
          "--out", explain]),
        ("compare the methods: agreement, deletion/insertion, sanity check, time",
         ["compare", explain, "--reference", "integrated_gradients", *device]
         + (["--no-sanity"] if args.quick else [])),
    ]
    runs.append(explain)

    patch = str(out / "patch")
    out_steps.append((
        f"patch attack: a {args.patch}x{args.patch} square placed and optimised per image; how the maps move",
        ["audit", "adversarial", *trained, *root, "--images", f"{args.data}:test:{_size(args, 'attack_images')}",
         "--patch", str(args.patch), "--methods", ATTACK_METHODS, "--targets", "top1,true", "--png", "8",
         *device, "--out", patch]))
    runs.append(patch)
    out_steps.append(_counterfactual_step(args, out, trained, root, device))
    runs.append(out_steps[-1][1][-1])
    out_steps.append(_distill_step(args, out, trained, root, device))
    runs.append(out_steps[-1][1][-1])

    backdoor = _backdoor_steps(args, out, trained, data, device)
    out_steps += backdoor
    runs += [cmd[-1] for _, cmd in backdoor]

    out_steps.append(("publish every run as one static report",
                      ["report", *runs, "--out", str(out / "report"), "--title", _title(args)]))
    return out_steps


def _model_step(args: argparse.Namespace, out: Path, model: list[str], data: list[str],
                device: list[str]) -> tuple[str, Step]:
    """The weights the study explains, and the step that trains them (or evaluates --weights)."""
    if args.weights:
        limit = ["--limit", str(QUICK["limit_test"])] if args.quick else []
        return args.weights, ("evaluate your model on the test set (no training: --weights given)",
                              ["evaluate", *model, "--weights", args.weights, *data, *limit, *device,
                               "--out", str(out / "evaluate")])
    sizes = ["--epochs", str(_size(args, "epochs"))]
    for key, flag in (("limit_train", "--limit-train"), ("limit_test", "--limit-test")):
        value = _size(args, key)
        if value is not None:
            sizes += [flag, str(value)]
    return str(out / "train" / "checkpoints" / "best.safetensors"), (
        "train the CNN", ["train", *model, *data, *sizes, "--track", "none", *device, "--out", str(out / "train")])


def _counterfactual_step(args: argparse.Namespace, out: Path, trained: list[str], root: list[str],
                         device: list[str]) -> Step:
    """Counterfactuals of test images towards their second most likely class (Wachter pixel
    optimisation, fewest superpixels, nearest training images), with plausibility."""
    return ("counterfactuals: the smallest change that makes the second most likely class win (pixels, "
            "superpixels, nearest training images)",
            ["counterfactual", *trained, *root, "--images", f"{args.data}:test:{_size(args, 'cf_images')}",
             "--kinds", "pixel,region,prototype", "--target", "top2",
             "--reference", f"{args.data}:train:{_size(args, 'cf_reference')}", "--png", "8", *device,
             "--out", str(out / "counterfactual")])


def _backdoor_steps(args: argparse.Namespace, out: Path, trained: list[str], data: list[str],
                    device: list[str]) -> list[Step]:
    """Train a backdoored model, audit it, and audit the clean model as the control."""
    poison, bd_audit, clean_audit = str(out / "backdoor-train"), str(out / "backdoor-audit"), str(out / "clean-audit")
    per_class = ["--max-per-class", str(_size(args, "per_class"))]
    spray = ["--detectors", "spray,ac", "--rule", "spray"]  # the study's detectors: SpRAy decides, AC second opinion
    return [
        (f"train a backdoored model: a white 4x4 square on 10 % of the {args.source} images, relabelled {args.target}",
         ["audit", "poison", *data, "--source", args.source, "--target", args.target, "--fraction", "0.1",
          "--trigger", "patch:4", "--model", args.backdoor_model or args.model,
          "--epochs", str(_size(args, "poison_epochs")), "--limit-train", str(_size(args, "poison_limit")),
          *(["--limit-test", str(QUICK["limit_test"])] if args.quick else []), *device, "--quiet",
          "--out", poison]),
        ("audit the backdoored model per class: SpRAy on LRP maps and activation clustering",
         ["audit", "backdoor", "--run", poison, *per_class, *spray, *device, "--out", bd_audit]),
        ("the same audit of the clean model on its training data (the control)",
         ["audit", "backdoor", *trained, *data, *per_class, *spray, *device, "--out", clean_audit]),
    ]


def _distill_step(args: argparse.Namespace, out: Path, trained: list[str], root: list[str], device: list[str]) -> Step:
    """Distil the CNN: a surrogate tree on pixel statistics, per-class rules and a student CNN."""
    fit, test, epochs, maps = (600, 200, 1, 8) if args.quick else (6000, 1000, 5, 32)
    return ("distil the CNN: a surrogate tree and rules on colour/texture of image regions, and a student CNN",
            ["distill", *trained, *root, "--images", f"{args.data}:train:{fit}", "--test-images",
             f"{args.data}:test:{test}", "--features", "pixels", "--grid", "4", "--student", "--student-epochs",
             str(epochs), "--map-images", str(maps), *device, "--out", str(out / "distill")])


TITLE = "Fashion-MNIST: SHAP, DeepLIFT, IG; a patch attack; a backdoor audit"


def _title(args: argparse.Namespace) -> str:
    return TITLE if args.model == "small_cnn" and not args.weights else f"{TITLE} ({args.model})"


STUDY = register_study(Study(
    name="fashion_mnist",
    title=TITLE,
    add_arguments=add_arguments,
    steps=steps,
    summary=(
        "Train the 28x28 CNN on Fashion-MNIST, explain test images with SHAP, DeepLIFT and IG for\n"
        "the true, top, second and least likely class, attack them with a small patch and see how\n"
        "the maps move, train a backdoored twin (BadNets trigger) and audit it and the clean model\n"
        "with SpRAy and activation clustering, and publish it all as one report. With --weights\n"
        "your trained model is used and its training skipped. See docs/studies/fashion-mnist.md."
    ),
))


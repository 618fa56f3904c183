"""Study 1: a CIFAR-10 CNN (6 conv, 3 linear) seen four ways: instance flow, saliency, SHAP, ICE.

The recipe (``xailab study cifar10_cnn``; each step one ``xailab`` command, printed before it
runs; a rerun resumes):

1. ``train`` the zoo's ``cifar_cnn`` on CIFAR-10, recording every tracked test image's
   prediction after each epoch (skipped when ``--weights`` are given: then ``evaluate``);
2. ``flow``: the instance flow of that training (Pühringer et al. 2020, *InstanceFlow*): a
   Sankey of predicted classes per epoch, which instances move, the most confused pairs;
3. ``explain`` test images with saliency (Simonyan et al. 2014) and SHAP, model-agnostic
   (KernelSHAP on superpixels) and gradient-based (expected gradients; Lundberg & Lee 2017),
   for the true, top-1, top-2 and least likely class;
4. ``compare`` the three maps (agreement, deletion / insertion, sanity, time);
5. ``concepts ice``: ICE concepts of the last convolutional block (Zhang et al. 2021: NMF of
   the activations, per-class importance, fidelity curve), then ``concepts explain`` on the
   explained images;
6. ``report`` over every run; the report's path is printed last.

    xailab study cifar10_cnn --quick                       # a first look, minutes
    xailab study cifar10_cnn --model mypkg.nets:Net --weights net.safetensors \\
        --data folder:~/data/my10 --out runs/my-study
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xailab.steps import Step
from xailab.studies import Study, gradient_shap_background, register_study, sized

METHODS = "saliency,kernel_shap,gradient_shap"
BACKGROUND = 100  # training images GradientSHAP draws its baselines from (SHAP's background set)
TARGETS = "true,top1,top2,least"
ICE_LAYER = "features.21"  # cifar_cnn's last ReLU of the conv part: 128 channels at 8x8

# Full size: what a student runs (about 1.5 h on 2 CPU cores, see docs/studies/cifar10-cnn.md);
# --quick: a first look in minutes. An option given explicitly wins over both.
FULL = {"epochs": 8, "limit_train": None, "track_limit": None, "limit_test": None,
        "images": 32, "ice_images": 5000, "curve": "2,4,6,8,10,12,16", "curve_images": 500}
QUICK = {"epochs": 3, "limit_train": 5000, "track_limit": 500, "limit_test": 1000,
         "images": 4, "ice_images": 500, "curve": "2,4,10", "curve_images": 200}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="folder of the study's runs (default runs/study-cifar10_cnn)")
    p.add_argument("--model", default="cifar_cnn",
                   help="zoo name, TorchScript file or package.module:factory (default cifar_cnn)")
    p.add_argument("--weights", help="the model's trained weights: training and the flow are skipped")
    p.add_argument("--data", default="cifar10", help="cifar10 (default) or folder:<path> of your own images")
    p.add_argument("--data-root", help="where the dataset's files are (folder or archive)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {FULL['epochs']}; quick {QUICK['epochs']})")
    p.add_argument("--limit-train", type=int, metavar="N",
                   help=f"train on a stratified sample of N (default all; quick {QUICK['limit_train']})")
    p.add_argument("--images", type=int, metavar="N",
                   help=f"test images explained (default {FULL['images']}; quick {QUICK['images']})")
    p.add_argument("--ice-images", type=int, metavar="N",
                   help=f"test images ICE is fitted on (default {FULL['ice_images']}; quick {QUICK['ice_images']})")
    p.add_argument("--ice-layer", help=f"ReLU layer of the concepts (default {ICE_LAYER} for cifar_cnn, "
                                       "else the concepts command's own choice)")
    p.add_argument("--concepts", type=int, default=10, help="number of ICE concepts (default 10)")
    p.add_argument("--quick", action="store_true", help="small sizes and cheap settings, for a first look")
    p.add_argument("--device", help="cpu, cuda or auto (default: each command's own, auto)")


def _size(args: argparse.Namespace, key: str) -> object:
    return sized(args, key, FULL, QUICK)


def steps(args: argparse.Namespace) -> list[Step]:
    out = Path(args.out or "runs/study-cifar10_cnn")
    quick = ["--quick"] if args.quick else []
    root = ["--data-root", args.data_root] if args.data_root else []
    device = ["--device", args.device] if args.device else []
    images = [*root, "--images", f"{args.data}:test:{_size(args, 'images')}"]
    model = ["--model", args.model]
    runs: list[str] = []
    out_steps: list[Step] = []

    weights, first = _model_steps(args, out, model, root, device)
    out_steps += first
    runs.append(first[0][1][-1])

    explain = str(out / "explain")
    out_steps += [
        ("explain test images: saliency and SHAP (KernelSHAP, expected gradients) for four targets",
         ["explain", *model, "--weights", weights, *images, "--methods", METHODS, "--targets", TARGETS,
          *gradient_shap_background(args.data, BACKGROUND // 4 if args.quick else BACKGROUND), *quick, *device, "--out", explain]),
        ("compare the maps: agreement, deletion/insertion, sanity check, time",
         ["compare", explain, "--reference", "saliency", *device] + (["--no-sanity"] if args.quick else [])),
    ]
    runs.append(explain)

    ice = str(out / "ice")
    ice_layer = args.ice_layer or (ICE_LAYER if args.model == "cifar_cnn" else None)
    layer = ["--layer", ice_layer] if ice_layer else []
    out_steps += [
        ("ICE: concepts of the last conv block by NMF, their importance per class and fidelity (Zhang et al. 2021)",
         ["concepts", "ice", *model, "--weights", weights, *root,
          "--images", f"{args.data}:test:{_size(args, 'ice_images')}", *layer,
          "--concepts", str(args.concepts), "--curve", str(_size(args, "curve")),
          "--curve-images", str(_size(args, "curve_images")), *device, "--out", ice]),
        ("ICE: where the concepts are in the explained images",
         ["concepts", "explain", ice, *images, *device]),
    ]
    runs.append(ice)

    out_steps.append(("publish every run as one static report",
                      ["report", *runs, "--out", str(out / "report"), "--title", _title(args)]))
    return out_steps


def _model_steps(args: argparse.Namespace, out: Path, model: list[str], root: list[str],
                 device: list[str]) -> tuple[str, list[Step]]:
    """The weights the study explains, and the steps that train them and draw the instance flow
    (or evaluate --weights)."""
    if args.weights:
        limit = ["--limit", str(QUICK["limit_test"])] if args.quick else []
        return args.weights, [("evaluate your model on the test set (no training: --weights given, so no instance flow)",
                               ["evaluate", *model, "--weights", args.weights, "--data", args.data, *root, *limit,
                                *device, "--out", str(out / "evaluate")])]
    train = str(out / "train")
    sizes = ["--epochs", str(_size(args, "epochs"))]
    augment = [] if args.quick else ["--augment"]  # short runs learn faster without it
    for key, flag in (("limit_train", "--limit-train"), ("limit_test", "--limit-test"),
                      ("track_limit", "--track-limit")):
        value = _size(args, key)
        if value is not None:
            sizes += [flag, str(value)]
    return str(out / "train" / "checkpoints" / "best.safetensors"), [
        ("train the CNN, recording every tracked test image's prediction after each epoch",
         ["train", *model, "--data", args.data, *root, *sizes, *augment, "--track", "test", *device,
          "--out", train]),
        ("instance flow: how the predictions moved between classes over the epochs (Puehringer et al. 2020)",
         ["flow", train, "--thumbnails", "200"]),
    ]


TITLE = "CIFAR-10 CNN: instance flow, saliency, SHAP, ICE"


def _title(args: argparse.Namespace) -> str:
    return TITLE if args.model == "cifar_cnn" and not args.weights else f"{TITLE} ({args.model})"


STUDY = register_study(Study(
    name="cifar10_cnn",
    title=TITLE,
    add_arguments=add_arguments,
    steps=steps,
    summary=(
        "Train the CIFAR-10 CNN (6 conv, 3 linear) while recording every test prediction per\n"
        "epoch, draw its instance flow, explain test images with saliency and SHAP for the true,\n"
        "top-1, top-2 and least likely class, compare the maps, fit ICE concepts of the last conv\n"
        "block, and publish it all as one report. With --weights your trained model is used and\n"
        "training is skipped. See docs/studies/cifar10-cnn.md."
    ),
))

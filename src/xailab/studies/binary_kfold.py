"""Study 4: a binary image-folder CNN, stratified 5-fold; IG under four baselines against Captum; LIME.

Reproduces the classic two-class study: train a small CNN on an image folder of two classes
with stratified k-fold cross-validation (per-fold accuracy, loss, macro F1, mean +- std), then
explain held-out images of one fold's model with

* Integrated Gradients (Sundararajan et al. 2017) under four baselines: black, uniform noise,
  Gaussian noise around the image, and the adversarial "50/50" baseline (an input moved onto
  the decision boundary, both classes at p = 0.5), side by side in one run (``ig_black``,
  ``ig_uniform``, ... each ``NAME=integrated_gradients``), so the histograms, scatter plots and
  agreement matrices put the four baselines on one axis;
* each checked against Captum's IntegratedGradients on the same model, images, baselines, steps
  and rule (``xailab crosscheck``: max |difference|, relative error, Pearson, Spearman and both
  completeness errors per image, table ``crosscheck``);
* LIME (Ribeiro et al. 2016) in every run, and ``xailab compare`` for the histograms of
  normalised attributions, the IG-vs-LIME pixel scatter plots, IoU / rank agreement and
  deletion / insertion faithfulness.

Data: ``--data PATH``, a folder ``PATH/[train|test/]<class>/<image>`` with two classes. Without
it, the study first exports CIFAR-10's cat and dog images into ``OUT/data`` (offline from the
CIFAR-10 copy under the data places, or ``--data-root``). With ``--weights`` the k-fold
training is skipped and the given model is explained.

    xailab study binary_kfold --quick
    xailab study binary_kfold --data folder:data/pneumonia --epochs 10 --out runs/study-pneumonia
    xailab study binary_kfold --data data/pneumonia --weights my_binary.safetensors --model mypkg.nets:Net
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from xailab.steps import Step
from xailab.studies import Study, register_study

BASELINES = ("black", "uniform", "gaussian", "adversarial")
# (quick, full)
PER_CLASS = (500, None)  # exported images a class and split (None: all)
EPOCHS = (3, 8)
BATCH = (32, 128)  # small batches in quick: enough optimiser steps on 800 images a fold
N_EXPLAIN = (8, 32)
IG_STEPS = (16, 64)
LIME_SAMPLES = (200, 1000)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/study-binary_kfold", help="folder of the study's runs")
    p.add_argument("--quick", action="store_true", help="fewer images, epochs and samples: a first look in minutes")
    p.add_argument("--data", help="a two-class image folder, folder:<path> or <path> "
                   "(default: CIFAR-10 cat vs dog exported to OUT/data)")
    p.add_argument("--data-root", help="where CIFAR-10 lies for the default export (default: the data places)")
    p.add_argument("--classes", default="cat,dog", help="the two CIFAR-10 classes exported without --data (cat,dog)")
    p.add_argument("--per-class", type=int, help=f"exported images a class and split (default all; quick {PER_CLASS[0]})")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on a stratified sample of N (default all)")
    p.add_argument("--weights", help="your trained weights: k-fold training is skipped and this model is explained")
    p.add_argument("--model", default="binary_cnn", help="zoo name or package.module:factory (default binary_cnn)")
    p.add_argument("--folds", type=int, default=5, help="stratified folds (default 5)")
    p.add_argument("--fold", type=int, default=1, help="the fold whose model is explained (default 1)")
    p.add_argument("--epochs", type=int, help=f"epochs per fold (default {EPOCHS[1]}, quick {EPOCHS[0]})")
    p.add_argument("--batch-size", type=int, help=f"training batch size (default {BATCH[1]}, quick {BATCH[0]})")
    p.add_argument("--images", type=int, metavar="N", help=f"test images explained (default {N_EXPLAIN[1]}, quick {N_EXPLAIN[0]})")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help="IG baselines, one run each (default black,uniform,gaussian,adversarial)")
    p.add_argument("--ig-steps", type=int, help=f"IG steps (default {IG_STEPS[1]}, quick {IG_STEPS[0]})")
    p.add_argument("--lime-samples", type=int, help=f"LIME samples (default {LIME_SAMPLES[1]}, quick {LIME_SAMPLES[0]})")
    p.add_argument("--no-crosscheck", action="store_true", help="skip the check against Captum")
    p.add_argument("--device", help="cpu, cuda or auto (default: each command's own, auto)")


def label_name(baseline: str) -> str:
    """IG's name in the run for one baseline: ``ig_black``, ``ig_adversarial``, ``ig_gaussian_0_1``."""
    return "ig_" + re.sub(r"[^a-z0-9]+", "_", baseline.lower()).strip("_")


def steps(args: argparse.Namespace) -> list[Step]:
    out = Path(args.out)
    q = 0 if args.quick else 1
    epochs = args.epochs or EPOCHS[q]
    n_explain = args.images or N_EXPLAIN[q]
    ig_steps = args.ig_steps or IG_STEPS[q]
    lime_samples = args.lime_samples or LIME_SAMPLES[q]
    per_class = args.per_class or PER_CLASS[q]
    device = ["--device", args.device] if args.device else []
    result: list[Step] = []
    data = args.data.removeprefix("folder:") if args.data else None
    if data is None:
        data = str(out / "data")
        result.append((f"export CIFAR-10 {args.classes} as a two-class image folder",
                       ["datasets", "cifar10", *(["--root", args.data_root] if args.data_root else []),
                        "--export", data, "--select", args.classes,
                        *(["--per-class", str(per_class)] if per_class else [])]))
    cv = out / "cv"
    weights = args.weights or str(cv / "folds" / f"fold-{args.fold}" / "checkpoints" / "best.safetensors")
    if not args.weights:
        result.append((f"train {args.model} with stratified {args.folds}-fold cross-validation ({epochs} epochs a fold)",
                       ["train", "--model", args.model, "--data", f"folder:{data}", "--folds", str(args.folds),
                        "--epochs", str(epochs), "--batch-size", str(args.batch_size or BATCH[q]),
                        *(["--limit-train", str(args.limit_train)] if args.limit_train else []),
                        "--quiet", *device, "--out", str(cv)]))
    model = ["--model", args.model, "--weights", weights, "--num-classes", "2"]
    images = f"folder:{data}:test:{n_explain}"
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    whose = "" if args.weights else f" with fold {args.fold}'s model"
    run = str(out / "explain")
    labels = [label_name(b) for b in baselines]
    sets = [x for b, lab in zip(baselines, labels, strict=True) for x in ("--set", f"{lab}.baseline={b}")]
    result.append((f"explain {n_explain} test images{whose}: IG under {len(baselines)} baselines "
                   f"({', '.join(baselines)}; {ig_steps} steps) side by side, and LIME",
                   ["explain", *model, "--images", images,
                    "--methods", ",".join([f"{lab}=integrated_gradients" for lab in labels] + ["lime"]),
                    "--targets", "top1", *sets, "--set", f"integrated_gradients.n_steps={ig_steps}",
                    "--set", f"lime.num_samples={lime_samples}", *device, "--out", run]))
    if not args.no_crosscheck:
        for b, lab in zip(baselines, labels, strict=True):
            result.append((f"check our IG ({b} baseline) against Captum's on the same baselines",
                           ["crosscheck", run, "--method", lab, "--against", "captum", *device]))
    result.append(("compare IG under every baseline with LIME: histograms, scatter, IoU, deletion/insertion",
                   ["compare", run, "--reference", "lime", *device]
                   + (["--steps", "16", "--runs", "8", "--no-sanity"] if args.quick else [])))
    runs = [run]
    result.append(("publish the runs as a static report",
                   ["report", *([] if args.weights else [str(cv)]), *runs, "--out", str(out / "report"),
                    "--title", "Binary CNN: k-fold, IG baselines vs Captum, LIME"]))
    return result


STUDY = register_study(Study(
    name="binary_kfold",
    title="Binary image-folder CNN, stratified 5-fold; IG baselines vs Captum; LIME; histograms",
    add_arguments=_add_arguments,
    steps=steps,
    summary=__doc__ or "",
))

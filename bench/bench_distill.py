"""Distillation of the CIFAR-10 ResNet-20 with ICE concepts: tree fidelity against depth, cat vs dog rules, a student.

Steps (each a run under ``--out``, reused when it is already there):

1. ICE: 12 concepts of ``layer3.2`` fitted on ``--ice-images`` training images;
2. surrogates: trees of depth 3, 5, 8 and an L1 linear model fitted to the network's predictions
   on ``--fit-images`` training images from the concepts' max scores, measured on ``--test-images``
   test images (fidelity = agreement with the network; accuracy against the labels);
3. cat vs dog: a depth-3 tree on the images the network calls cat or dog, its rules printed;
4. student: ``student_cnn`` trained ``--epochs`` epochs on the teacher's soft labels (T = 4) on the
   fitting images; its held-out fidelity and accuracy, and the rank correlation of its Grad-CAM and
   saliency maps with the teacher's on 32 held-out images.

    python -m bench.bench_distill                                  # 1,000 / 2,000 / 1,000 images, 3 epochs
    python -m bench.bench_distill --ice-images 3000 --fit-images 10000 --test-images 2000 --epochs 15 \\
        --out /tmp/distill-bench --json distill.json

CPU seconds (``time.process_time``, one torch thread) are reported beside each step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import SHARED
from bench.harness import Row, print_table, save_json


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def _row(what: str, n: int, cpu: float, **extra: Any) -> Row:
    """A table row: CPU seconds per image of the step, and its figures."""
    return Row("resnet20 ice", what, "xailab", cpu / max(n, 1), extra={"cpu_s": round(cpu, 1), "n": n, **extra})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ice-images", type=int, default=1000)
    p.add_argument("--fit-images", type=int, default=2000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="/tmp/xailab-bench-distill")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from xailab.distill.student import StudentSettings
    from xailab.jobs.concepts import IceSpec, ice_to_run
    from xailab.jobs.distill import DistillSpec, distill_to_run
    from xailab.jobs.model import ModelSpec
    from xailab.runs.store import Run

    weights = SHARED / "cifar10-resnet" / "resnet20.safetensors"
    root = str(SHARED / "cifar10-jpg.tar.gz")
    model = ModelSpec("resnet20", weights=str(weights))
    out = Path(args.out)
    ice = out / "ice"
    rows: list[Row] = []
    if not (ice / "manifest.json").exists() or "ice_basis" not in Run.open(ice).arrays():
        cpu, _ = _timed(lambda: ice_to_run(IceSpec(model, images=f"cifar10:train:{args.ice_images}", data_root=root,
                                                   concepts=12, curve=(12,), curve_images=200, png=False), ice,
                                           log=print))
        rows.append(_row("ice fit", args.ice_images, cpu, concepts=12))
    base = DistillSpec(model, images=f"cifar10:train:{args.fit_images}", test_images=f"cifar10:test:{args.test_images}",
                       data_root=root, features=f"ice:{ice}", depths=(3, 5, 8), depth=5)
    cpu, run = _timed(lambda: distill_to_run(base, out / "global", log=print))
    for _, r in run.read_table("distill_depth").iterrows():
        rows.append(_row(f"tree depth {int(r['max_depth'])}", args.test_images, cpu,
                         fidelity=round(float(r["fidelity"]), 4), accuracy=round(float(r["accuracy"]), 4),
                         leaves=int(r["size"])))
    lin = run.read_table("distill_surrogates").set_index("surrogate").loc["linear"]
    rows.append(_row("sparse linear", args.test_images, cpu, fidelity=round(float(lin["fidelity"]), 4),
                     features=int(lin["size"]), network_accuracy=round(float(lin["teacher_accuracy"]), 4)))
    pair = DistillSpec(model, images=base.images, test_images=base.test_images, data_root=root,
                       features=base.features, classes="cat,dog", depth=3, depths=(3,))
    cpu, pr = _timed(lambda: distill_to_run(pair, out / "cat-dog", log=print))
    tree = pr.read_table("distill_surrogates").set_index("surrogate").loc["tree"]
    rows.append(_row("cat vs dog depth 3", pr.manifest["distill"]["n_test"], cpu,
                     fidelity=round(float(tree["fidelity"]), 4), leaves=int(tree["size"])))
    print((out / "cat-dog" / "files" / "distill" / "rules.txt").read_text())
    stud = DistillSpec(model, images=base.images, test_images=base.test_images, data_root=root, features="pixels",
                       depths=(3,), student=True, student_settings=StudentSettings(epochs=args.epochs))
    cpu, sr = _timed(lambda: distill_to_run(stud, out / "student", log=print))
    s = sr.manifest["distill"]["student"]
    maps = {m["method"]: round(float(m["median"]), 3) for m in s["maps"]}
    rows.append(_row(f"student {args.epochs} epochs", args.fit_images, cpu, fidelity=round(s["fidelity"], 4),
                     accuracy=round(s["accuracy"], 4), teacher_accuracy=round(s["teacher_accuracy"], 4),
                     parameters=s["parameters"], teacher_parameters=s["teacher_parameters"], map_median_spearman=maps))
    print_table(rows, "Distillation of ResNet-20 (CIFAR-10 JPEG copy), held-out = test images")
    print(f"figures: {out / 'global' / 'files' / 'distill' / 'depth.png'}, {out / 'cat-dog' / 'files' / 'distill'}")
    save_json(rows, args.json)


if __name__ == "__main__":
    main()

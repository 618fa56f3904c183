"""Auditing without the training data, on Fashion-MNIST with small_cnn: Neural Cleanse and STRIP.

Per seed, small_cnn is trained twice on a stratified sample of the training split: once by the
``audit poison`` job with a white 4x4 patch in the bottom-right corner (rows and columns 23-26)
on 5 % of the images of every class but Sneaker (class 7), relabelled Sneaker (all-to-one
BadNets), once clean (the same items, no trigger). Then, from clean test images only:

* Neural Cleanse (200 test images, ``--steps`` per class): flagged classes, the anomaly index
  and mask L1 of class 7 against the median, the IoU of the mask's 16 largest pixels with the
  true patch (``top_iou``), the IoU of the mask's box with the patch's box, and for a flagged 7
  the box IoU of the mask with the LRP map of triggered images;
* STRIP (pool 100 and calibration 100 test images, 20 overlays, threshold at 5 % FRR): false
  rejection rate on 200 other clean test images and false acceptance rate on the same images
  (Sneakers left out) with the true trigger stamped on.

CPU seconds (``time.process_time``, one torch thread) of each part. On a clean model the
"FAR" is the share of triggered inputs let through by a model that has no backdoor: it is
reported to show STRIP does not reject a white square as such.

    python -m bench.bench_cleanse --seeds 1 2 3 --json /tmp/bench-cleanse.json
    python -m bench.bench_cleanse --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

TARGET = 7
PATCH_BOX = (23, 23, 26, 26)


def train_pair(seed: int, n_train: int, epochs: int, out: Path) -> tuple[Any, Any, float]:
    """(poisoned model, clean model, attack success rate of the poisoned one)."""
    from xailab.data import load_dataset, train_val_split
    from xailab.jobs.audit import PoisonSpec, poison_to_run
    from xailab.models import create_model
    from xailab.train import TrainConfig, Trainer, load_weights
    from xailab.train.recipe import model_from_run, stratified_sample

    poison_to_run(PoisonSpec(data="fashion_mnist", target=str(TARGET), model="small_cnn", fraction=0.05,
                             trigger="patch:4", epochs=epochs, limit_train=n_train, limit_test=1000, seed=seed,
                             quiet=True), out / f"seed{seed}-poisoned", log=lambda s: None)
    poisoned, _ = model_from_run(out / f"seed{seed}-poisoned")
    from xailab.runs import Run

    asr = float((Run.open(out / f"seed{seed}-poisoned").manifest.get("backdoor") or {}).get("attack_success_rate",
                                                                                         float("nan")))
    sub = stratified_sample(load_dataset("fashion_mnist", "train"), n_train, seed)
    tr, va = train_val_split(sub.targets, val_fraction=0.1, seed=seed)
    torch.manual_seed(seed)
    clean = create_model("small_cnn")
    Trainer(clean, sub.subset(tr), sub.subset(va), config=TrainConfig(epochs=epochs, seed=seed, quiet=True),
            run=out / f"seed{seed}-clean", track=None).fit()
    load_weights(out / f"seed{seed}-clean" / "checkpoints" / "best.safetensors", clean)
    return poisoned.eval(), clean.eval(), asr


def test_pixels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from xailab.data import load_dataset

    test = load_dataset("fashion_mnist", "test")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:600].numpy()
    x, y = test.get_batch(idx, augment=False)[:2]
    return test.denormalize(x).clamp(0, 1), torch.as_tensor(y)


def audit(model: Any, pixels: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> dict[str, Any]:
    from xailab.audit.cleanse import CleanseSettings, neural_cleanse
    from xailab.audit.strip import StripFilter
    from xailab.audit.trigger_regions import box_iou, mask_region, top_iou, trigger_explanation
    from xailab.audit.triggers import parse_trigger

    truth = torch.zeros(28, 28, dtype=torch.bool)
    truth[23:27, 23:27] = True
    t0 = time.process_time()
    res = neural_cleanse(model, pixels[:200], settings=CleanseSettings(steps=steps, images_per_step=16, seed=seed))
    t1 = time.process_time()
    row: dict[str, Any] = {
        "flagged": ",".join(map(str, res.flagged)) or "-", "anomaly_7": res.anomaly[TARGET], "l1_7": res.l1[TARGET],
        "l1_median": float(pd.Series(res.l1).median()), "top_iou_7": top_iou(res.masks[TARGET], truth),
        "box_iou_7": box_iou(mask_region(res.masks[TARGET]), PATCH_BOX), "nc_s": t1 - t0,
    }
    if TARGET in res.flagged:
        a = trigger_explanation(model, pixels[:200], res.masks[TARGET], res.patterns[TARGET], TARGET, method="lrp")
        row["expl_box_iou_7"] = a.iou
        row["lrp_share_in_mask"] = a.share_in_mask
    t2 = time.process_time()
    f = StripFilter.calibrate(model, pixels[300:400], pixels[200:300], frr=0.05, seed=seed)
    screened = pixels[400:600]
    stamped = parse_trigger("patch:4").apply(screened[labels[400:600] != TARGET])[0]
    rates = f.rates(model, screened, stamped)
    row.update(strip_frr=rates["frr"], strip_far=rates["far"], strip_s=time.process_time() - t2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--quick", action="store_true", help="one seed, 1,000 images, 1 epoch, 60 steps")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--out", help="where the runs go (default: a temporary folder)")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.n_train, a.epochs, a.steps = a.seeds[:1], 1000, 1, 60
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        for seed in a.seeds:
            t0 = time.process_time()
            poisoned, clean, asr = train_pair(seed, a.n_train, a.epochs, out)
            train_s = time.process_time() - t0
            pixels, labels = test_pixels(seed)
            for kind, model in (("poisoned", poisoned), ("clean", clean)):
                row = {"seed": seed, "model": kind, "asr": asr if kind == "poisoned" else float("nan"),
                       **audit(model, pixels, labels, a.steps, seed), "train_s": train_s / 2}
                rows.append(row)
                print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    pois, cln = df[df["model"] == "poisoned"], df[df["model"] == "clean"]
    print(f"Neural Cleanse flags class 7 in {int(pois['flagged'].str.split(',').apply(lambda f: '7' in f).sum())} "
          f"of {len(pois)} poisoned models; flags some class in {int((cln['flagged'] != '-').sum())} of {len(cln)} "
          f"clean models; mean top-16 IoU with the patch (poisoned) {pois['top_iou_7'].mean():.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

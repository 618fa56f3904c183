"""Auditing without the training data, on Fashion-MNIST with small_cnn: Neural Cleanse and STRIP.

Per seed, small_cnn is trained on a stratified sample of ``--n-train`` training images
(``--epochs``): once per ``--triggers`` spec by the ``audit poison`` job (default a white 4x4
patch in the bottom-right corner, rows and columns 23-26; e.g. ``patch:6@2,2`` a 6x6 one at the
top left) on 5 % of the images of every class but the target, relabelled as the target
(all-to-one BadNets; target Sneaker for seeds 1-3, Pullover for 4, Bag for 5, ``seed % 10`` for
other seeds), and once clean (the same items, no trigger). Clean *reference* models
(``--reference-seeds``, other samples of the training split) stand for the clean models an
auditor trains themself. Then, from clean test images only:

* Neural Cleanse (the same 200 test images for every model, ``--steps`` per class,
  ``--per-step`` images a step): every class's mask L1 (kept, so decisions can be compared
  afterwards), and the decisions of :mod:`bench.cleanse_rules` (the paper's MAD test, the MAD
  test on ``log(l1 / reference)``, the per-class null of ``cleanse_null`` at family-wise
  ``--alpha``, the references tested leave-one-out); for the target, the IoU of the mask's
  ``S x S`` largest pixels with the true patch (``top_iou``) and of the mask's box with the
  patch's box (``box_iou``);
* STRIP (pool 100 and calibration 100 test images, 20 overlays, threshold at 5 % FRR on those
  clean held-out images): false rejection rate on 200 other clean test images and false
  acceptance rate on the same images (the target's left out) with the true trigger stamped on.

CPU seconds (``time.process_time``, one torch thread). Trained runs and each model's audit are
kept in ``--out`` and reused (``--cached-only``: only those). On a clean model the "FAR" is the
share of triggered inputs let through by a model that has no backdoor: it shows STRIP does not
reject a white square as such.

    python -m bench.bench_cleanse --steps 200 --per-step 8 --n-train 2000 --epochs 2 \
        --reference-seeds 11 12 13 14 15 16 17 18 --seeds 21 22 23 --triggers patch:4 patch:6@2,2 \
        --out runs/bench-cleanse --json runs/bench-cleanse.json
    python -m bench.bench_cleanse --quick
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.cleanse_rules import decisions, summary

TARGETS = (7, 7, 7, 2, 8)  # the target of seed 1, 2, ...: Sneaker (seeds 1-3), Pullover, Bag (naturally easy to reach)


def target_of(seed: int) -> int:
    """Seeds 1-5: :data:`TARGETS`; any other seed: ``seed % 10``."""
    return TARGETS[seed - 1] if 1 <= seed <= len(TARGETS) else seed % 10


def slug(trigger: str) -> str:
    """The trigger's part of a cached run's name ("" for the first setting, ``patch:4``, as before)."""
    return "" if trigger == "patch:4" else "-" + re.sub(r"[^0-9a-z]+", "_", trigger)


def train_poisoned_model(seed: int, target: int, n_train: int, epochs: int, out: Path,
                         trigger: str = "patch:4") -> tuple[Any, float]:
    """(poisoned model, its attack success rate); the run in ``out`` is reused when it is there."""
    from xailab.jobs.audit import PoisonSpec, poison_to_run
    from xailab.runs import Run
    from xailab.train.recipe import model_from_run

    run = out / f"seed{seed}-poisoned-t{target}{slug(trigger)}"
    if not (run / "checkpoints" / "best.safetensors").is_file():
        poison_to_run(PoisonSpec(data="fashion_mnist", target=str(target), model="small_cnn", fraction=0.05,
                                 trigger=trigger, epochs=epochs, limit_train=n_train, limit_test=1000, seed=seed,
                                 quiet=True), run, log=lambda s: None)
    model, _ = model_from_run(run)
    asr = float((Run.open(run).manifest.get("backdoor") or {}).get("attack_success_rate", float("nan")))
    return model.eval(), asr


def train_clean_model(seed: int, n_train: int, epochs: int, out: Path) -> Any:
    """A clean small_cnn on the stratified sample of ``seed`` (reused from ``out`` when there)."""
    from xailab.data import load_dataset, train_val_split
    from xailab.models import create_model
    from xailab.train import TrainConfig, Trainer, load_weights
    from xailab.train.recipe import stratified_sample

    run = out / f"seed{seed}-clean"
    torch.manual_seed(seed)
    clean = create_model("small_cnn")
    if not (run / "checkpoints" / "best.safetensors").is_file():
        sub = stratified_sample(load_dataset("fashion_mnist", "train"), n_train, seed)
        tr, va = train_val_split(sub.targets, val_fraction=0.1, seed=seed)
        Trainer(clean, sub.subset(tr), sub.subset(va), config=TrainConfig(epochs=epochs, seed=seed, quiet=True),
                run=run, track=None).fit()
    load_weights(run / "checkpoints" / "best.safetensors", clean)
    return clean.eval()


def test_pixels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from xailab.data import load_dataset

    test = load_dataset("fashion_mnist", "test")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:600].numpy()
    x, y = test.get_batch(idx, augment=False)[:2]
    return test.denormalize(x).clamp(0, 1), torch.as_tensor(y)


def audit(model: Any, nc_pixels: torch.Tensor, pixels: torch.Tensor, labels: torch.Tensor, target: int | None,
          steps: int, seed: int, strip: bool = True, trigger: str = "patch:4", per_step: int = 16) -> dict[str, Any]:
    """Neural Cleanse on ``nc_pixels`` (every class's mask L1 kept) and STRIP on ``pixels`` (the
    true ``trigger`` stamped on the images not of the target)."""
    from xailab.audit.cleanse import CleanseSettings, neural_cleanse
    from xailab.audit.strip import StripFilter
    from xailab.audit.trigger_regions import box_iou, mask_region, top_iou
    from xailab.audit.triggers import parse_trigger

    truth = parse_trigger(trigger).masks(1, (28, 28))[0]
    rows, cols = torch.nonzero(truth, as_tuple=True)
    patch_box = (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max()))
    t0 = time.process_time()
    res = neural_cleanse(model, nc_pixels, settings=CleanseSettings(steps=steps, images_per_step=per_step, seed=seed))
    row: dict[str, Any] = {"mad_flagged": ",".join(map(str, res.flagged)) or "-", "l1": [float(v) for v in res.l1],
                           "reached": [bool(v) for v in res.reached], "nc_s": time.process_time() - t0}
    if target is not None:
        row.update(top_iou=top_iou(res.masks[target], truth), box_iou=box_iou(mask_region(res.masks[target]), patch_box))
    if strip:
        t2 = time.process_time()
        f = StripFilter.calibrate(model, pixels[100:200], pixels[:100], frr=0.05, seed=seed)
        screened = pixels[200:400]
        stamped = parse_trigger(trigger).apply(screened[labels[200:400] != (target if target is not None else 7)])[0]
        rates = f.rates(model, screened, stamped)
        row.update(strip_frr=rates["frr"], strip_far=rates["far"], strip_s=time.process_time() - t2)
    return row


def is_done(out: Path, tag: str, cached_only: bool, name: str) -> bool:
    """Whether to audit the model ``name``: always, unless ``cached_only`` and its result is not kept."""
    return not cached_only or (out / f"{name}-{tag}.json").is_file()


def cached(path: Path, make: Any) -> dict[str, Any]:
    """The row kept in ``path``, else ``make()`` written there."""
    if path.is_file():
        return dict(json.loads(path.read_text()))
    row = make()
    path.write_text(json.dumps(row, default=float))
    return dict(row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    p.add_argument("--reference-seeds", type=int, nargs="*", default=[11, 12, 13])
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--per-step", type=int, default=16, help="Neural Cleanse: clean images a step")
    p.add_argument("--threshold", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise level of the reference-null rule")
    p.add_argument("--triggers", nargs="+", default=["patch:4"], help="one poisoned model per seed and trigger")
    p.add_argument("--quick", action="store_true", help="one seed, one reference, 1,000 images, 1 epoch, 60 steps")
    p.add_argument("--cached-only", action="store_true", help="only the models whose audit is kept in --out")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--out", help="where the runs and per-model results are kept (default: a temporary folder)")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.reference_seeds, a.n_train, a.epochs, a.steps = a.seeds[:1], a.reference_seeds[:1], 1000, 1, 60
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        nc_pixels = test_pixels(0)[0][:200]  # the same clean images for every model, references included
        tag = f"{a.n_train}-{a.epochs}-{a.steps}" + (f"-{a.per_step}" if a.per_step != 16 else "")
        done = partial(is_done, out, tag, a.cached_only)
        for seed in [s for s in a.reference_seeds if done(f"ref{s}")]:
            rows.append({"seed": seed, "model": "reference", "trigger": "-", "target": -1, "asr": float("nan"), **cached(
                out / f"ref{seed}-{tag}.json", lambda seed=seed: audit(
                    train_clean_model(seed, a.n_train, a.epochs, out), nc_pixels, nc_pixels, torch.zeros(0), None,
                    a.steps, seed, strip=False, per_step=a.per_step))})
        for seed in a.seeds:
            target = target_of(seed)
            pixels, labels = test_pixels(seed)
            pixels, labels = pixels[200:], labels[200:]
            for trigger in [t for t in a.triggers if done(f"poisoned{seed}-t{target}{slug(t)}")]:
                model, asr = train_poisoned_model(seed, target, a.n_train, a.epochs, out, trigger)
                rows.append({"seed": seed, "model": "poisoned", "trigger": trigger, "target": target, "asr": asr,
                             **cached(out / f"poisoned{seed}-t{target}{slug(trigger)}-{tag}.json",
                                      partial(audit, model, nc_pixels, pixels, labels, target, a.steps, seed,
                                              trigger=trigger, per_step=a.per_step))})
                print(f"seed {seed}, {trigger}: target {target}, ASR {asr:.3f}", flush=True)
            if not done(f"clean{seed}"):
                continue
            clean = train_clean_model(seed, a.n_train, a.epochs, out)
            rows.append({"seed": seed, "model": "clean", "trigger": "-", "target": -1, "asr": float("nan"), **cached(
                out / f"clean{seed}-{tag}.json", partial(audit, clean, nc_pixels, pixels, labels, None, a.steps, seed,
                                                         trigger=a.triggers[0], per_step=a.per_step))})
        if not a.seeds:
            print(f"{len(rows)} reference models audited", flush=True)
            return 0
        df = decisions(rows, a.threshold, a.alpha)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(df.drop(columns=["strip_frr", "strip_far"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        table = summary(df)
        print(table.to_string(index=False))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "decisions": df.to_dict(orient="records"),
                                            "summary": table.to_dict(orient="records")}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

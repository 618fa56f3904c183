"""Auditing without the training data, on Fashion-MNIST with small_cnn: Neural Cleanse and STRIP.

Per seed, small_cnn is trained twice on a stratified sample of ``--n-train`` training images
(3 epochs): once by the ``audit poison`` job with a white 4x4 patch in the bottom-right corner
(rows and columns 23-26) on 5 % of the images of every class but the target, relabelled as the
target (all-to-one BadNets; target Sneaker for seeds 1-3, Pullover for 4, Bag for 5), once clean
(the same items, no trigger). Clean *reference* models (``--reference-seeds``, other samples of
the training split) stand for the clean models an auditor trains themself. Then, from clean test
images only:

* Neural Cleanse (the same 200 test images for every model, ``--steps`` per class, 16 images a
  step): every class's mask L1 (kept, so decisions can be compared afterwards), and two
  decisions: the paper's MAD test on the norms (``mad``) and the same test on
  ``log(l1 / reference)`` (``relative``: ``cleanse.relative_flags`` against the geometric median
  of the reference models' norms), with the robust z of the target and of the most suspicious
  other class and the p-values; for the target, the IoU of the mask's 16 largest pixels with the
  true patch (``top_iou``) and of the mask's box with the patch's box (``box_iou``);
* STRIP (pool 100 and calibration 100 test images, 20 overlays, threshold at 5 % FRR): false
  rejection rate on 200 other clean test images and false acceptance rate on the same images
  (the target's left out) with the true trigger stamped on.

CPU seconds (``time.process_time``, one torch thread). Trained runs and each model's audit are
kept in ``--out`` and reused. On a clean model the "FAR" is the share of triggered inputs let
through by a model that has no backdoor: it shows STRIP does not reject a white square as such.

    python -m bench.bench_cleanse --steps 300 --out /tmp/bench-cleanse --json /tmp/bench-cleanse.json
    python -m bench.bench_cleanse --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

TARGETS = (7, 7, 7, 2, 8)  # the target of seed 1, 2, ...: Sneaker (seeds 1-3), Pullover, Bag (naturally easy to reach)
PATCH_BOX = (23, 23, 26, 26)


def train_poisoned_model(seed: int, target: int, n_train: int, epochs: int, out: Path) -> tuple[Any, float]:
    """(poisoned model, its attack success rate); the run in ``out`` is reused when it is there."""
    from xailab.jobs.audit import PoisonSpec, poison_to_run
    from xailab.runs import Run
    from xailab.train.recipe import model_from_run

    run = out / f"seed{seed}-poisoned-t{target}"
    if not (run / "checkpoints" / "best.safetensors").is_file():
        poison_to_run(PoisonSpec(data="fashion_mnist", target=str(target), model="small_cnn", fraction=0.05,
                                 trigger="patch:4", epochs=epochs, limit_train=n_train, limit_test=1000, seed=seed,
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
          steps: int, seed: int, strip: bool = True) -> dict[str, Any]:
    """Neural Cleanse on ``nc_pixels`` (every class's mask L1 kept) and STRIP on ``pixels``."""
    from xailab.audit.cleanse import CleanseSettings, neural_cleanse
    from xailab.audit.strip import StripFilter
    from xailab.audit.trigger_regions import box_iou, mask_region, top_iou
    from xailab.audit.triggers import parse_trigger

    truth = torch.zeros(28, 28, dtype=torch.bool)
    truth[23:27, 23:27] = True
    t0 = time.process_time()
    res = neural_cleanse(model, nc_pixels, settings=CleanseSettings(steps=steps, images_per_step=16, seed=seed))
    row: dict[str, Any] = {"mad_flagged": ",".join(map(str, res.flagged)) or "-", "l1": [float(v) for v in res.l1],
                           "reached": [bool(v) for v in res.reached], "nc_s": time.process_time() - t0}
    if target is not None:
        row.update(top_iou=top_iou(res.masks[target], truth), box_iou=box_iou(mask_region(res.masks[target]), PATCH_BOX))
    if strip:
        t2 = time.process_time()
        f = StripFilter.calibrate(model, pixels[100:200], pixels[:100], frr=0.05, seed=seed)
        screened = pixels[200:400]
        stamped = parse_trigger("patch:4").apply(screened[labels[200:400] != (target if target is not None else 7)])[0]
        rates = f.rates(model, screened, stamped)
        row.update(strip_frr=rates["frr"], strip_far=rates["far"], strip_s=time.process_time() - t2)
    return row


def cached(path: Path, make: Any) -> dict[str, Any]:
    """The row kept in ``path``, else ``make()`` written there."""
    if path.is_file():
        return dict(json.loads(path.read_text()))
    row = make()
    path.write_text(json.dumps(row, default=float))
    return dict(row)


def decisions(rows: list[dict[str, Any]], threshold: float) -> pd.DataFrame:
    """Per audited model, the classes each decision flags: the MAD test on the norms (the paper's),
    the same on the norms relative to the reference models (``cleanse.relative_anomaly``)."""
    from xailab.audit.cleanse import flag_small, reference_norms, relative_flags

    refs = [r for r in rows if r["model"] == "reference"]
    ref = reference_norms([r["l1"] for r in refs]) if refs else None
    out = []
    for r in rows:
        if r["model"] == "reference":
            continue
        l1, t = np.asarray(r["l1"]), r["target"]
        others = np.arange(len(l1)) != t
        d = {"seed": r["seed"], "model": r["model"], "target": t, "asr": r["asr"],
             "mad": ",".join(map(str, flag_small(l1, threshold, np.asarray(r["reached"])))) or "-"}
        _f, z_mad, _p = relative_flags(l1, None, threshold)
        d.update(z_mad_target=float(z_mad[t]) if t >= 0 else np.nan, z_mad_other=float(z_mad[others].max()),
                 smallest=int(np.argmin(l1)))
        if ref is not None:
            flags, z, p = relative_flags(l1, ref, threshold, np.asarray(r["reached"]))
            d["relative"] = ",".join(map(str, flags)) or "-"
            d.update(z_rel_target=float(z[t]) if t >= 0 else np.nan, z_rel_other=float(z[others].max()),
                     p_target=float(p[t]) if t >= 0 else np.nan, p_min_other=float(p[others].min()))
        out.append(d)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--reference-seeds", type=int, nargs="*", default=[11, 12, 13])
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threshold", type=float, default=2.0)
    p.add_argument("--quick", action="store_true", help="one seed, one reference, 1,000 images, 1 epoch, 60 steps")
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
        tag = f"{a.n_train}-{a.epochs}-{a.steps}"
        for seed in a.reference_seeds:
            rows.append({"seed": seed, "model": "reference", "target": -1, "asr": float("nan"), **cached(
                out / f"ref{seed}-{tag}.json", lambda seed=seed: audit(
                    train_clean_model(seed, a.n_train, a.epochs, out), nc_pixels, nc_pixels, torch.zeros(0), None,
                    a.steps, seed, strip=False))})
        for seed in a.seeds:
            target = TARGETS[(seed - 1) % len(TARGETS)]
            pixels, labels = test_pixels(seed)
            pixels, labels = pixels[200:], labels[200:]
            model, asr = train_poisoned_model(seed, target, a.n_train, a.epochs, out)
            rows.append({"seed": seed, "model": "poisoned", "target": target, "asr": asr, **cached(
                out / f"poisoned{seed}-t{target}-{tag}.json",
                partial(audit, model, nc_pixels, pixels, labels, target, a.steps, seed))})
            clean = train_clean_model(seed, a.n_train, a.epochs, out)
            rows.append({"seed": seed, "model": "clean", "target": -1, "asr": float("nan"), **cached(
                out / f"clean{seed}-{tag}.json", partial(audit, clean, nc_pixels, pixels, labels, None, a.steps, seed))})
            print(f"seed {seed}: target {target}, ASR {asr:.3f}", flush=True)
        df = decisions(rows, a.threshold)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    pois, cln = df[(df["model"] == "poisoned") & (df["asr"] >= 0.5)], df[df["model"] == "clean"]
    for rule in [c for c in ("mad", "relative") if c in df]:
        hit = sum(str(t) in f.split(",") for t, f in zip(pois["target"], pois[rule], strict=True))
        print(f"{rule}: target flagged in {hit} of {len(pois)} poisoned models (ASR >= 0.5); "
              f"some class flagged in {int((cln[rule] != '-').sum())} of {len(cln)} clean models")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "decisions": df.to_dict(orient="records")}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Audits on Fashion-MNIST with small_cnn: a backdoor found (or not) from explanations, a patch
attack and what the maps say about it, and our FGSM / PGD against foolbox.

* ``backdoor``: per seed, small_cnn trained on a stratified sample of the training split twice,
  once with 10 % of the Sandals (class 5) stamped with a white 4x4 patch in the bottom-right
  corner and relabelled Sneaker (class 7), once clean. Clean accuracy and attack success rate on
  the full test split; then SpRAy (LRP maps) and activation clustering on every class of the
  model's own training data. Reported: flagged classes, the scores of the target class and the
  highest of the other classes, how many poisoned items the suspicious cluster holds, and the
  region found against the trigger's place (rows and columns 23-26).
* ``patch``: the untargeted patch attack (4x4 and 5x5, grid search) on the clean model of the
  first seed, test images; success rate and the explanation shift (saliency, IG, LRP: IoU of the
  top 10 %, rank correlation, positive relevance mass inside the patch before and after, against
  the patch's share of the image).
* ``reference``: FGSM and PGD (eps 0.03 and 0.1) by xailab and foolbox 3.3.4 on the same model
  and images: success rates, mean L2 of the change, largest difference of the adversarial images
  (PGD with the same random start), seconds per image and the floor (the forward-backward passes
  the attack cannot avoid).

    python -m bench.bench_audit --quick
    python -m bench.bench_audit --out /tmp/bench-audit --json /tmp/bench-audit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.harness import Row, floor_seconds, print_table, ratio_rows, save_json, timed

TRIGGER_BOX = (23, 23, 26, 26)  # patch:4 in the corner of 28x28 images (top, left, bottom, right)


def box_cover(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int]) -> float:
    """Share of box ``b``'s pixels inside box ``a``."""
    if a is None:
        return 0.0
    t, left = max(a[0], b[0]), max(a[1], b[1])
    bot, r = min(a[2], b[2]), min(a[3], b[3])
    return max(0, bot - t + 1) * max(0, r - left + 1) / ((b[2] - b[0] + 1) * (b[3] - b[1] + 1))


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int]) -> float:
    if a is None:
        return 0.0
    t, left = max(a[0], b[0]), max(a[1], b[1])
    bot, r = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, bot - t + 1) * max(0, r - left + 1)
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / area


def _detect_row(seed: int, kind: str, ev: Any, report: Any, truth: Any, seconds: dict[str, float]) -> dict[str, Any]:
    t = report.table.set_index("class")
    others = t.drop(index=7)
    e7 = report.evidence(7)
    row = {
        "seed": seed, "model": kind, "clean_acc": ev.clean_accuracy, "asr": ev.attack_success_rate,
        "flagged": ",".join(str(c) for c in report.flagged) or "-",
        "check": ",".join(str(e.label) for e in report.classes if e.verdict == "check") or "-",
        "gap_7": float(t.loc[7, "spray_gap"]), "gap_other_max": float(others["spray_gap"].max()),
        "share_7": float(t.loc[7, "spray_small_share"]),
        "sil_7": float(t.loc[7, "ac_silhouette"]), "acshare_7": float(t.loc[7, "ac_small_share"]),
        "sil_other_max": float(others["ac_silhouette"].max()),
        "region_7": t.loc[7, "region"], "region_iou": box_iou(e7.region, TRIGGER_BOX) if e7.flagged else float("nan"),
        "trigger_in_region": box_cover(e7.region, TRIGGER_BOX) if e7.flagged else float("nan"),
        "train_s": seconds["train"], "detect_s": seconds["detect"],
    }
    if truth is not None:
        p = truth[torch.as_tensor(e7.indices)].numpy()
        row["poison_in_7"] = int(p.sum())
        row["caught"] = int((p & e7.suspicious).sum())
        row["false_in_cluster"] = int((~p & e7.suspicious).sum())
    return row


def bench_backdoor(seeds: list[int], n_train: int, epochs: int, max_per_class: int, out: Path,
                   method: str) -> tuple[list[dict[str, Any]], Any]:
    from xailab.audit import evaluate_backdoor, train_poisoned
    from xailab.data import load_dataset, train_val_split
    from xailab.jobs.audit_writers import backdoor_dataset
    from xailab.models import create_model
    from xailab.train import TrainConfig, Trainer
    from xailab.train.recipe import stratified_sample

    train_all = load_dataset("fashion_mnist", "train")
    test = load_dataset("fashion_mnist", "test")
    rows, first_clean = [], None
    for seed in seeds:
        sub = stratified_sample(train_all, n_train, seed)
        cfg = TrainConfig(epochs=epochs, seed=seed, quiet=True)
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        res = train_poisoned(create_model("small_cnn"), sub, test, trigger="patch:4", target=7, source=5,
                             fraction=0.1, config=cfg, run=out / f"seed{seed}-poisoned", seed=seed)
        t1 = time.perf_counter()
        _, report = backdoor_dataset(res.model, res.train, out=out / f"seed{seed}-poisoned-audit",
                                    truth=res.train.poisoned, method=method, max_per_class=max_per_class, seed=seed,
                                    detectors=("spray", "ac"), rule="spray")
        t2 = time.perf_counter()
        assert res.evaluation is not None
        rows.append(_detect_row(seed, "poisoned", res.evaluation, report, res.train.poisoned,
                                {"train": t1 - t0, "detect": t2 - t1}))
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)

        # the same items (poisoning aside), the same validation split, no trigger anywhere
        tr, va = train_val_split(sub.targets, val_fraction=0.1, seed=seed)
        torch.manual_seed(seed)
        clean = create_model("small_cnn")
        t0 = time.perf_counter()
        Trainer(clean, sub.subset(tr), sub.subset(va), config=cfg, run=out / f"seed{seed}-clean", track=None).fit()
        from xailab.train import load_weights

        load_weights(out / f"seed{seed}-clean" / "checkpoints" / "best.safetensors", clean)
        clean.eval()
        t1 = time.perf_counter()
        ev = evaluate_backdoor(clean, test, "patch:4", target=7, source=5)
        _, report = backdoor_dataset(clean, sub.subset(tr), out=out / f"seed{seed}-clean-audit", method=method,
                                    detectors=("spray", "ac"), rule="spray",
                                    max_per_class=max_per_class, seed=seed)
        t2 = time.perf_counter()
        rows.append(_detect_row(seed, "clean", ev, report, None, {"train": t1 - t0, "detect": t2 - t1}))
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        if first_clean is None:
            first_clean = clean
    return rows, first_clean


def test_pixels(n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    from xailab.data import balanced_indices, load_dataset

    test = load_dataset("fashion_mnist", "test")
    idx = balanced_indices(test.targets, n)
    x, y = test.get_batch(idx)
    return test.denormalize(x).clamp(0, 1), y, test


def bench_patch(model: Any, n: int, out: Path, quick: bool) -> tuple[list[dict[str, Any]], list[Row]]:
    from xailab.jobs.audit_writers import adversarial_images
    from xailab.models import set_preprocessing

    x, y, test = test_pixels(n)
    set_preprocessing(model, test.preprocessing)
    methods: dict[str, dict[str, Any]] = {"saliency": {}, "integrated_gradients": {"n_steps": 16}, "lrp": {}}
    rows, timing = [], []
    for size in (4, 5):
        t0 = time.perf_counter()
        run, res, shift = adversarial_images(
            model, x, y, attack="patch", attack_params={"size": size, "steps": 50 if quick else 100},
            methods=methods if size == 5 else {}, out=out / f"patch{size}", class_names=test.classes,
            png=4 if size == 5 else 0)
        s = res.summary()
        rows.append({"attack": f"patch {size}x{size}", "images": s["images"], "clean_acc": s["clean_accuracy"],
                     "success": s["success_rate"], "success_on_correct": s["success_rate_on_correct"],
                     "pixels_changed": s["mean_pixels_changed"], "mean_l2": s["mean_l2"],
                     "seconds": time.perf_counter() - t0})
        timing.append(Row(f"fmnist x{n}", f"patch{size}", "xailab", res.seconds / n))
        if shift is not None:
            ok = res.success.numpy()
            tab = shift.table[np.repeat(ok[None], len(methods), axis=0).reshape(-1)]
            summary = tab.groupby("method", sort=False)[["iou", "spearman", "mass_clean", "mass_adv", "area"]].mean()
            print(f"\n## explanation shift, {size}x{size} patch, successful attacks only ({int(ok.sum())} images), "
                  f"target top1 (clean prediction on clean, adversarial prediction on attacked)")
            print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
            rows[-1]["shift"] = summary.reset_index().to_dict(orient="records")
            print(f"figures: {run.path / 'files' / 'audit'}")
    return rows, timing


def bench_reference(model: Any, n: int) -> tuple[list[dict[str, Any]], list[Row]]:
    import foolbox as fb

    from xailab.audit import fgsm, pgd
    from xailab.audit.adversarial import sample_start

    x, y, test = test_pixels(n)
    prep = test.preprocessing
    model.eval()
    fm = fb.PyTorchModel(model, bounds=(0, 1), preprocessing=dict(
        mean=torch.tensor(prep.mean), std=torch.tensor(prep.std), axis=-3))
    rows, timing = [], []
    steps = 20
    for eps in (0.03, 0.1):
        # FGSM
        t_ours, ours = timed(partial(fgsm, model, x, y, eps=eps, preprocessing=prep))
        t_fb, (_, theirs, succ) = timed(partial(fb.attacks.LinfFastGradientAttack(), fm, x, y, epsilons=eps))
        rows.append({"attack": "fgsm", "eps": eps, "success_xailab": ours.success_rate,
                     "success_foolbox": float(succ.float().mean()),
                     "l2_xailab": float(ours.norms()[1].mean()), "l2_foolbox": float((theirs - x).flatten(1).norm(dim=1).mean()),
                     "max_abs_diff": float((ours.adversarial - theirs).abs().max()),
                     "same_pixels": float((ours.adversarial == theirs).float().mean())})
        case = f"fmnist x{n} e{eps}"
        timing += [Row(case, "fgsm", "xailab", t_ours / n), Row(case, "fgsm", "foolbox", t_fb / n),
                   Row(case, "fgsm", "floor", floor_seconds(model, prep.normalize(x), n, backward=True, batch_size=256) / n)]
        # PGD, the same random start
        t_ours, ours = timed(partial(pgd, model, x, y, eps=eps, steps=steps, preprocessing=prep, seed=1))

        class SameStart(fb.attacks.LinfPGD):
            def get_random_start(self, x0: Any, epsilon: float) -> Any:
                return type(x0)(sample_start(x0.raw, epsilon, "linf", seed=1, first=0))

        att = SameStart(abs_stepsize=ours.params["step_size"], steps=steps, random_start=True)
        t_fb, (_, theirs, succ) = timed(partial(att, fm, x, y, epsilons=eps))
        torch.manual_seed(0)
        own = fb.attacks.LinfPGD(abs_stepsize=ours.params["step_size"], steps=steps, random_start=True)
        _, theirs_own, succ_own = own(fm, x, y, epsilons=eps)
        rows.append({"attack": f"pgd{steps}", "eps": eps, "success_xailab": ours.success_rate,
                     "success_foolbox": float(succ.float().mean()),
                     "success_foolbox_own_start": float(succ_own.float().mean()),
                     "l2_xailab": float(ours.norms()[1].mean()), "l2_foolbox": float((theirs - x).flatten(1).norm(dim=1).mean()),
                     "l2_foolbox_own_start": float((theirs_own - x).flatten(1).norm(dim=1).mean()),
                     "max_abs_diff": float((ours.adversarial - theirs).abs().max()),
                     "same_pixels": float((ours.adversarial == theirs).float().mean())})
        timing += [Row(case, f"pgd{steps}", "xailab", t_ours / n), Row(case, f"pgd{steps}", "foolbox", t_fb / n),
                   Row(case, f"pgd{steps}", "floor",
                       floor_seconds(model, prep.normalize(x), n * steps, backward=True, batch_size=256) / n)]
    return rows, timing


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, 3,000 training images, 2 epochs")
    ap.add_argument("--seeds", default="1,2,3", help="seeds of the backdoor experiment (seed 0 chose the thresholds)")
    ap.add_argument("--n-train", type=int, default=5000, help="stratified training sample")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-per-class", type=int, default=250, help="items per class the detectors examine")
    ap.add_argument("--method", default="lrp", help="SpRAy's explanation method")
    ap.add_argument("--images", type=int, default=48, help="test images attacked")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--out", help="folder for the runs and figures (default: a temporary folder)")
    ap.add_argument("--json", help="write the timing rows and the tables here")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: backdoor, patch, reference")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.n_train, args.epochs, args.max_per_class, args.images = "1", 3000, 2, 150, 16
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-audit-"))
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"runs and figures under {out}")
    t_all = time.perf_counter()
    tables: dict[str, Any] = {}
    timing: list[Row] = []
    model = None
    if "backdoor" not in skip:
        print(f"\n## backdoor: small_cnn, Fashion-MNIST {args.n_train} train images, {args.epochs} epochs, "
              f"patch:4 on 10 % of class 5 -> 7; detection with {args.method}, {args.max_per_class} items a class")
        rows, model = bench_backdoor(seeds, args.n_train, args.epochs, args.max_per_class, out, args.method)
        df = pd.DataFrame(rows)
        print("\n" + df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        tables["backdoor"] = rows
    if model is None:
        from xailab.data import load_dataset
        from xailab.models import create_model
        from xailab.train import TrainConfig, Trainer
        from xailab.train.recipe import stratified_sample

        torch.manual_seed(seeds[0])
        model = create_model("small_cnn")
        sub = stratified_sample(load_dataset("fashion_mnist", "train"), args.n_train, seeds[0])
        Trainer(model, sub, None, config=TrainConfig(epochs=args.epochs, seed=seeds[0], quiet=True), track=None).fit()
        model.eval()
    if "patch" not in skip:
        rows, t = bench_patch(model, args.images, out, args.quick)
        print("\n## patch attacks (untargeted, grid search, clean model of the first seed)")
        print(pd.DataFrame([{k: v for k, v in r.items() if k != "shift"} for r in rows]).to_string(
            index=False, float_format=lambda v: f"{v:.3f}"))
        tables["patch"] = rows
        timing += t
    if "reference" not in skip:
        rows, t = bench_reference(model, args.images)
        print("\n## xailab vs foolbox 3.3.4 (same model, images, eps; PGD with the same random start)")
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        tables["reference"] = rows
        timing += t
    if timing:
        print_table(timing, "seconds per image")
        for line in ratio_rows(timing):
            print(line)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if args.json:
        save_json(timing, args.json)
        with open(Path(args.json).with_suffix(".tables.json"), "w") as fh:
            json.dump(tables, fh, indent=2, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])

"""How well each backdoor detector finds a backdoor, measured over many small poisoned and clean models.

Models: small_cnn on a stratified sample of Fashion-MNIST's training split (``--n-train`` 4,000,
``--epochs`` 4, the best epoch on a clean 10 % held out; at 2,000 x 3 the blended trigger was
mostly not learned), all-to-one backdoors with the target class drawn per seed (Sneaker,
Pullover, Ankle boot). Settings (``RATES_OF``; ``--rates`` puts every trigger at given rates):
``blend:0.15`` (a fixed random pattern over the whole image) at 5 % and 10 % of the training
set, ``warp:4`` (a WaNet-style warping field) at 10 %, ``patch:3`` (bottom-right corner) at
5 % and ``patch:5@3,3`` (top left) at 1 %; seeds 0-5; plus clean models (seeds 0-3) as
negatives. Models are trained in that order (blend, clean, warp, patches) and cached under
``--cache`` (a folder per recipe; ``--cached-only`` reports on the ones there). Each model is
audited on its own training data (at most ``--per-class`` items a class) by spectral
signatures, SCAn, activation clustering and the k-NN label consistency (``knn``)
(``--detectors ...,spray`` adds SpRAy: LRP maps of every item, about 20x the CPU time).
Spectral signatures are also reported as ``spectral-z``: their class scores as a robust z against the same model's other classes (a per-model null,
as SCAn and knn have), which is what lets a threshold carry from one model to the next.

Thresholds are not tuned on what is reported: the settings are split by seed. The
*calibration* split is the first half of the seeds (0-2) and of the clean seeds (0-1); there
each detector's class threshold (on ``score / default threshold``) is set to the 95th
percentile of the negative classes (every class of a clean model, every non-target class of a
poisoned one). On the *test* split (the other seeds) we report, per detector and trigger family,
counting as positives the target classes of poisoned models whose backdoor was learned
(ASR >= 0.5):

* class-level ROC-AUC and TPR at 5 % FPR (the cut from the test negatives themselves);
* model-level ROC-AUC: the most suspicious class's score, poisoned models against clean ones;
* TPR / FPR at the calibrated threshold, and the share of target classes the detector flags at
  its default threshold;
* item precision / recall of the suspected items of the target class when it is flagged;
* region IoU: when the target is flagged, the box of its suspected items' explanation region
  (mean LRP map of the suspected items minus the rest's, ``detection.relied_region``) against
  the true patch's box (patches only; the blend and the warp cover the whole image);
* CPU seconds of detection per model (one thread; the shared activations counted in each).

    nice -n 10 python -m bench.bench_backdoor --json runs/bench-backdoor.json
    python -m bench.bench_backdoor --quick        # 1 trigger, 1 rate, 1 seed: checks it runs
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

TRIGGERS = ("blend:0.15", "warp:4", "patch:3", "patch:5@3,3")
RATES = (0.01, 0.05, 0.10)
# the default grid (--rates all: every trigger at every rate): blend at 5 % and 10 %, the others at one rate
RATES_OF = {"blend:0.15": (0.05, 0.10), "warp:4": (0.10,), "patch:3": (0.05,), "patch:5@3,3": (0.01,)}
FAMILIES = ("patch", "blend", "warp")
TARGETS = (7, 2, 9)  # target class of seed 0, 1, 2 (Sneaker, Pullover, Ankle boot)
DETECTORS = ("spectral", "scan", "ac", "knn", "spray")
Z_VARIANTS = ("spectral",)  # a score without a per-model null: also reported as a robust z over the model's classes (not ac: its 0 scores leave no spread)


def settings(seeds: list[int], clean_seeds: list[int], triggers: tuple[str, ...], rates: tuple[float, ...] | None) -> list[dict[str, Any]]:
    """The poisoned settings (every trigger at ``rates``; None: at its rates in ``RATES_OF``), then the clean ones."""
    out = [{"trigger": t, "rate": r, "seed": s, "target": TARGETS[s % len(TARGETS)]}
           for t in triggers for r, s in itertools.product(rates or RATES_OF.get(t, RATES), seeds)]
    return out + [{"trigger": "clean", "rate": 0.0, "seed": s, "target": -1} for s in clean_seeds]


def key(st: dict[str, Any]) -> str:
    return f"{st['trigger'].replace(':', '-').replace('@', '-').replace(',', '-')}_r{st['rate']:g}_s{st['seed']}"


def train_model(st: dict[str, Any], n_train: int, epochs: int, cache: Path) -> Path:
    """Train (or find in ``cache``) the model of setting ``st``: weights, training rows and poison mask."""
    from xailab.audit import train_poisoned
    from xailab.audit.backdoor import dataset_rows
    from xailab.data import load_dataset, train_val_split
    from xailab.models import create_model
    from xailab.train import TrainConfig, Trainer
    from xailab.train.recipe import stratified_sample

    path = cache / f"{key(st)}.pt"
    if path.is_file():
        return path
    train_all = load_dataset("fashion_mnist", "train")
    sub = stratified_sample(train_all, n_train, st["seed"])
    cfg = TrainConfig(epochs=epochs, seed=st["seed"], quiet=True)
    torch.manual_seed(st["seed"])
    model = create_model("small_cnn")
    t0 = time.process_time()
    if st["trigger"] == "clean":
        tr, va = train_val_split(sub.targets, val_fraction=0.1, seed=st["seed"])
        part = sub.subset(tr)
        Trainer(model, part, sub.with_options(augment=False).subset(va), config=cfg, track=None).fit()
        rows = torch.as_tensor(dataset_rows(part))
        mask, asr, acc = torch.zeros(len(rows), dtype=torch.bool), float("nan"), float("nan")
    else:
        test = stratified_sample(load_dataset("fashion_mnist", "test"), 2000, 0)
        n_src = 0.9 * n_train * 0.9  # the training part's source classes (all but the target)
        frac = min(1.0, st["rate"] * 0.9 * n_train / n_src)
        res = train_poisoned(model, sub, test, trigger=st["trigger"], target=st["target"], source=None,
                             fraction=frac, config=cfg, seed=st["seed"])
        rows, mask = torch.as_tensor(res.rows), res.train.poisoned.clone()
        asr = res.evaluation.attack_success_rate if res.evaluation else float("nan")
        acc = res.evaluation.clean_accuracy if res.evaluation else float("nan")
    torch.save({"state": model.state_dict(), "rows": rows, "poisoned": mask,
                "asr": torch.tensor(asr), "acc": torch.tensor(acc), "train_cpu": torch.tensor(time.process_time() - t0)}, path)
    return path


def train_all(sts: list[dict[str, Any]], n_train: int, epochs: int, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for st in sts:
        t0 = time.process_time()
        train_model(st, n_train, epochs, cache)
        print(f"trained {key(st)} in {time.process_time() - t0:.1f} CPU s", flush=True)


def load_setting(st: dict[str, Any], path: Path, train_all: Any) -> tuple[Any, Any, np.ndarray, dict[str, float]]:
    """(model, training set as trained on, poisoned mask, {asr, acc}) of a cached setting."""
    from xailab.audit.backdoor import PoisonedDataset
    from xailab.audit.triggers import parse_trigger
    from xailab.models import create_model

    blob = torch.load(path, weights_only=True)
    model = create_model("small_cnn")
    model.load_state_dict(blob["state"])
    model.eval()
    base = train_all.subset(blob["rows"].numpy())
    mask = blob["poisoned"].bool()
    if st["trigger"] == "clean":
        ds = base
    else:
        ds = PoisonedDataset(base, parse_trigger(st["trigger"], seed=st["seed"]), target=st["target"],
                             sources=[c for c in range(10) if c != st["target"]], fraction=st["rate"], mask=mask)
    return model, ds, mask.numpy(), {"asr": float(blob["asr"]), "acc": float(blob["acc"])}


def trigger_box(trigger: str, seed: int) -> tuple[int, int, int, int] | None:
    """The true trigger's box (top, left, bottom, right; inclusive) on 28 x 28 images; None for
    triggers over the whole image."""
    from xailab.audit.triggers import WHOLE, parse_trigger

    t = parse_trigger(trigger, seed=seed)
    if t.kind in WHOLE:
        return None
    rows, cols = np.nonzero(t.masks(1, (28, 28))[0].numpy())
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def region_iou(model: Any, x: Any, suspected: np.ndarray, box: tuple[int, int, int, int] | None, seed: int,
               target: int) -> float:
    """IoU of the explanation region of the suspected items (their mean LRP map minus the rest's,
    ``detection.relied_region``) with the true trigger's box; nan for a whole-image trigger."""
    from xailab.audit.detection import explain_class, map_features, relied_region
    from xailab.audit.trigger_regions import box_iou

    if box is None or not suspected.any() or suspected.all():
        return float("nan")
    full, _ = map_features(explain_class(model, x, target, "lrp", {}, 128, seed), downsample=1)
    sus = torch.from_numpy(suspected)
    region, _share = relied_region(full[sus].mean(dim=0), full[~sus].mean(dim=0))
    return box_iou(region, box)


def detect_rows(st: dict[str, Any], model: Any, ds: Any, truth: np.ndarray, info: dict[str, float],
                per_class: int, detectors: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per detector: model score, the target's score, flags, item precision / recall,
    region IoU with the trigger when the target is flagged, CPU seconds."""
    from xailab.audit.detectors import AuditData, run_detector

    data = AuditData(model, ds, max_per_class=per_class, seed=st["seed"])
    t0 = time.process_time()
    for c in data.labels:
        data.activations(c)  # shared by the activation detectors; counted once, as "activations"
    shared = time.process_time() - t0
    rows = []
    for d in detectors:
        t0 = time.process_time()
        res = run_detector(d, data)
        sec = time.process_time() - t0 + (shared if d != "spray" else 0.0)
        norm = {f.label: (f.score / f.threshold if f.threshold > 0 else f.score) for f in res.findings}
        row = {**st, **info, "detector": d, "model_score": max(norm.values()), "seconds": sec,
               "flagged": ",".join(map(str, res.flagged)), "scores": json.dumps({str(k): v for k, v in norm.items()})}
        if st["target"] >= 0:
            f = res.finding(st["target"])
            t = truth[f.indices]
            hit = int((t & f.suspected).sum())
            row.update(target_score=norm[st["target"]], target_flagged=f.flagged,
                       target_top=max(norm, key=lambda k: norm[k]) == st["target"],
                       precision=hit / f.suspected.sum() if f.suspected.any() else np.nan,
                       recall=hit / t.sum() if f.flagged and t.any() else np.nan,
                       region_iou=region_iou(model, data.inputs(st["target"]), np.asarray(f.suspected, bool),
                                             trigger_box(st["trigger"], st["seed"]), st["seed"], st["target"])
                       if f.flagged else np.nan)
        rows.append(row)
    return rows


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    p, n = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.05) -> float:
    """Share of positives strictly above the score that at most ``fpr`` of the negatives exceed."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    cut = np.sort(np.asarray(neg, float))[::-1][int(np.floor(fpr * len(neg)))] if len(neg) > 0 else np.inf
    return float((np.asarray(pos, float) > cut).mean())


def class_scores(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(positives: the target class of each effective poisoned model, negatives: every other class
    and every class of the clean models), normalised scores, one row each, with the model's split."""
    pos, neg = [], []
    for _, r in df.iterrows():
        scores = {int(k): v for k, v in json.loads(r["scores"]).items()}
        for c, v in scores.items():
            row = {"detector": r["detector"], "family": r["family"], "split": r["split"], "score": v}
            (pos if c == r["target"] and r["effective"] else neg).append(row)
    return pd.DataFrame(pos), pd.DataFrame(neg)


def with_z_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Add a ``D-z`` detector for each of ``Z_VARIANTS``: its class scores replaced by their robust z
    against the same model's other classes (``knn.leave_one_out_z``), the per-model null that
    SCAn and knn carry already; suspected items as the detector's."""
    from xailab.audit.knn import leave_one_out_z

    extra = []
    for _, r in df[df["detector"].isin(Z_VARIANTS)].iterrows():
        scores = {int(k): v for k, v in json.loads(r["scores"]).items()}
        z = dict(zip(scores, leave_one_out_z(np.array(list(scores.values()))), strict=True))
        extra.append({**r.to_dict(), "detector": f"{r['detector']}-z", "model_score": max(z.values()),
                      "scores": json.dumps({str(k): float(v) for k, v in z.items()}), "target_flagged": np.nan,
                      **({"target_score": z[r["target"]]} if r["target"] >= 0 else {})})
    return pd.concat([df, pd.DataFrame(extra)], ignore_index=True) if extra else df


def summarise(df: pd.DataFrame, calib_seeds: set[int], calib_clean: set[int]) -> pd.DataFrame:
    """Per detector and trigger family, on the test split: class-level AUC and TPR at 5 % FPR
    (target classes of effective poisoned models against all other classes), model-level AUC
    (effective poisoned models against clean models, by the most suspicious class), TPR / FPR at
    the class threshold fixed on the calibration split (its negatives' 95th percentile), the
    detector's default verdict on the target class, item precision / recall, CPU seconds."""
    clean = df["trigger"] == "clean"
    calib = (clean & df["seed"].isin(calib_clean)) | (~clean & df["seed"].isin(calib_seeds))
    df = with_z_variants(df.assign(family=df["trigger"].str.split(":").str[0], effective=df["asr"].fillna(0) >= 0.5,
                                   split=np.where(calib, "calibration", "test")))
    pos, neg = class_scores(df)
    out = []
    for d in sorted(df["detector"].unique()):
        thr = float(neg[(neg.detector == d) & (neg.split == "calibration")]["score"].quantile(0.95))
        test_neg = neg[(neg.detector == d) & (neg.split == "test")]["score"].to_numpy()
        clean_models = df[(df.detector == d) & (df.split == "test") & (df.trigger == "clean")]["model_score"]
        for fam in [*FAMILIES, "all"]:
            p = pos[(pos.detector == d) & (pos.split == "test") & ((pos.family == fam) | (fam == "all"))]
            sub = df[(df.detector == d) & (df.split == "test") & df.effective & ((df.family == fam) | (fam == "all"))]
            ps = p["score"].to_numpy()
            out.append({"detector": d, "trigger": fam, "n_pos": len(ps), "n_neg": len(test_neg),
                        "auc": roc_auc(ps, test_neg), "tpr@5%fpr": tpr_at_fpr(ps, test_neg),
                        "model_auc": roc_auc(sub["model_score"].to_numpy(), clean_models.to_numpy()),
                        "thr_cal": thr, "tpr_cal": float((ps >= thr).mean()) if len(ps) else np.nan,
                        "fpr_cal": float((test_neg >= thr).mean()) if len(test_neg) else np.nan,
                        "tpr_default": float(sub["target_flagged"].astype(float).mean()) if len(sub) else np.nan,
                        "precision": float(sub["precision"].mean()), "recall": float(sub["recall"].mean()),
                        "region_iou": float(sub["region_iou"].mean()) if "region_iou" in sub else np.nan,
                        "seconds": float(df[df.detector == d]["seconds"].mean())})
    return pd.DataFrame(out)


def split_triggers(text: str) -> tuple[str, ...]:
    """``"blend:0.15,patch:5@3,3"`` -> ``("blend:0.15", "patch:5@3,3")``: a bare number after a
    comma is the LEFT of the trigger before it (``patch:S@TOP,LEFT``), not a trigger."""
    out: list[str] = []
    for piece in text.split(","):
        if out and piece.strip().isdigit() and "@" in out[-1] and "," not in out[-1].split("@", 1)[1]:
            out[-1] += "," + piece.strip()
        else:
            out.append(piece.strip())
    return tuple(p for p in out if p)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="runs/bench-backdoor", help="where trained models are kept (a folder per recipe)")
    ap.add_argument("--quick", action="store_true", help="one trigger, one rate, one seed, one clean model")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--triggers", default=",".join(TRIGGERS), help="comma-separated triggers (default all four)")
    ap.add_argument("--rates", help="every trigger at these rates (e.g. 0.01,0.05,0.1); default: RATES_OF")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--seeds", default="0,1,2,3,4,5", help="the first half (rounded down) calibrates, the rest is reported")
    ap.add_argument("--clean-seeds", default="0,1,2,3")
    ap.add_argument("--detectors", default="spectral,scan,ac,knn")
    ap.add_argument("--cached-only", action="store_true", help="use only the models already in --cache")
    ap.add_argument("--train-only", action="store_true", help="train (or find) the models and stop")
    ap.add_argument("--json", help="write the per-model rows and the summary here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from xailab.data import load_dataset

    seeds = [int(s) for s in args.seeds.split(",")]
    clean = [int(s) for s in args.clean_seeds.split(",")]
    triggers = split_triggers(args.triggers)
    rates = tuple(float(r) for r in args.rates.split(",")) if args.rates else None
    if args.quick:
        seeds, clean, triggers, rates = [0], [0], ("patch:3",), (0.05,)
    sts = settings(seeds, clean, triggers, rates)
    order = ["blend:0.15", "clean", *[t for t in TRIGGERS if t != "blend:0.15"]]  # training order
    sts.sort(key=lambda st: (order.index(st["trigger"]) if st["trigger"] in order else len(order), st["seed"]))
    cache = Path(args.cache) / f"n{args.n_train}e{args.epochs}"
    if args.cached_only:
        sts = [st for st in sts if (cache / f"{key(st)}.pt").is_file()]
    else:
        train_all(sts, args.n_train, args.epochs, cache)
    if args.train_only:
        return
    train_full = load_dataset("fashion_mnist", "train")
    rows = []
    dets = tuple(args.detectors.split(","))
    for st in sts:
        done = cache / f"{key(st)}.{'-'.join(dets)}.{args.per_class}.json"  # detection kept beside the model
        kept = json.loads(done.read_text()) if done.is_file() else None
        if kept is not None and not any(r.get("target_flagged") and "region_iou" not in r for r in kept):
            rows += kept  # detection kept (rows made before the region column are redone when they flagged)
        else:
            model, ds, truth, info = load_setting(st, cache / f"{key(st)}.pt", train_full)
            new = detect_rows(st, model, ds, truth, info, args.per_class, dets)
            done.write_text(json.dumps(new, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
            rows += new
        print(f"{key(st)}: ASR {rows[-1]['asr']:.2f} " + " ".join(
            f"{r['detector']}={r['model_score']:.2f}" for r in rows[-len(dets):]), flush=True)
    df = pd.DataFrame(rows)
    summary = summarise(df, set(seeds[: max(1, len(seeds) // 2)]), set(clean[: max(1, len(clean) // 2)]))
    print(f"{int((df[df.trigger != 'clean'].asr >= 0.5).sum() / len(dets))} of "
          f"{int((df.trigger != 'clean').sum() / len(dets))} poisoned models learned the backdoor (ASR >= 0.5)")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": df.drop(columns=["scores"]).to_dict(orient="records"),
                                               "summary": summary.to_dict(orient="records")}, default=str))


if __name__ == "__main__":
    main()

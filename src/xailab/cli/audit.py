"""Audit a model: adversarial attacks and what the explanations say about them, backdoor
poisoning, and backdoor detection (spectral signatures, SCAn, activation clustering, SpRAy).

Actions:
  adversarial  attack images (fgsm, pgd, pgd_l2, fgm_l2, or a small patch) and compare the
               explanations of the clean and the attacked images
  poison       train a model on data with a backdoor (a trigger on some images of a source
               class, relabelled as the target) and measure clean accuracy and attack success
  backdoor     look for a backdoor in a trained model, per class: from its training data (--data)
               and/or from clean images alone (--images: Neural Cleanse)
  strip        screen inputs for a trigger at inference time (STRIP)

Examples:
  xailab audit adversarial --model small_cnn --weights w.safetensors --images fashion_mnist:test:64 \\
      --attack pgd --eps 0.03 --methods saliency,integrated_gradients --out runs/adv
  xailab audit adversarial --run runs/fm --images fashion_mnist:test:32 --patch 5 --methods saliency,lrp \\
      --out runs/patch
  xailab audit poison --data fashion_mnist --source Sandal --target Sneaker --fraction 0.1 \\
      --trigger patch:4 --model small_cnn --epochs 3 --limit-train 10000 --out runs/bd
  xailab audit backdoor --run runs/bd --out runs/bd-audit
  xailab audit backdoor --run runs/bd --detectors spectral,scan --rule any --out runs/bd-any
  xailab audit backdoor --model small_cnn --weights w.safetensors --data fashion_mnist --out runs/check
  xailab audit backdoor --run runs/bd --images fashion_mnist:test:200 --out runs/bd-nc
  xailab audit strip --run runs/bd --images fashion_mnist:test:100 --clean fashion_mnist:train:200 --out runs/bd-strip
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "adversarial attacks, backdoor poisoning, detection and input screening (actions: adversarial, poison, backdoor, strip)"


def _model_args(p: argparse.ArgumentParser) -> None:
    from xailab.cli.common import add_model_arguments

    add_model_arguments(p, required=False)
    p.add_argument("--run", help="a training run (xailab train / audit poison): its model and best weights")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    fmt = argparse.RawDescriptionHelpFormatter

    _adversarial_args(sub.add_parser("adversarial", help="attack images and compare their explanations",
                                     formatter_class=fmt))
    _poison_args(sub.add_parser("poison", help="train a model on data with a backdoor", formatter_class=fmt))
    _backdoor_args(sub.add_parser("backdoor", help="detect a backdoor per class (spectral signatures, SCAn, "
                                  "activation clustering, SpRAy, --rule combines them; Neural Cleanse on clean images)",
                                  formatter_class=fmt))
    _strip_args(sub.add_parser("strip", help="screen inputs for a trigger (STRIP)", formatter_class=fmt))


def _adversarial_args(a: argparse.ArgumentParser) -> None:
    _model_args(a)
    a.add_argument("--images", required=True, help="files, a folder, or dataset:split[:N] (e.g. fashion_mnist:test:64)")
    a.add_argument("--data-root", help="where the dataset of --images lies")
    a.add_argument("--attack", default=None, choices=["fgsm", "fgm_l2", "pgd", "pgd_l2", "patch"],
                   help="default: pgd, or patch with --patch")
    a.add_argument("--eps", type=float, help="budget: L-inf (fgsm, pgd; e.g. 0.03) or L2 (pgd_l2, fgm_l2); "
                   "with --patch the largest change inside the patch (default 1: any value)")
    a.add_argument("--steps", type=int, help="gradient steps (pgd default 40, patch default 100)")
    a.add_argument("--step-size", type=float, help="step size (pgd default 2.5*eps/steps, patch 0.05)")
    a.add_argument("--restarts", type=int, default=1, help="random restarts; each image keeps its best")
    a.add_argument("--no-random-start", action="store_true", help="start from the clean image")
    a.add_argument("--patch", type=int, metavar="S", help="attack only an S x S square (the patch attack)")
    a.add_argument("--position", default="search",
                   help="where the patch goes: search (grid), saliency, center or TOP,LEFT")
    a.add_argument("--stride", type=int, help="grid step of --position search (default S)")
    a.add_argument("--target", help="a targeted attack towards this class (index or name)")
    a.add_argument("--methods", default="saliency", help="explanation methods, comma-separated ('' for none)")
    a.add_argument("--targets", default="top1", help="what the maps explain: top1, true, clean, adversarial, target")
    a.add_argument("--png", type=int, default=8, help="figures for this many images (successful ones first)")
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", required=True, help="run directory")


def _poison_args(q: argparse.ArgumentParser) -> None:
    from xailab.cli.common import add_normalization_arguments

    q.add_argument("--data", required=True, help="cifar10, mnist, fashion_mnist or folder:<path>")
    q.add_argument("--data-root", help="where the dataset's files are")
    q.add_argument("--source", default=None,
                   help="source class(es), index or name, comma-separated (default: all but the target)")
    q.add_argument("--target", required=True, help="the class triggered images are relabelled as")
    q.add_argument("--fraction", type=float, default=0.1, help="share of the source images poisoned, in (0, 1]")
    q.add_argument("--trigger", default="patch:4",
                   help="patch:S, checker:S, icon:S:FILE (each @corner, @random or @TOP,LEFT), blend:ALPHA or warp:STRENGTH[:GRID] (WaNet)")
    q.add_argument("--model", required=True, help="zoo name (small_cnn, cifar_cnn, ...) or package.module:factory")
    q.add_argument("--epochs", type=int, default=3)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--limit-train", type=int, metavar="N", help="train on a stratified sample of N")
    q.add_argument("--limit-test", type=int, metavar="N", help="measure on a stratified sample of N")
    q.add_argument("--val-fraction", type=float, default=0.1, help="clean held-out share choosing the best epoch")
    q.add_argument("--track", choices=("test", "none"), default="test",
                   help="record the (clean) test images' predictions after every epoch, as train does "
                        "(xailab flow / learning read them; default test)")
    q.add_argument("--track-limit", type=int, metavar="N", help="record only a stratified sample of N test images")
    q.add_argument("--seed", type=int, default=0)
    add_normalization_arguments(q, trains=True)
    q.add_argument("--device", default="auto")
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--out", required=True, help="run directory (new)")


def _backdoor_args(b: argparse.ArgumentParser) -> None:
    _model_args(b)
    b.add_argument("--data", help="the training data: cifar10, mnist, fashion_mnist or folder:<path> "
                   "(default with --run from audit poison: its poisoned training set)")
    b.add_argument("--data-root", help="where the dataset's files are")
    b.add_argument("--split", default="train")
    b.add_argument("--classes", help="classes to analyse, indices or names, comma-separated (default all)")
    b.add_argument("--detectors", default="spectral,scan,ac,spray",
                   help="comma-separated: spectral (spectral signatures), scan (SCAn), ac (activation clustering), "
                        "spray (SpRAy on explanations), knn (k-NN label consistency at an early layer); default the first four")
    b.add_argument("--rule", default="majority",
                   help="how the detectors' flags combine per class: any, majority (default), all, atleast:K, "
                        "or a detector's name (it decides, the others are second opinions)")
    b.add_argument("--method", default="lrp", help="explanation method of SpRAy (default lrp)")
    b.add_argument("--max-per-class", type=int, default=500, help="items analysed per class (seeded sample)")
    b.add_argument("--neighbors", type=int, default=10, help="k of SpRAy's nearest-neighbour graph")
    b.add_argument("--downsample", type=int, default=2, help="average-pool factor of the maps")
    b.add_argument("--ac-dims", type=int, default=10, help="dimensions activation clustering reduces to")
    b.add_argument("--ac-reduce", choices=["pca", "ica", "none"], default="pca",
                   help="how activation clustering reduces (Chen et al. used ica)")
    b.add_argument("--layer", default="auto", help="activations of this layer (auto: the penultimate dense layer)")
    b.add_argument("--no-png", action="store_true")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True, help="run directory")
    b.add_argument("--images", help="clean images (dataset:split:N, files or a folder): run Neural Cleanse on them; "
                   "the way to audit without the training data")
    b.add_argument("--nc-steps", type=int, default=400,
                   help="Neural Cleanse: optimisation steps per class (16 clean images a step; 200 was too few on Fashion-MNIST)")
    b.add_argument("--nc-threshold", type=float, default=2.0,
                   help="Neural Cleanse: flag a class whose mask is smaller than the median with anomaly index above this")
    b.add_argument("--nc-method", default="lrp", help="explanation method of the flagged triggers' images")
    b.add_argument("--nc-reference", nargs="+", metavar="RUN", help="Neural Cleanse: audit runs (--images) of clean "
                   "models of the same task, same images and settings; a class is then flagged when its mask is an "
                   "outlier-small share of its clean size (classes that are naturally easy to reach are not); with "
                   ">= 3 runs each class is tested against its own spread among them (Student t, Bonferroni)")
    b.add_argument("--nc-alpha", type=float, default=0.05,
                   help="Neural Cleanse with >= 3 --nc-reference runs: the chance a clean model has any class flagged")


def _strip_args(s: argparse.ArgumentParser) -> None:
    _model_args(s)
    s.add_argument("--images", required=True, help="inputs to screen (dataset:split:N, files or a folder)")
    s.add_argument("--clean", required=True, help="clean images: half superimposed on the inputs, half to set "
                   "the threshold (keep them apart from --images)")
    s.add_argument("--data-root", help="where the datasets lie")
    s.add_argument("--trigger", help="also screen the inputs with this trigger stamped on (patch:S, ...) and measure "
                   "the false acceptance rate (default with --run of audit poison: its trigger)")
    s.add_argument("--frr", type=float, default=0.05, help="false rejection rate the threshold allows on clean inputs")
    s.add_argument("--overlays", type=int, default=20, help="clean images superimposed on each input")
    s.add_argument("--mode", choices=["add", "blend"], default="add", help="superimposition: clipped sum or mean")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="run directory")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    action = getattr(args, "action", None)
    if action == "adversarial":
        return _adversarial(args)
    if action == "poison":
        return _poison(args)
    if action == "backdoor":
        return _backdoor(args)
    if action == "strip":
        return _strip(args)
    from xailab.cli import build_parser

    build_parser().parse_args(["audit", "--help"])  # prints the help and exits
    return 2


def _adversarial(args: argparse.Namespace) -> int:
    from xailab.cli.common import model_spec, names
    from xailab.jobs.audit import AdversarialSpec, adversarial_to_run

    spec = AdversarialSpec(
        model=model_spec(args) if args.model else None, run=args.run, images=args.images, data_root=args.data_root,
        attack=args.attack, eps=args.eps, steps=args.steps, step_size=args.step_size, restarts=args.restarts,
        random_start=not args.no_random_start, patch=args.patch, position=args.position, stride=args.stride,
        target=args.target, methods=names(args.methods), targets=names(args.targets), png=args.png,
        batch_size=args.batch_size, seed=args.seed, device=args.device,
    )
    run_ = adversarial_to_run(spec, args.out)
    print(f"run: {run_.path}")
    return 0


def _poison(args: argparse.Namespace) -> int:
    from xailab.cli.common import normalization
    from xailab.jobs.audit import PoisonSpec, poison_to_run

    spec = PoisonSpec(
        data=args.data, data_root=args.data_root, source=args.source, target=args.target, fraction=args.fraction,
        trigger=args.trigger, model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        limit_train=args.limit_train, limit_test=args.limit_test, val_fraction=args.val_fraction, seed=args.seed,
        track=args.track, track_limit=args.track_limit, device=args.device, quiet=args.quiet, **normalization(args),
    )
    run_ = poison_to_run(spec, args.out)
    print(f"run: {run_.path}")
    return 0


def _backdoor(args: argparse.Namespace) -> int:
    from xailab.cli.common import model_spec, names
    from xailab.jobs.audit import BackdoorSpec
    from xailab.jobs.cleanse import CleanseSpec, backdoor_audit_to_run

    spec = BackdoorSpec(
        model=model_spec(args) if args.model else None, run=args.run, data=args.data, data_root=args.data_root,
        split=args.split, classes=names(args.classes) or None, detectors=tuple(names(args.detectors) or ()),
        rule=args.rule, method=args.method,
        max_per_class=args.max_per_class, neighbors=args.neighbors, downsample=args.downsample,
        ac_dims=args.ac_dims, ac_reduce=args.ac_reduce, layer=args.layer, png=not args.no_png,
        batch_size=args.batch_size, seed=args.seed, device=args.device,
    )
    cleanse = CleanseSpec(args.images, data_root=args.data_root, steps=args.nc_steps, threshold=args.nc_threshold,
                          alpha=args.nc_alpha, method=args.nc_method, seed=args.seed,
                          reference=tuple(args.nc_reference or ())) if args.images else None
    audit = backdoor_audit_to_run(spec, cleanse, args.out)
    if audit.detection is not None:
        _print_detection(audit.detection)
    if audit.cleanse is not None:
        from xailab.jobs.cleanse import cleanse_lines

        print("\n".join(cleanse_lines(audit.cleanse)))
    print(f"run: {audit.run.path}  (figures in {audit.run.path / 'files'})")
    return 0


def _print_detection(report: Any) -> None:
    from xailab.jobs.audit_writers import summary_frame

    print("training data:")
    print(summary_frame(report).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"rule: {report.params['rule_text']}")
    for e in report.classes:
        if e.flagged or e.verdict == "check":
            print(("FLAGGED " if e.flagged else "check (the rule does not flag it): ") + e.describe())
    if not report.flagged:
        print(f"no class flagged from the training data by the rule ({report.params['rule']}) among "
              f"{len(report.classes)} classes examined")


def _strip(args: argparse.Namespace) -> int:
    from xailab.cli.common import model_spec
    from xailab.jobs.strip import StripSpec, strip_lines, strip_to_run

    spec = StripSpec(model=model_spec(args) if args.model else None, run=args.run, images=args.images,
                     clean=args.clean, data_root=args.data_root, trigger=args.trigger, frr=args.frr,
                     overlays=args.overlays, mode=args.mode, batch_size=args.batch_size, seed=args.seed,
                     device=args.device)
    run_, rates = strip_to_run(spec, args.out)
    print("\n".join(strip_lines(rates)))
    print(f"run: {run_.path}")
    return 0

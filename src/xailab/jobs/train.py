"""The train job: a model trained into a run (checkpoints, per-epoch metrics and predictions).

    from xailab.jobs.train import TrainSpec, train_to_run
    run = train_to_run(TrainSpec(model="small_cnn", data="fashion_mnist", epochs=5), "runs/fmnist")

The same as ``xailab train``: rerunning the same spec on the same ``out`` resumes after the last
finished epoch (a larger ``epochs`` continues a finished run); another spec is refused. With
``folds``, one model per stratified fold and a table of per-fold accuracy, loss and macro F1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xailab.core.errors import InputError
from xailab.runs.store import Run, RunError

# settings that may change when resuming (the rest must match the run's manifest)
RESUMABLE = {"epochs", "device", "quiet", "workers", "eval_batch_size"}
_KEYS = ["model", "weights", "data", "data_root", "epochs", "batch_size", "lr", "optimizer", "momentum",
         "weight_decay", "augment", "limit_train", "limit_test", "val_fraction", "track", "track_limit", "folds",
         "seed", "device", "workers", "mean", "std", "input_range", "schedule", "warmup_epochs", "label_smoothing"]
# settings added later: a run made before them (key absent) reads as made with the default
_DEFAULTS = {"schedule": "constant", "warmup_epochs": 0.0, "label_smoothing": 0.0}


@dataclass(frozen=True)
class TrainSpec:
    """What ``xailab train`` is asked to do (see ``xailab train --help`` for each field)."""

    model: str
    data: str
    data_root: str | None = None
    weights: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    val_fraction: float = 0.1
    track: str | None = None
    track_limit: int | None = None
    folds: int | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    quiet: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_range: tuple[float, float] | None = None

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The user's ``(mean, std)`` (``--mean/--std`` or ``--input-range``), per channel, or None."""
        from xailab.jobs.model import ModelSpec

        user = ModelSpec(self.model, mean=self.mean, std=self.std, input_range=self.input_range)
        user.check(needs_weights=False)
        return user.user_preprocessing(channels)

    @property
    def tracked(self) -> str:
        """Whose predictions are recorded every epoch (default: test; none with folds)."""
        return self.track or ("none" if self.folds else "test")

    def settings(self) -> dict[str, Any]:
        """The run's config: every setting that defines the run."""
        out = {"command": "train", **{k: getattr(self, k) for k in _KEYS}}
        out["track"] = self.tracked
        for k in ("mean", "std", "input_range"):
            if out[k] is None:  # a run made before these options reads the same
                del out[k]
            else:
                out[k] = list(out[k])
        for k, v in _DEFAULTS.items():
            if out[k] == v:  # likewise
                del out[k]
        return out

    def provenance(self, data: Any) -> dict[str, Any]:
        """What the run is made from: the model (and its starting weights' sha256), the data's
        identity (sha256 of the images, labels and classes of each split), the settings, the version."""
        from xailab.jobs.common import dataset_sha256, provenance
        from xailab.jobs.model import file_sha256

        norm = data.full
        model = {"name": self.model, "weights": str(Path(self.weights).expanduser().resolve()) if self.weights else None,
                 "weights_sha256": file_sha256(self.weights) if self.weights else None,
                 "preprocessing": {"mean": list(getattr(norm, "mean", ())), "std": list(getattr(norm, "std", ()))}}
        root = Path(self.data_root).expanduser() if self.data_root else None
        ident = {"name": self.data, "root": str(root.resolve()) if root is not None and root.exists() else self.data_root,
                 "train_sha256": dataset_sha256(data.full)}
        if data.test is not None:
            ident["test_sha256"] = dataset_sha256(data.test)
        params = {k: v for k, v in self.settings().items() if k not in ("model", "weights", "data", "data_root")}
        return provenance(model, data=ident, params=params)


def check_resume(out: Path, settings: dict[str, Any]) -> bool:
    """True if ``out`` is a new run; a RunError if it exists but is another run or not a run
    (its inputs, weights and data by their sha256, are checked by :func:`xailab.jobs.common.check_inputs`)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; give a folder for the run")
    if not out.exists():
        return True
    if not (out / "manifest.json").exists():
        if out.is_dir() and not any(out.iterdir()):
            return True
        raise RunError(f"{out} exists and is not an xailab run; choose another --out")
    old = Run.open(out).manifest.get("config") or {}
    # a schedule other than constant spreads over all epochs: their number is part of the run
    free = RESUMABLE if settings.get("schedule", "constant") == "constant" else RESUMABLE - {"epochs"}
    keys = list(settings) + [k for k in old if k in _DEFAULTS and k not in settings]
    diffs = [f"{k}: {old.get(k, _DEFAULTS.get(k))!r} -> {settings.get(k, _DEFAULTS.get(k))!r}" for k in keys
             if k not in free and old.get(k, _DEFAULTS.get(k)) != settings.get(k, _DEFAULTS.get(k))]
    if diffs:
        raise RunError(f"run {out} was made with other settings ({'; '.join(diffs)}); rerun with "
                       "the same settings to resume it, or choose another --out")
    return False


def cleanup(out: Path, new: bool) -> None:
    """Remove a run this job created if it holds no finished epoch."""
    import shutil

    if new and out.is_dir() and not any(out.rglob("epoch-*.optim.safetensors")):
        shutil.rmtree(out, ignore_errors=True)


def train_to_run(spec: TrainSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Train ``spec.model`` on ``spec.data`` into run ``out`` (resumed when it is the same spec)."""
    from xailab.jobs.common import check_inputs, job_lock
    from xailab.train import TrainConfig
    from xailab.train.recipe import prepare_data

    if spec.folds is not None and spec.folds < 2:
        raise InputError(f"--folds needs at least 2 folds, got {spec.folds}")
    cfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, optimizer=spec.optimizer,
                      momentum=spec.momentum, weight_decay=spec.weight_decay, schedule=spec.schedule,
                      warmup_epochs=spec.warmup_epochs, label_smoothing=spec.label_smoothing, seed=spec.seed, device=spec.device,
                      num_workers=spec.workers, quiet=spec.quiet)
    path = Path(out)
    new = check_resume(path, spec.settings())
    # everything that can fail on bad input happens before the run directory exists
    data = prepare_data(spec.data, spec.data_root, augment=spec.augment, limit_train=spec.limit_train,
                        limit_test=spec.limit_test, val_fraction=0.0 if spec.folds else spec.val_fraction,
                        seed=spec.seed, test=not spec.folds)
    for note in data.notes:
        log(f"note: {note}")
    model, data = _model(spec, data)
    made_from = spec.provenance(data)
    with job_lock(path, log):
        check_inputs(path, made_from)
        try:
            if spec.folds:
                return _kfold(spec, path, type(model).__name__, data, cfg, log, made_from)
            run, model, result = _fit(spec, path, model, data, cfg, log, made_from)
        except BaseException:
            cleanup(path, new)
            raise
    _report(run, model, result, data, cfg, log)
    return run


def _model(spec: TrainSpec, data: Any) -> tuple[Any, Any]:
    """The model sized for the data (seeded), and the data normalised as pretrained weights expect."""
    from xailab.train import check_model_fits
    from xailab.train.recipe import build_model, model_normalization
    from xailab.train.trainer import seed_everything

    seed_everything(spec.seed)  # the initial weights, too, follow the seed
    user = spec.normalization(data.channels)
    model = build_model(spec.model, num_classes=len(data.classes), in_channels=data.channels, weights=spec.weights)
    norm = user or (model_normalization(model, data.channels) if spec.weights else None)
    if norm is not None:  # the user's statistics, or pretrained weights': feed the inputs they expect
        data = data.normalized(*norm)
    check_model_fits(model, data.plain, len(data.classes))
    return model, data


def _model_info(spec: TrainSpec, data: Any) -> dict[str, Any]:
    return {"name": spec.model, "weights": spec.weights, "num_outputs": len(data.classes),
            "in_channels": data.channels}


def _kfold(spec: TrainSpec, out: Path, model_class: str, data: Any, cfg: Any, log: Callable[[str], None],
           made_from: dict[str, Any]) -> Run:
    from xailab.train import train_kfold
    from xailab.train.recipe import build_model
    from xailab.train.trainer import merge_section

    assert spec.folds is not None
    k = len(data.classes)
    parent = Run.create(out, kind="kfold", config=spec.settings())
    parent.update_manifest("provenance", made_from)
    parent.update_manifest("dataset", data.describe(spec.data, spec.data_root))
    info = _model_info(spec, data)
    parent.update_manifest("model", {**info, "class": model_class})
    parent.update_manifest("classes", data.classes)
    log(f"run: {out}  ({spec.folds}-fold, {len(data.full)} items, {k} classes)")

    def make_model(fold: int = 0) -> Any:
        return build_model(spec.model, num_classes=k, in_channels=data.channels, weights=spec.weights)

    res = train_kfold(make_model, data.full, k=spec.folds, config=cfg, run=parent, eval_dataset=data.plain,
                      track="val" if spec.tracked == "val" else None, fold_config=spec.settings())
    for fold in range(1, spec.folds + 1):
        merge_section(Run.open(out / "folds" / f"fold-{fold}"), "model", info)
    log(res.format())
    return parent


def _fit(spec: TrainSpec, out: Path, model: Any, data: Any, cfg: Any,
         log: Callable[[str], None], made_from: dict[str, Any]) -> tuple[Run, Any, Any]:
    from xailab.train import Trainer
    from xailab.train.recipe import stratified_indices
    from xailab.train.trainer import merge_section

    track = spec.tracked
    tracked = {"test": data.test, "val": data.val, "train": data.plain, "none": None}[track]
    if track != "none" and tracked is None:
        log(f"note: no {track} set to track; per-epoch predictions are not recorded")
    idx = stratified_indices(tracked.targets, spec.track_limit, spec.seed) if tracked is not None else None
    run = Run.create(out, kind="train", config=spec.settings())
    run.update_manifest("provenance", made_from)
    run.update_manifest("dataset", data.describe(spec.data, spec.data_root))
    merge_section(run, "model", _model_info(spec, data))
    log(f"run: {out}  ({len(data.train)} training items, {len(data.classes)} classes)")
    result = Trainer(model, data.train, data.val, config=cfg, run=run, track=tracked, track_indices=idx).fit()
    return run, model, result


def _report(run: Run, model: Any, result: Any, data: Any, cfg: Any, log: Callable[[str], None]) -> None:
    """Print the epochs, the best one, and the best checkpoint's test evaluation (stored in the run)."""
    from xailab.train import evaluate, load_weights, save_evaluation
    from xailab.train.recipe import checkpoint_file

    h = result.history
    lines = [f"\n{'epoch':>5s} {'train_loss':>10s} {'train_acc':>9s} {'val_loss':>9s} {'val_acc':>8s} {'seconds':>8s}"]
    for r in h.itertuples():
        lines.append(f"{r.epoch:5d} {r.train_loss:10.4f} {r.train_acc:9.4f} {r.val_loss:9.4f} {r.val_acc:8.4f} "
                     f"{r.seconds:8.1f}")
    log("\n".join(lines))
    if result.best_val_acc is not None:
        log(f"best epoch {result.best_epoch} (validation accuracy {result.best_val_acc:.4f})")
    if data.test is not None:
        load_weights(checkpoint_file(run, "best"), model)
        ev = evaluate(model, data.test, batch_size=cfg.eval_batch_size, classes=data.classes)
        save_evaluation(run, ev, "test")
        log(f"test (best checkpoint, epoch {result.best_epoch}): accuracy {ev.accuracy:.4f}  "
            f"loss {ev.loss:.4f}  macro F1 {ev.f1_macro:.4f}  ({ev.n} items)")

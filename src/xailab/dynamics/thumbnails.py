"""Thumbnails of tracked instances, so the instance-flow page can show and link each image.

Writes ``RUN/files/instances/<id>.png`` (atomically; existing files are kept unless
``overwrite``). The page finds them by name; explanation figures of an instance go beside them
as ``RUN/files/instances/<id>/<method>.png`` (see :func:`explanation_path`).

Items are taken, in this order, from ``dataset.raw_image(i)`` (a PIL image, e.g. xailab's
``ImageDataset``), else ``dataset[i][0]`` undone with ``dataset.denormalize`` when it has one,
else ``dataset[i][0]`` as it is: a PIL image, a ``[C, H, W]`` tensor / array or ``[H, W, C]``
array; float images outside ``[0, 1]`` are min-max scaled per image.

    render_thumbnails(run, test_set, instances=[3, 17, 42], size=64)
    render_thumbnails(run, tracked_dataset(run), range(100))   # a run made by `xailab train`
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xailab.core.errors import InputError
from xailab.dynamics.history import FlowError
from xailab.dynamics.page import INSTANCE_DIR
from xailab.runs.store import Run, atomic_write_bytes


def thumbnail_path(run: Run, instance: int) -> Path:
    """``RUN/files/instances/<id>.png``."""
    return run.file(f"{INSTANCE_DIR}/{int(instance)}.png")


def explanation_path(run: Run, instance: int, name: str, suffix: str = ".png") -> Path:
    """``RUN/files/instances/<id>/<name><suffix>``: where an instance's explanation figure goes."""
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"bad explanation figure name {name!r}")
    return run.file(f"{INSTANCE_DIR}/{int(instance)}/{name}{suffix}")


def to_pil(item: Any) -> Image.Image:
    """A PIL image from a PIL image, a ``[C,H,W]`` / ``[H,W,C]`` / ``[H,W]`` tensor or array."""
    if isinstance(item, Image.Image):
        return item.convert("RGB") if item.mode not in ("RGB", "L") else item
    if hasattr(item, "detach"):
        item = item.detach().cpu().numpy()
    a = np.asarray(item)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise InputError(f"cannot make an image of an array of shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo < 0 or hi > 1:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        a = np.clip(np.nan_to_num(a) * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _image(dataset: Any, i: int) -> Image.Image:
    raw = getattr(dataset, "raw_image", None)
    if callable(raw):
        return to_pil(raw(i))
    item = dataset[i]
    x = item[0] if isinstance(item, tuple | list) else item
    den = getattr(dataset, "denormalize", None)
    if callable(den) and hasattr(x, "detach"):
        x = den(x)
    return to_pil(x)


def render_thumbnails(run: Run, dataset: Any, instances: Iterable[int], *, size: int = 64,
                      overwrite: bool = False) -> list[Path]:
    """Write a PNG thumbnail (longest side ``size``, nearest-neighbour up-scaling for tiny
    images, so CIFAR pixels stay sharp) of each ``dataset[instance]``; returns the paths."""
    out = []
    n = len(dataset)
    for inst in instances:
        i = int(inst)
        if not 0 <= i < n:
            raise InputError(f"instance {i} is not in the dataset (it has {n} items)")
        path = thumbnail_path(run, i)
        out.append(path)
        if path.exists() and not overwrite:
            continue
        img = _image(dataset, i)
        scale = size / max(img.size)
        new = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(new, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
    return out


def tracked_dataset(run: Run) -> Any:
    """The dataset a run made by ``xailab train`` tracked (its ``instance`` ids index it).

    Rebuilt from the settings in the run's manifest (``config``: data, data_root, track, limits,
    seed) with the trainer's own data recipe; for other runs pass the dataset yourself.
    """
    cfg = run.manifest.get("config") or {}
    track = cfg.get("track")
    made_by = cfg.get("command")  # an audit poison run tracks its clean test set as train does
    if made_by not in ("train", "audit poison") or track not in ("test", "val", "train") or not cfg.get("data"):
        raise FlowError(f"run {run.path} was not made by `xailab train` with a tracked set, so its "
                        "images cannot be found; call render_thumbnails(run, dataset, ids) with "
                        "the dataset that was tracked")
    from xailab.train.recipe import prepare_data, stratified_sample

    if track == "test":  # the test split alone: no need to decode the training images
        from xailab.data import load_dataset

        ds = load_dataset(cfg["data"], "test", cfg.get("data_root"))
        return stratified_sample(ds, cfg.get("limit_test"), int(cfg.get("seed") or 0))
    data = prepare_data(cfg["data"], cfg.get("data_root"), augment=False,
                        limit_train=cfg.get("limit_train"), limit_test=cfg.get("limit_test"),
                        val_fraction=float(cfg.get("val_fraction") or 0.0),
                        seed=int(cfg.get("seed") or 0), test=False)
    tracked: Any = data.val if track == "val" else data.plain
    if tracked is None:
        raise FlowError(f"run {run.path} tracked its '{track}' set, which its settings no longer give")
    return tracked

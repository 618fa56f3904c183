"""The explain job: a model and an image set, named as the CLI names them, explained into a run.

    from xailab.jobs import ExplainSpec, ModelSpec, explain_to_run
    spec = ExplainSpec(ModelSpec("resnet20", weights="resnet20.safetensors"), images="cifar10:test:16",
                       data_root="cifar10-jpg.tar.gz", methods=("saliency", "gradcam"), targets=("true", "top1"))
    run = explain_to_run(spec, "runs/explain")

The same as ``xailab explain``: the model is loaded and checked (:mod:`xailab.jobs.model`), the
images loaded with the model's preprocessing, the class names of model and data compared, and
:func:`xailab.jobs.explain_images.explain_images` does the rest. The run records its provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from xailab.core.errors import InputError
from xailab.jobs.classes import (
    check_classes,
    imagenet_class_names,
    read_class_names,
    trained_class_names,
)
from xailab.jobs.common import (
    check_out,
    job_lock,
    provenance,
    remove_if_new,
    tensor_sha256,
    write_provenance,
)
from xailab.jobs.explain_images import Backend, explain_images, method_names
from xailab.jobs.mistakes import add_mistakes
from xailab.jobs.model import LoadedModel, ModelSpec, load, num_outputs, settle_preprocessing
from xailab.runs.store import Run


@dataclass(frozen=True)
class ExplainSpec:
    """What ``xailab explain`` is asked to do.

    Args:
        model: the model (:class:`ModelSpec`).
        images: image files, a folder, or ``dataset:split[:N]``.
        methods: method names, or ``NAME=METHOD`` entries.
        targets: ``true``, ``top1``, ..., ``least``, ``all`` or class indices.
        class_names: a file of class names (JSON list or one a line) naming the model's outputs;
            it also maps the model to data whose classes differ.
        method_params: ``{method: {param: value}}``; a ``background`` given as an image spec is
            loaded like the images.
        skip_bad_images: leave out image files that cannot be decoded (listed in the run's
            ``config.image_notes``, as is every other change made to the images while loading).
        mistakes: also explain the first this many images of the same split that the model
            misclassifies (:mod:`xailab.jobs.mistakes`; a dataset spec only).
    """

    model: ModelSpec
    images: str
    methods: tuple[str, ...]
    targets: tuple[str | int, ...] = ("top1",)
    data_root: str | None = None
    class_names: str | None = None
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    layer: str | None = None
    batch_size: int = 64
    seed: int = 0
    quick: bool = False
    png: bool | str = "grid"
    backend: Backend | None = None
    skip_bad_images: bool = False
    mistakes: int = 0

    def check(self) -> None:
        """What can be checked before anything loads."""
        method_names(self.methods)
        if not self.methods:
            raise InputError("no methods given: --methods needs at least one name (see `xailab methods`)")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.model.check()


def explain_to_run(spec: ExplainSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Run the explain job of ``spec`` into run ``out`` (created, or resumed when it matches)."""
    from xailab.data import load_images

    spec.check()
    new = check_out(out, ("explain",))
    loaded = load(spec.model, log=log)
    notes: list[str] = []
    images, labels, names, dataset = load_images(spec.images, loaded.preprocessing, root=spec.data_root,
                                                 notes=notes, skip_bad=spec.skip_bad_images)
    images, labels, names = add_mistakes(loaded, spec.images, spec.mistakes, images, labels, names,
                                         data_root=spec.data_root, batch_size=spec.batch_size, log=log)
    norm = settle_preprocessing(loaded, dataset, log)  # a dataset normalises its images itself
    display = norm.denormalize(images) if norm is not None else images
    x = images.to(loaded.device)
    class_names = _class_names(spec, loaded, x, dataset)
    params = _params(spec, loaded)
    targets = list(spec.targets)
    log(f"explaining {len(images)} images with {', '.join(method_names(spec.methods))} "
        f"for targets {', '.join(map(str, targets))}")
    config = {**spec.model.record(), "images": spec.images, "mistakes": spec.mistakes,
              "data_root": _abs(spec.data_root),
              "device": str(loaded.device), "preprocessing": norm.to_dict() if norm is not None else None,
              "image_notes": notes}
    with job_lock(out, log):
        try:
            run = explain_images(
                loaded.model, x, out=out, methods=spec.methods, targets=targets if len(targets) > 1 else targets[0],
                labels=labels, names=names, class_names=class_names, display=display, method_params=params,
                layer=spec.layer, mean=norm.mean if norm is not None else None,
                std=norm.std if norm is not None else None, batch_size=spec.batch_size, seed=spec.seed,
                quick=spec.quick, png=spec.png, config=config, log=log, backend=spec.backend)
        except BaseException:
            if new and not (Path(out) / "explanations").is_dir():
                remove_if_new(out, new)
            raise
        write_provenance(run, provenance(
            loaded.provenance(),
            data={"images": spec.images, "mistakes": spec.mistakes, "data_root": _abs(spec.data_root), "n": len(images),
                  "sha256": tensor_sha256(images), "class_names": class_names},
            params={k: dict(v) for k, v in spec.method_params.items()}, targets=[str(t) for t in targets]))
    return run


def _abs(path: str | None) -> str | None:
    """A path as an absolute path when it names something on disk (so the run reads from anywhere)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


def _class_names(spec: ExplainSpec, loaded: LoadedModel, x: Tensor, dataset: Any) -> list[str] | None:
    """The names of the model's outputs; a model whose classes differ from the data's is refused
    unless ``class_names`` maps it (:func:`xailab.jobs.classes.check_classes`)."""
    k = num_outputs(loaded.model, x)
    data_names = list(dataset.classes) if dataset is not None else None
    if data_names is None and not spec.class_names and spec.model.pretrained and k == 1000:
        return imagenet_class_names()
    return check_classes(k, data_names, spec.model.weights, class_names=spec.class_names)


def _params(spec: ExplainSpec, loaded: LoadedModel) -> dict[str, dict[str, Any]]:
    """The method parameters, with a ``background`` image spec loaded like the images."""
    from xailab.data import load_images

    out: dict[str, dict[str, Any]] = {}
    for method, kw in spec.method_params.items():
        out[method] = dict(kw)
        bg = kw.get("background")
        if isinstance(bg, str) and (":" in bg or Path(bg).exists()):
            out[method]["background"] = load_images(bg, loaded.preprocessing, root=spec.data_root)[0].to(loaded.device)
    return out


def method_list(text: str) -> tuple[str, ...]:
    """``"a,b=c"`` -> ``("a", "b=c")`` (blanks dropped)."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


__all__ = ["ExplainSpec", "explain_to_run", "imagenet_class_names", "method_list", "read_class_names",
           "trained_class_names"]

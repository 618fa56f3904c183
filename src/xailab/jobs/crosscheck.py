"""Check the maps a run holds against a reference library's implementation of the same method.

``xailab crosscheck RUN`` reloads what ``xailab explain`` saved (the model from the run's config,
the images, the targets and the Integrated Gradients parameters: steps, rule, baseline,
normalisation, seed), rebuilds each image's baseline exactly as ours did (random baselines from
the same per-image generators, the adversarial 50/50 baseline by the same optimisation), runs
Captum's ``IntegratedGradients.attribute`` with the same baselines, targets, steps and rule,
and writes table ``crosscheck`` into the run: one row per image, target and baseline with

* ``max_abs_diff = max_i |ours_i - captum_i|`` and ``max_abs`` (``max_i |captum_i|``, the scale);
* ``rel_error = ||ours - captum||_2 / ||captum||_2``;
* ``pearson`` and ``spearman`` of the two maps' values (all channels and pixels);
* ``delta_ours`` and ``delta_captum``: each one's completeness error
  ``sum_i IG_i - (S(x) - S(b))`` (Sundararajan et al. 2017, arXiv:1703.01365).

The computation runs in the dtype of the stored maps (float32 for a normal run). Both
implementations share the rule's nodes and weights except ``riemann_trapezoid``, whose weights
sum to 1 here and to ``1 - 1/n`` in Captum (see docs/methods/gradient.md): expect a difference
there, noted in column ``note``.

    model = load_model("resnet20", "resnet20.safetensors")
    table = crosscheck_run("runs/ig-black", model)
    table.groupby("baseline")["max_abs_diff"].max()
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError, XailabError
from xailab.core.explanation import Explanation
from xailab.core.hooks import model_device
from xailab.metrics.scoreboard import image_names
from xailab.runs.store import Run, RunError

METHODS = ("integrated_gradients",)
REFERENCES = ("captum",)
TABLE = "crosscheck"
# our rule name -> Captum's ``method`` argument
_CAPTUM_RULES = {
    "gausslegendre": "gausslegendre", "riemann_left": "riemann_left", "riemann_right": "riemann_right",
    "riemann_middle": "riemann_middle", "riemann_trapezoid": "riemann_trapezoid",
}
_IG_KEYS = ("n_steps", "rule", "baseline", "mean", "std", "pixel_range", "output", "seed", "batch_size")


class ReferenceMissing(XailabError):
    """The reference library is not installed."""


def _captum_ig() -> Any:
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ReferenceMissing("crosscheck --against captum needs Captum: pip install captum") from None
    return IntegratedGradients


def load_method(run: Run, method: str) -> Explanation:
    """The saved explanation of ``method`` in ``run``, or a RunError that says how to make it."""
    path = run.path / "explanations" / method
    if not (path / "manifest.json").is_file():
        root = run.path / "explanations"
        have = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
        raise RunError(
            f"run {run.path} has no {method} explanation (it has: {', '.join(have) or 'none'}); "
            f"create one with `xailab explain ... --methods {method} --out {run.path}`"
        )
    return Explanation.load(path)


def _explainer(model: nn.Module, params: dict[str, Any]) -> Any:
    from xailab.core.registry import METHODS as REGISTRY

    kw = {k: params[k] for k in _IG_KEYS if k in params and params[k] is not None}
    baseline = str(kw.get("baseline", "black"))
    if baseline.startswith("tensor") or baseline == "adversarial:tensor":
        raise InputError(
            f"the run's baseline was a tensor ({baseline}), which the run does not store; "
            "crosscheck can rebuild named baselines only (black, white, zeros, uniform, gaussian, blur, adversarial)"
        )
    return REGISTRY.create("integrated_gradients", model, **kw)


def rebuild_baselines(explainer: Any, x: Tensor, chunk: int = 64) -> Tensor:
    """Each image's baseline as ``explainer`` built it: random kinds from the same per-image
    generators (``explainer.image_generator(i)`` depends on the image's index only), the adversarial
    one by the same optimisation (images are independent of each other)."""
    from xailab.core.hooks import model_session
    from xailab.methods.gradient.baselines import make_baselines

    out = []
    with model_session(explainer.model, eval_mode=explainer.eval_mode):
        for lo in range(0, len(x), max(1, chunk)):
            base, _ = make_baselines(explainer.baseline, x[lo : lo + chunk], explainer.space, explainer, first=lo)
            out.append(base.detach())
    return torch.cat(out)


def _rank(v: Tensor) -> Tensor:
    from xailab.metrics.maps import rankdata

    return rankdata(v)


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def crosscheck_run(
    path: str | os.PathLike[str] | Run,
    model: nn.Module,
    *,
    method: str = "integrated_gradients",
    against: str = "captum",
    batch_size: int | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Recompute ``method``'s maps of ``path`` with the reference library; write and return the
    table described in the module docstring (one row per image and target).

    Args:
        model: the model the run explained (in the run's config; the CLI loads it).
        batch_size: most samples per forward pass of the reference (default: the run's).
    """
    if against not in REFERENCES:
        raise InputError(f"crosscheck compares with {', '.join(REFERENCES)}, not {against!r}")
    run = path if isinstance(path, Run) else Run.open(path)
    res = _checked_method(run, method)
    params = dict(res.params)
    IntegratedGradients = _captum_ig()
    images = torch.from_numpy(np.array(run.read_array("images")))
    if len(images) != len(res):
        raise RunError(f"run {run.path} has {len(images)} images but {len(res)} {method} maps; re-run `xailab explain`")
    dtype = res.maps.dtype if res.maps.is_floating_point() else torch.float32
    work = model
    if any(p.dtype != dtype for p in model.parameters()):
        work = copy.deepcopy(model).to(dtype)
    device = model_device(work)
    x = images.to(device=device, dtype=dtype)
    ours = _explainer(work, params)
    bsize = int(batch_size or params.get("batch_size") or 64)
    log(f"{method}: rebuilding {ours.baseline.describe()} baselines for {len(x)} images")
    # the run's own chunks: the adversarial optimisation then sees the same batches
    base = rebuild_baselines(ours, x, chunk=ours.images_per_chunk(res.targets.shape[1]))
    ig = IntegratedGradients(_forward(work, str(params.get("output", "logit"))))
    names = image_names(run, len(x))
    rows: list[dict[str, Any]] = []
    was_training = work.training
    work.eval()
    try:
        for j, tname in enumerate(res.target_names):
            theirs, deltas = _captum_maps(ig, x, base, res.targets[:, j].to(device), ours, bsize)
            if res.maps[:, j].shape != theirs.shape:  # ours summed over channels: compare per pixel
                theirs = theirs.sum(dim=1)
            common = {"target": tname, "baseline": ours.baseline.describe(), "rule": ours.rule,
                      "n_steps": ours.n_steps, "dtype": str(dtype).removeprefix("torch."), "against": against}
            rows += _rows(res, j, theirs, deltas, names, common)
    finally:
        work.train(was_training)
    table = pd.DataFrame(rows)
    part = f"{method}-{against}"
    run.write_table(TABLE, table, part=part)
    done = dict(run.manifest.get(TABLE, {}))
    done[part] = summary(table).to_dict(orient="records")
    run.update_manifest(TABLE, done)
    return table


def _checked_method(run: Run, method: str) -> Explanation:
    """The run's maps of ``method``, refused unless they are IG maps with a rule Captum has."""
    kinds = (run.manifest.get("explain") or {}).get("kinds") or {}
    if str(kinds.get(method, method)) not in METHODS:  # a run may name a method NAME=METHOD
        raise InputError(f"crosscheck supports {', '.join(METHODS)}, not {method!r}")
    res = load_method(run, method)
    rule = res.params.get("rule", "gausslegendre")
    if str(rule) not in _CAPTUM_RULES:
        raise InputError(
            f"the run's IG rule {rule!r} has no Captum counterpart; crosscheck compares the "
            f"fixed rules ({', '.join(_CAPTUM_RULES)}): check the completeness delta of this run instead"
        )
    return res


def _captum_maps(ig: Any, x: Tensor, base: Tensor, t: Tensor, ours: Any, bsize: int) -> tuple[Tensor, Tensor]:
    """Captum's IG maps and completeness deltas of all images for one target column."""
    theirs_parts, delta_parts = [], []
    step = max(1, bsize // ours.n_steps)
    for lo in range(0, len(x), step):
        a, d = ig.attribute(x[lo:lo + step], baselines=base[lo:lo + step], target=t[lo:lo + step],
                            n_steps=ours.n_steps, method=_CAPTUM_RULES[ours.rule], internal_batch_size=bsize,
                            return_convergence_delta=True)
        theirs_parts.append(a.detach().cpu())
        delta_parts.append(d.detach().cpu())
    return torch.cat(theirs_parts), torch.cat(delta_parts)


def _rows(res: Explanation, j: int, theirs: Tensor, deltas: Tensor, names: list[str],
          common: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per image for target column ``j``: differences, correlations, deltas."""
    delta_ours = res.extras.get("delta")
    rows = []
    for i in range(len(theirs)):
        a_i = res.maps[i, j].reshape(-1).double()
        b_i = theirs[i].reshape(-1).double()
        diff = a_i - b_i
        rows.append({
            "image": i, "name": names[i], "target": common["target"], "class": int(res.targets[i, j]),
            **{k: v for k, v in common.items() if k != "target"},
            "max_abs_diff": float(diff.abs().max()), "max_abs": float(b_i.abs().max()),
            "rel_error": float(diff.norm() / b_i.norm()) if float(b_i.norm()) > 0 else float("nan"),
            "pearson": _corr(a_i, b_i), "spearman": _corr(_rank(a_i[None])[0], _rank(b_i[None])[0]),
            "delta_ours": float(delta_ours[i, j]) if delta_ours is not None else float("nan"),
            "delta_captum": float(deltas[i]),
            "note": "Captum's trapezoid weights sum to 1 - 1/n" if common["rule"] == "riemann_trapezoid" else "",
        })
    return rows


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per baseline: the worst difference and correlation, the mean completeness errors."""
    g = table.groupby("baseline", sort=False)
    return pd.DataFrame({
        "images": g["image"].nunique(),
        "max_abs_diff": g["max_abs_diff"].max(),
        "max_abs": g["max_abs"].max(),
        "rel_error_max": g["rel_error"].max(),
        "pearson_min": g["pearson"].min(),
        "spearman_min": g["spearman"].min(),
        "delta_ours_mean_abs": g["delta_ours"].apply(lambda v: float(np.nanmean(np.abs(v)))),
        "delta_captum_mean_abs": g["delta_captum"].apply(lambda v: float(np.nanmean(np.abs(v)))),
    }).reset_index()


def _forward(model: nn.Module, output: str) -> Callable[[Tensor], Tensor]:
    if output == "probability":
        return lambda x: torch.softmax(model(x), dim=1)
    if output == "log_probability":
        return lambda x: torch.log_softmax(model(x), dim=1)
    return model



@dataclass(frozen=True)
class CrosscheckSpec:
    """What ``xailab crosscheck RUN`` is asked to do.

    Args:
        model: overrides of the run's recorded model (see :class:`xailab.jobs.compare.CompareSpec`).
        method: the run's name of the method to check.
        against: the reference library.
        batch_size: most samples per forward pass (default: the run's).
    """

    model: dict[str, Any] = field(default_factory=dict)
    method: str = "integrated_gradients"
    against: str = "captum"
    batch_size: int | None = None


def crosscheck_to_run(spec: CrosscheckSpec, out: str | os.PathLike[str], *,
                      log: Callable[[str], None] = print) -> Run:
    """Check run ``out``'s maps of ``spec.method`` against the reference, with the model it records."""
    from xailab.jobs.common import check_made_by, job_lock, provenance
    from xailab.jobs.model import load, spec_from_config

    run = Run.open(out)
    mspec = spec_from_config(run.manifest.get("config", {}), **{"device": "cpu", **spec.model})
    if not mspec.name:
        raise RunError(f"run {run.path} does not record its model; pass --model (and --weights)")
    loaded = load(mspec, log=log)
    sha = check_made_by(run, loaded.model, "crosscheck")
    with job_lock(run.path, log):
        run.update_manifest("crosscheck_provenance", provenance(
            {**loaded.provenance(), "sha256": sha},
            params={"method": spec.method, "against": spec.against, "batch_size": spec.batch_size}))
        crosscheck_run(run, loaded.model, method=spec.method, against=spec.against, batch_size=spec.batch_size,
                       log=log)
    return run

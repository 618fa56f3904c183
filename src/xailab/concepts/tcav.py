"""TCAV: testing with concept activation vectors (Kim et al., ICML 2018, arXiv:1711.11279).

A user concept is a set of example images (a folder of striped textures, say). At a layer ``l``:

* the **CAV** ``v_C`` is the unit normal of a linear classifier separating the layer's
  (flattened) activations of the concept images from those of random images, oriented toward
  the concept;
* the **directional derivative** of class ``k`` at image ``x`` is
  ``S_{C,k}(x) = ∇_{A} y_k(f_l(x)) · v_C``: how the class logit changes when the activations
  move toward the concept;
* the **TCAV score** is ``TCAV_{C,k} = |{x in X_k : S_{C,k}(x) > 0}| / |X_k|``.

A CAV trained against one random set can be meaningless, so the concept is tested against
``R`` random sets (``R`` scores) and compared, by a two-sided t-test, with ``R`` scores of
random-vs-random CAVs (random set 0 against random set ``r``). A score is significant when
``p < alpha / m`` (Bonferroni over the ``m`` concept-class pairs of the call).

    res = run_tcav(model, "layer3.0", {"stripes": stripes}, random_sets, {3: cats})
    res.table[["concept", "class", "score_mean", "p_value", "significant"]]
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.concepts.activations import (
    ImageSource,
    batch_indices,
    collect_activations,
    layer_pass,
    model_device,
    num_images,
    take,
)
from xailab.core.errors import DataError, InputError, TargetError
from xailab.core.hooks import model_session, resolve_layer
from xailab.runs.store import Run


@dataclass(frozen=True)
class CAV:
    """A concept activation vector: ``vector [D]`` (unit norm, toward the concept) and the
    held-out ``accuracy`` of the classifier that produced it."""

    concept: str
    negative: str
    layer: str
    vector: Tensor
    accuracy: float


def train_cav(
    concept_acts: Tensor,
    negative_acts: Tensor,
    *,
    seed: int = 0,
    classifier: str = "logistic",
    test_fraction: float = 0.3,
    concept: str = "concept",
    negative: str = "random",
    layer: str = "",
) -> CAV:
    """Fit a linear classifier concept (1) vs negative (0) on flattened activations ``[n, D]``.

    ``classifier``: ``"logistic"`` (sklearn ``LogisticRegression``) or ``"sgd"``
    (``SGDClassifier(alpha=0.01)``, as the TCAV reference code). The accuracy is measured on a
    stratified held-out ``test_fraction`` of both sets; the CAV is then refit on all examples.
    """
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.model_selection import train_test_split

    a = concept_acts.reshape(len(concept_acts), -1).double().cpu().numpy()
    b = negative_acts.reshape(len(negative_acts), -1).double().cpu().numpy()
    if len(a) < 2 or len(b) < 2:
        raise InputError(f"a CAV needs at least 2 images on each side, got {len(a)} concept and {len(b)} random")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"concept activations have {a.shape[1]} features, random ones {b.shape[1]}")
    X = np.concatenate([a, b])
    y = np.concatenate([np.ones(len(a), dtype=int), np.zeros(len(b), dtype=int)])

    def make() -> Any:
        if classifier == "logistic":
            return LogisticRegression(C=1.0, max_iter=2000)
        if classifier == "sgd":
            return SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
        raise InputError(f"classifier must be 'logistic' or 'sgd', not {classifier!r}")

    n_test = max(2, round(test_fraction * len(X)))
    if 0 < test_fraction < 1 and len(X) - n_test >= 2:
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=n_test, stratify=y, random_state=seed)
        accuracy = float(make().fit(Xtr, ytr).score(Xte, yte))
    else:
        accuracy = float("nan")
    clf = make().fit(X, y)
    w = torch.from_numpy(np.asarray(clf.coef_, dtype=np.float64).reshape(-1))
    norm = float(w.norm())
    vec = (w / norm if norm > 0 else w).float()
    return CAV(concept, negative, layer, vec, accuracy)


def class_gradients(
    model: nn.Module,
    layer: str | nn.Module | None,
    images: ImageSource,
    target: int,
    *,
    batch_size: int = 64,
) -> Tensor:
    """``∂y_target / ∂A`` at the layer for every image, flattened: ``[N, D]`` (CPU, float32).

    The gradient flows only through the part of the network after the layer (the graph is cut
    there), one backward pass a batch.
    """
    _, module = resolve_layer(model, layer)
    device = model_device(model)
    n = num_images(images)
    out = []
    with model_session(model):
        for idx in batch_indices(n, batch_size):
            x = take(images, idx)[0].to(device)
            tap, logits = layer_pass(model, module, x, grad=True)
            assert tap.leaf is not None and logits is not None
            if not 0 <= target < logits.shape[1]:
                raise TargetError(f"class {target} is out of range: the model has {logits.shape[1]} classes")
            (g,) = torch.autograd.grad(logits[:, target].sum(), tap.leaf)
            out.append(g.reshape(len(idx), -1).float().cpu())
    if not out:
        raise InputError("no images of the class to test")
    return torch.cat(out)


def tcav_score(gradients: Tensor, cav: CAV | Tensor) -> float:
    """Share of rows of ``gradients [N, D]`` whose derivative along the CAV is positive."""
    v = cav.vector if isinstance(cav, CAV) else cav
    return float((gradients @ v.to(gradients.dtype) > 0).float().mean())


def random_subsets(n_pool: int, n_sets: int, size: int, seed: int = 0) -> list[Tensor]:
    """``n_sets`` index sets of ``size`` drawn from ``range(n_pool)``: disjoint when the pool is
    large enough, otherwise each set is an independent draw without replacement."""
    if size < 2 or n_sets < 1:
        raise InputError(f"random sets need at least 2 images each, got size {size}")
    if n_pool < size:
        raise InputError(f"the random pool holds {n_pool} images, fewer than a set of {size}")
    g = torch.Generator().manual_seed(seed)
    if n_pool >= n_sets * size:
        perm = torch.randperm(n_pool, generator=g)
        return [perm[i * size : (i + 1) * size] for i in range(n_sets)]
    return [torch.randperm(n_pool, generator=g)[:size] for _ in range(n_sets)]


@dataclass
class TCAVResult:
    """``table``: a row per (concept, class) with ``score_mean``, ``score_std``,
    ``random_mean``, ``random_std``, ``p_value``, ``significant``, ``cav_accuracy``...;
    ``scores[(concept, class)]`` and ``random_scores[class]``: the per-run scores; ``cavs``."""

    table: pd.DataFrame
    scores: dict[tuple[str, int], np.ndarray]
    random_scores: dict[int, np.ndarray]
    cavs: dict[str, list[CAV]] = field(default_factory=dict)
    seconds: float = 0.0


def run_tcav(
    model: nn.Module,
    layer: str | nn.Module | None,
    concepts: Mapping[str, ImageSource],
    random_sets: Sequence[ImageSource],
    class_images: Mapping[int, ImageSource],
    *,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    classifier: str = "logistic",
    alpha: float = 0.05,
) -> TCAVResult:
    """TCAV scores of every concept for every class, with the significance test.

    Args:
        concepts: name -> the concept's example images.
        random_sets: ``R + 1`` sets of random images (``R >= 2``; the paper uses tens).
            Set 0 plays the concept in the random-vs-random CAVs; sets 1..R are the negatives
            of every concept's ``R`` CAVs.
        class_images: class index -> images of that class, whose directional derivatives
            are counted.
        alpha: significance level before the Bonferroni correction over concept-class pairs.
    """
    start = time.perf_counter()
    _check_sets(concepts, random_sets, class_images)
    name, module = resolve_layer(model, layer)

    def acts(src: ImageSource, what: str) -> Tensor:
        if num_images(src) == 0:
            raise DataError(f"{what} holds no images")
        return collect_activations(model, module, src, batch_size, reduce=lambda a: a.flatten(1))

    rand = [acts(r, f"random set {i}") for i, r in enumerate(random_sets)]
    cavs: dict[str, list[CAV]] = {}
    for cname, src in concepts.items():
        ca = acts(src, f"concept '{cname}'")
        cavs[cname] = [train_cav(ca, rand[r], seed=seed + r, classifier=classifier, concept=cname,
                                 negative=f"random{r}", layer=name) for r in range(1, len(rand))]
    null = [train_cav(rand[r - 1], rand[r], seed=seed + r, classifier=classifier, concept=f"random{r - 1}",
                      negative=f"random{r}", layer=name) for r in range(1, len(rand))]
    m = len(concepts) * len(class_images)
    rows, scores, rscores = [], {}, {}
    for cls, src in class_images.items():
        grads = class_gradients(model, module, src, int(cls), batch_size=batch_size)
        rs = np.array([tcav_score(grads, c) for c in null])
        rscores[int(cls)] = rs
        for cname, cl in cavs.items():
            s = np.array([tcav_score(grads, c) for c in cl])
            scores[(cname, int(cls))] = s
            label = str(class_names[cls]) if class_names is not None and int(cls) < len(class_names) else str(cls)
            rows.append(_row(cname, int(cls), label, name, len(grads), s, rs, cl, null, alpha, m))
    cavs["random0"] = null
    return TCAVResult(pd.DataFrame(rows), scores, rscores, cavs, time.perf_counter() - start)


def _check_sets(concepts: Mapping[str, ImageSource], random_sets: Sequence[ImageSource],
                class_images: Mapping[int, ImageSource]) -> None:
    if not concepts:
        raise InputError("no concepts to test")
    if len(random_sets) < 3:
        raise InputError(
            f"the significance test needs at least 3 random sets (2 runs), got {len(random_sets)}; "
            "use 10 or more runs"
        )
    if not class_images:
        raise InputError("no classes to test (give images of at least one class)")


def _row(concept: str, cls: int, class_name: str, layer: str, n_images: int, s: np.ndarray, rs: np.ndarray,
         cavs: list[CAV], null: list[CAV], alpha: float, m: int) -> dict[str, Any]:
    """The summary row of one concept and class: scores against the random runs' (``m`` tests)."""
    p = _two_sided_p(s, rs)
    return {
        "concept": concept, "class": cls, "class_name": class_name,
        "layer": layer, "n_images": n_images, "n_runs": len(s),
        "score_mean": float(s.mean()), "score_std": float(s.std()),
        "random_mean": float(rs.mean()), "random_std": float(rs.std()),
        "p_value": p, "alpha": alpha, "n_tests": m, "significant": bool(p < alpha / m),
        "cav_accuracy": float(np.nanmean([c.accuracy for c in cavs])),
        "random_cav_accuracy": float(np.nanmean([c.accuracy for c in null])),
    }


def tcav_to_run(result: TCAVResult, out: str | Path | Run, *, config: dict[str, Any] | None = None,
                png: bool = True) -> Run:
    """Store a :class:`TCAVResult` in run ``out``: tables ``tcav`` (summary) and ``tcav_runs``
    (every run's score), array ``tcav_cavs [concepts + 1, R, D]`` (the last row: the
    random-vs-random CAVs), manifest section ``tcav`` and ``RUN/files/tcav/scores.png``."""
    run = out if isinstance(out, Run) else Run.create(out, kind="concepts", config=config or {})
    run.write_table("tcav", result.table)
    long = [{"concept": c, "class": k, "run": r, "score": float(v), "kind": "concept"}
            for (c, k), s in result.scores.items() for r, v in enumerate(s)]
    long += [{"concept": "random", "class": k, "run": r, "score": float(v), "kind": "random"}
             for k, s in result.random_scores.items() for r, v in enumerate(s)]
    run.write_table("tcav_runs", pd.DataFrame(long))
    names = list(result.cavs)
    run.write_array("tcav_cavs", torch.stack([torch.stack([c.vector for c in result.cavs[n]]) for n in names]))
    layer = result.table["layer"].iloc[0] if len(result.table) else ""
    run.update_manifest("tcav", {"layer": layer, "cav_rows": names, "seconds": result.seconds,
                                 "n_runs": int(result.table["n_runs"].iloc[0]) if len(result.table) else 0})
    if png and len(result.table):
        from xailab.concepts.concept_figures import tcav_figure
        from xailab.plotting import save_png

        save_png(tcav_figure(result.table), run.file("tcav/scores.png"))
    return run


def _two_sided_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided t-test (scipy ``ttest_ind``); identical constant samples give p = 1."""
    from scipy.stats import ttest_ind

    if np.all(a == a[0]) and np.all(b == b[0]):
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():  # one constant sample warns about precision; p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b).pvalue)
    return 1.0 if np.isnan(p) else p


def load_concept_images(path: str | Path, preprocessing: Any = None) -> tuple[Tensor, list[str]]:
    """The images of a concept folder (or tarball), prepared with ``preprocessing``.

    Raises :class:`DataError` naming the folder when it is missing or holds no images.
    """
    from xailab.data import load_images

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"concept folder not found: {p}")
    try:
        x, _, names, _ = load_images(str(p), preprocessing)
    except DataError as e:
        raise DataError(
            f"concept folder {p} holds no usable images ({e}); put example images of the concept "
            "(PNG or JPEG, 20 or more) in it"
        ) from None
    if len(x) == 0:
        raise DataError(f"concept folder {p} holds no images; put example images of the concept in it")
    return x, names


__all__ = [
    "CAV",
    "TCAVResult",
    "class_gradients",
    "load_concept_images",
    "random_subsets",
    "run_tcav",
    "tcav_score",
    "tcav_to_run",
    "train_cav",
]

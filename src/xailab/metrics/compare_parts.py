"""The parts of ``compare`` kept in a run and recomputed only when their inputs change, and the
sanity part (the cascading randomisation test of each method, on a cheap schedule for sampling
methods, with a progress bar).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from xailab.core.explanation import Explanation
from xailab.metrics.sanity import randomisation_test
from xailab.runs.store import Run

if TYPE_CHECKING:
    from xailab.metrics.scoreboard import CompareSettings


def accepted_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The recorded ``params`` of an explanation that ``method``'s constructor takes again.

    A recorded dict under the name of a ``**kwargs`` parameter (e.g. SmoothGrad's
    ``method_params``, the wrapped method's settings) is expanded back into keywords.
    """
    from xailab.core.registry import METHODS

    cls = METHODS.get(method)
    names: set[str] = set()
    var_kw: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                var_kw.add(p.name)
            elif p.kind is not p.VAR_POSITIONAL and p.name not in ("self", "model"):
                names.add(p.name)
    out = {k: v for k, v in params.items() if k in names}
    for k in var_kw:
        if isinstance(params.get(k), dict):
            out.update({kk: vv for kk, vv in params[k].items() if kk not in out})
    return out


def explanation_key(run: Run, method: str) -> str:
    """Changes whenever the method's explanation is written again (its manifest records the
    parameters and the seconds taken), so parts computed from older maps are recomputed."""
    text = (run.path / "explanations" / method / "manifest.json").read_bytes()
    return hashlib.sha1(text).hexdigest()[:12]


def parts_done(run: Run) -> dict[str, str]:
    return dict(run.manifest.get("compare_parts", {}))


def mark_done(run: Run, key: str, spec: str) -> None:
    parts = parts_done(run)
    parts[key] = spec
    run.update_manifest("compare_parts", parts)


def sanity_part(
    run: Run, model: nn.Module, x: Tensor, expl: dict[str, Explanation], cols: dict[str, int],
    cfg: CompareSettings, log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """The cascading randomisation test of every method of ``expl`` not yet in the run (table
    ``sanity``); sampling methods on the cheap schedule of :class:`CompareSettings`."""
    from tqdm.auto import tqdm

    from xailab.core.registry import METHODS
    from xailab.metrics.sanity import randomisable_layers

    sspec = cfg.spec("sanity_images", "sanity_steps", "sanity_threshold", "target", "sanity_sampling_above",
                     "sanity_sampling_images", "sanity_sampling_steps")
    done = parts_done(run)
    out: dict[str, dict[str, Any]] = {}
    n_layers = len(randomisable_layers(model))
    for m, res in expl.items():
        cheap = res.evaluations / max(len(res), 1) > cfg.sanity_sampling_above
        k = min(len(x), cfg.sanity_sampling_images if cheap else cfg.sanity_images)
        steps = min(cfg.sanity_sampling_steps, cfg.sanity_steps) if cheap else cfg.sanity_steps
        mspec = f"{sspec}:{explanation_key(run, m)}"
        if run.has_part("sanity", m) and done.get(f"sanity/{m}") == mspec:
            t = run.read_table("sanity", filters=[("method", "==", m)])
            out[m] = {"sanity_spearman": float(t["spearman"].iloc[-1]), "sanity": str(t["verdict"].iloc[-1])}
            log(f"{m}: sanity check already in the run, skipped")
            continue
        kind = res.method if res.method in METHODS.available() else m  # a run may name a method NAME=METHOD
        if kind not in METHODS.available():
            log(f"{m}: not a registered method, sanity check skipped")
            out[m] = {"sanity_spearman": float("nan"), "sanity": "n/a"}
            continue
        params = accepted_params(kind, dict(res.params))
        schedule = f"{'cheap' if cheap else 'full'}: {k} images, {min(steps, n_layers)} of {n_layers} steps"
        if cheap:
            log(f"{m}: sampling method ({res.evaluations / len(res):.0f} evaluations/image), sanity on a "
                f"cheap schedule ({schedule})")
        bar = tqdm(total=min(steps, n_layers) + 1, desc=f"sanity {m}", unit="explain")
        try:
            r = randomisation_test(model, x[:k], kind, res.targets[:k, cols[m]], max_steps=steps,
                                   threshold=cfg.sanity_threshold, method_params=params,
                                   progress=_ticker(bar))
        except Exception as e:  # one method's failure must not lose the others' scores
            log(f"{m}: sanity check failed ({type(e).__name__}: {e}); marked n/a")
            out[m] = {"sanity_spearman": float("nan"), "sanity": "n/a"}
            continue
        finally:
            bar.update(1)  # the original explanation
            bar.close()
        t = r.table()
        t["method"] = m
        t["verdict"] = r.verdict
        t["schedule"] = schedule
        run.write_table("sanity", t, part=m)
        mark_done(run, f"sanity/{m}", mspec)
        out[m] = {"sanity_spearman": r.final_spearman, "sanity": r.verdict}
        log(f"{m}: sanity {r.verdict} (Spearman after randomising all layers {r.final_spearman:.3f})")
    return out


def _ticker(bar: Any) -> Callable[[str], None]:
    """A ``progress`` callback that advances ``bar`` by one step."""
    return lambda _message: bar.update(1)

"""``xailab audit strip``: screen inputs for a trigger at inference time (STRIP, :mod:`xailab.audit.strip`).

The clean images (``--clean``) are split in two, alternately: a pool that is superimposed on
every screened input, and calibration inputs whose entropies set the threshold at the chosen
false rejection rate. The screened inputs (``--images``) are flagged when their entropy falls
below it. With a trigger (``--trigger``, or the trigger of an ``audit poison`` run given as
``--run``), the screened inputs are also screened with the trigger stamped on, and the false
rejection rate (clean inputs rejected) and false acceptance rate (triggered inputs accepted)
are measured.

Written into the run: table ``strip`` (per screened input: ``entropy``, ``rejected``, and with
a trigger ``triggered_entropy``, ``triggered_rejected``), table ``strip_calibration`` (the
calibration entropies), figure ``files/strip/entropy.png``, manifest section ``strip``
(threshold, rates, settings, notes).

    run, rates = strip_to_run(StripSpec(ModelSpec("small_cnn", weights="w.safetensors"),
                                        images="fashion_mnist:test:200", clean="fashion_mnist:train:200",
                                        trigger="patch:4"), "runs/strip")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xailab.core.errors import InputError
from xailab.jobs.audit import load_audited
from xailab.jobs.common import check_out, job_lock, provenance, write_provenance
from xailab.jobs.model import ModelSpec
from xailab.runs.store import Run


@dataclass(frozen=True)
class StripSpec:
    """What ``xailab audit strip`` is asked to do (``run``: a training or audit poison run's model)."""

    model: ModelSpec | None
    images: str
    clean: str
    run: str | None = None
    data_root: str | None = None
    trigger: str | None = None
    frr: float = 0.05
    overlays: int = 20
    mode: str = "add"
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"


def strip_to_run(spec: StripSpec, out: str | Path, *, log: Callable[[str], None] = print) -> tuple[Run, dict[str, Any]]:
    """Calibrate STRIP on the clean images, screen the inputs (and their triggered copies); returns the run and the rates."""
    from xailab.audit.strip import StripFilter, check_mode, strip_threshold
    from xailab.jobs.cleanse import CleanseSpec, clean_pixels

    check_out(out, new_only=True)
    strip_threshold(np.zeros(2), spec.frr)  # the rate and the mode checked before anything loads
    check_mode(spec.mode)
    trigger = _trigger(spec)
    loaded = load_audited(spec.model, spec.run, device=spec.device, log=log)
    clean, _ = clean_pixels(CleanseSpec(spec.clean, spec.data_root), loaded)
    inputs, _ = clean_pixels(CleanseSpec(spec.images, spec.data_root), loaded)
    if len(clean) < 4:
        raise InputError(f"--clean gave {len(clean)} images; STRIP needs at least 4 (half pool, half calibration)")
    pool, calibration = clean[0::2], clean[1::2]
    notes = overlap_notes(inputs, clean)
    log(f"STRIP: {len(pool)} pool and {len(calibration)} calibration images, {len(inputs)} inputs screened"
        + (f", also with the trigger {trigger.spec}" if trigger is not None else ""))
    filt = StripFilter.calibrate(loaded.model, calibration, pool, frr=spec.frr, overlays=min(spec.overlays, len(pool)),
                                 mode=spec.mode, batch_size=spec.batch_size, seed=spec.seed)
    screen = filt.screen(loaded.model, inputs)
    table = pd.DataFrame({"image": np.arange(len(inputs)), "entropy": screen.entropy, "rejected": screen.rejected})
    rates: dict[str, Any] = {"threshold": filt.threshold, "frr_target": spec.frr,
                             "frr": screen.rejection_rate, "n_screened": len(inputs)}
    trig_entropy = None
    if trigger is not None:
        stamped = trigger.apply(inputs)[0]
        t = filt.screen(loaded.model, stamped)
        table["triggered_entropy"], table["triggered_rejected"] = t.entropy, t.rejected
        rates["far"] = 1 - t.rejection_rate
        trig_entropy = t.entropy
    config = {"command": "audit strip", "model": spec.model.name if spec.model else None, "run": spec.run,
              "images": spec.images, "clean": spec.clean, "trigger": trigger.spec if trigger is not None else None}
    with job_lock(out, log):
        run = Run.create(out, kind="audit", config=config)
        run.write_table("strip", table)
        run.write_table("strip_calibration", pd.DataFrame({"entropy": filt.calibration_entropy}))
        _figure(run, filt.calibration_entropy, screen.entropy, trig_entropy, filt.threshold)
        params = {"frr": spec.frr, "overlays": filt.overlays, "mode": spec.mode, "seed": spec.seed,
                  "n_pool": len(pool), "n_calibration": len(calibration)}
        run.update_manifest("strip", {"params": params, "rates": rates, "notes": notes,
                                      "trigger": trigger.spec if trigger is not None else None})
        write_provenance(run, provenance(loaded.provenance() if spec.model else {"run": spec.run},
                                         data={"images": spec.images, "clean": spec.clean}, params=params))
    return run, {**rates, "notes": notes}


def strip_lines(rates: dict[str, Any]) -> list[str]:
    """The threshold and what it did on the screened inputs (and their triggered copies)."""
    lines = [f"STRIP threshold {rates['threshold']:.4f} bits (the {rates['frr_target']:.0%} quantile of clean "
             f"calibration entropies); rejected {rates['frr']:.1%} of the {rates['n_screened']} screened inputs"]
    if "far" in rates:
        lines.append(f"with the trigger stamped on them: false acceptance rate {rates['far']:.1%} "
                     f"(triggered inputs let through); false rejection rate on the clean inputs {rates['frr']:.1%}")
    else:
        lines.append("no trigger given: the rejected inputs are suspects (or clean inputs, at about the chosen rate)")
    return lines + [f"note: {n}" for n in rates.get("notes", [])]


def _trigger(spec: StripSpec) -> Any:
    from xailab.audit.triggers import parse_trigger

    if spec.trigger:
        return parse_trigger(spec.trigger, seed=spec.seed)
    if spec.run and Path(spec.run, "manifest.json").is_file():
        p = Run.open(spec.run).manifest.get("poison")
        if isinstance(p, dict) and p.get("trigger"):
            return parse_trigger(str(p["trigger"]), seed=int(p.get("trigger_seed", 0)))
    return None


def overlap_notes(inputs: Any, clean: Any) -> list[str]:
    """A note when screened inputs are also among the clean images (their FRR is then not held out)."""
    import hashlib

    def digests(x: Any) -> set[str]:
        return {hashlib.sha1(v.numpy().tobytes()).hexdigest() for v in x.float().cpu()}

    both = len(digests(inputs) & digests(clean))
    if not both:
        return []
    return [f"{both} of the screened images are also clean pool/calibration images: choose another split or range "
            "for --images so that the false rejection rate is measured on held-out inputs"]


def _figure(run: Run, calibration: np.ndarray, screened: np.ndarray, triggered: np.ndarray | None,
            threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xailab.plotting import save_png

    fig, ax = plt.subplots(figsize=(6, 3.2))
    hi = max(float(np.max(calibration)), float(np.max(screened)), float(np.max(triggered)) if triggered is not None else 0)
    bins = [float(v) for v in np.linspace(0, max(hi, 1e-3), 30)]
    ax.hist(calibration, bins=bins, alpha=0.5, label="clean, calibration")
    ax.hist(screened, bins=bins, alpha=0.5, label="screened inputs")
    if triggered is not None:
        ax.hist(triggered, bins=bins, alpha=0.5, label="screened inputs + trigger")
    ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("mean entropy under superimposition (bits); below the threshold: rejected")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, run.file("strip/entropy.png"))

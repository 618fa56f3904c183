"""End to end: what the command line costs against the library work it runs (issue 21).

For N CIFAR-10 test images and ResNet-20 (saliency, Grad-CAM, IG with 16 steps, targets true,
top1, top2, least), CPU seconds (user + system, one thread) of

* ``xailab explain`` (default figures) against its **model work**: the three ``explain`` calls
  in this process, on the same images;
* ``xailab compare RUN`` (default settings: faithfulness, ROAD, infidelity, the metric checks,
  sanity, figures) against its **forwards' floor**: the forward passes its scores need, in
  batches of 64 (faithfulness's shared pass, ROAD's levels, infidelity's squares, and the metric
  checks' noisy, shuffled and randomised-model maps scored by deletion, insertion and ROAD; their
  clean scores and infidelity's drops are those already made), plus the re-explanations (the
  sanity check's, and the reference's on a randomised model for the checks), timed as library calls;
* ``xailab report RUN`` against ``build_site`` in this process;
* ``xailab --help``, and the **start-up floor** every command that runs a model pays: a process
  that only imports torch (``explain`` is also shown net of it: the part of its overhead that is ours).

    python -m bench.bench_cli --sizes 8,64                      # the code on PYTHONPATH
    python -m bench.bench_cli --sizes 8,64 --src /tmp/before/src # another checkout's CLI
    python -m bench.bench_cli --sizes 512 --commands explain,report   # without compare (its floor too)

The dataset's decoded cache is filled before the first timing (a first run ever decodes the archive).

Needs ../shared/data (CIFAR-10 JPEGs and the ResNet-20 weights).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WEIGHTS = DATA / "cifar10-resnet" / "resnet20.safetensors"
ARCHIVE = DATA / "cifar10-jpg.tar.gz"
METHODS = "saliency,gradcam,integrated_gradients"
TARGETS = ["true", "top1", "top2", "least"]


def cli_cpu(args: list[str], src: str | None) -> float:
    """CPU seconds of ``xailab ARGS`` in a fresh process (one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if src:
        env["PYTHONPATH"] = src
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "xailab.cli", *args], env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"xailab {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup_cpu(src: str | None) -> float:
    """CPU seconds of a fresh process that imports torch and nothing else (one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **({"PYTHONPATH": src} if src else {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def library_floor(n: int, with_compare: bool = True) -> dict[str, float]:
    """Model work of explain and (``with_compare``) the forwards' floor of compare, in this process."""
    import torch

    import xailab
    from xailab.data import load_images
    from xailab.metrics.sanity import randomisable_layers
    from xailab.metrics.scoreboard import CompareSettings
    from xailab.models import get_preprocessing, load_model

    torch.set_num_threads(1)
    model = load_model("resnet20", str(WEIGHTS)).eval()
    images, found, _, _ = load_images(f"cifar10:test:{n}", get_preprocessing(model), root=str(ARCHIVE))
    assert found is not None
    labels = found
    params = {"integrated_gradients": {"n_steps": 16}}
    work = {}
    for m in METHODS.split(","):
        ex = xailab.create(m, model, batch_size=64, **params.get(m, {}))
        ex.explain(images[:2], target=TARGETS, labels=labels[:2])  # warm
        work[m] = cpu(partial(ex.explain, images, target=TARGETS, labels=labels))
    if not with_compare:
        return {"explain_model_work": sum(work.values())}
    rows = compare_rows(images)
    batch = images[:64].repeat(-(-64 // min(n, 64)), 1, 1, 1)[:64]

    def forwards() -> None:
        with torch.no_grad():
            for _ in range(-(-rows // 64)):
                model(batch)

    floor_faith = cpu(forwards)
    cfg = CompareSettings()
    k = min(n, cfg.sanity_images)
    explains = min(cfg.sanity_steps, len(randomisable_layers(model))) + 1
    sanity = 0.0
    for m in METHODS.split(","):  # one target, k images, `explains` times
        ex = xailab.create(m, model, batch_size=64, **params.get(m, {}))
        sanity += explains * cpu(partial(ex.explain, images[:k], target="true", labels=labels[:k]))
    kc = min(n, cfg.check_images)  # the checks' reference (gradcam) explained once on a randomised model
    sanity += cpu(partial(xailab.create("gradcam", model).explain, images[:kc], target="true", labels=labels[:kc]))
    return {"explain_model_work": sum(work.values()), "compare_floor": floor_faith + sanity,
            "compare_floor_forwards": floor_faith, "compare_floor_explains": sanity, "compare_rows": rows}


def compare_rows(images: Any, methods: int = len(METHODS.split(",")), cfg: Any = None) -> int:
    """The perturbed images compare scores for ``images`` and ``methods`` methods of the same
    targets, with settings ``cfg`` (default: compare's)."""
    import math

    from xailab.metrics.compare_extra import infidelity_patch
    from xailab.metrics.scoreboard import CompareSettings

    cfg = cfg or CompareSettings()
    n, side = len(images), max(images.shape[-2:])
    faith = n * (3 + cfg.faithfulness_runs) + methods * n * 2 * (cfg.steps - 1)  # the shared pass
    road = methods * n * cfg.road_steps
    squares = math.ceil(side / infidelity_patch(cfg, images)) ** 2
    infid = n * squares + 1  # one set of drops (the same targets for every method); the filled image once
    kc = min(n, cfg.check_images)
    checks = 3 * kc * (2 * (cfg.steps + 1) + cfg.road_steps)  # noise, shuffle, randomised model
    return faith + road + infid + checks


def library_report(run: Path, out: Path) -> float:
    from xailab.report.site import build_site

    return cpu(lambda: build_site([run], out))


def one_size(n: int, src: str | None, work_dir: Path, commands: set[str]) -> dict[str, float]:
    run = work_dir / f"explain{n}"
    explain = ["explain", "--model", "resnet20", "--weights", str(WEIGHTS), "--images", f"cifar10:test:{n}",
               "--data-root", str(ARCHIVE), "--methods", METHODS, "--set", "integrated_gradients.n_steps=16",
               "--targets", ",".join(TARGETS), "--out", str(run), "--device", "cpu"]
    out = {"images": n, "cli_explain": cli_cpu(explain, src)}
    print(f"  N={n}: explain CLI {out['cli_explain']:.2f} CPU s", flush=True)  # a long size shows its progress
    if "compare" in commands:
        out["cli_compare"] = cli_cpu(["compare", str(run), "--device", "cpu"], src)
        print(f"  N={n}: compare CLI {out['cli_compare']:.2f} CPU s", flush=True)
    if "report" in commands:
        out["cli_report"] = cli_cpu(["report", str(run), "--out", str(work_dir / f"site{n}")], src)
    out.update(library_floor(n, with_compare="compare" in commands))
    out["explain_ratio"] = out["cli_explain"] / out["explain_model_work"]
    if "compare" in commands:
        out["compare_ratio"] = out["cli_compare"] / out["compare_floor"]
    if "report" in commands:
        out["lib_report"] = library_report(run, work_dir / f"site{n}-lib")
        out["report_ratio"] = out["cli_report"] / max(out["lib_report"], 1e-9)
    return out


def line(r: dict[str, float], startup: float) -> str:
    """One size's row as printed."""
    net = (r["cli_explain"] - startup) / r["explain_model_work"]
    text = (f"N={int(r['images']):4d}  explain CLI {r['cli_explain']:7.2f} s / model work {r['explain_model_work']:6.2f} s = "
            f"{r['explain_ratio']:5.2f}x ({net:4.2f}x net of the start-up)")
    if "compare_ratio" in r:
        text += (f" | compare CLI {r['cli_compare']:7.2f} s / floor {r['compare_floor']:6.2f} s"
                 f" = {r['compare_ratio']:5.2f}x")
    if "report_ratio" in r:
        text += f" | report CLI {r['cli_report']:6.2f} s / library {r['lib_report']:5.2f} s = {r['report_ratio']:5.2f}x"
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,64", help="comma-separated numbers of images")
    ap.add_argument("--src", help="PYTHONPATH of the CLI timed (default: this process's)")
    ap.add_argument("--commands", default="explain,compare,report",
                    help="which commands to time besides explain (always run: the others read its run)")
    ap.add_argument("--json", help="write the rows here (after each size)")
    a = ap.parse_args(argv)
    if not WEIGHTS.is_file() or not ARCHIVE.is_file():
        sys.exit(f"needs {WEIGHTS} and {ARCHIVE}")
    commands = {c.strip() for c in a.commands.split(",") if c.strip()} | {"explain"}
    from xailab.data import load_images

    load_images("cifar10:test:1", None, root=str(ARCHIVE))  # the decoded cache, as a second run finds it
    rows = []
    help_cpu, startup = cli_cpu(["--help"], a.src), startup_cpu(a.src)
    print(f"xailab --help: {help_cpu:.2f} CPU s; start-up floor (a process importing torch): {startup:.2f} CPU s")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in a.sizes.split(",")):
            r = one_size(n, a.src, Path(tmp), commands)
            rows.append(r)
            print(line(r, startup), flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps({"help": help_cpu, "startup": startup, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

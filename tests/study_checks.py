"""What a study's end-to-end run must have written, checked on the examples runner's own runs.

:mod:`tests.test_examples_run` runs every study example end to end (shrunk); these checks read
that run's folder (``out``) and what the study printed, so no test trains a study a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xailab.runs import Run


def fashion_mnist(out: Path, printed: str) -> None:
    """SHAP, DeepLIFT and IG explained; the patch attack; the backdoor trained and both audits; the report."""
    assert f"report: {out / 'report' / 'index.html'}" in printed
    explain = Run.open(out / "explain")
    assert set(explain.read_table("scoreboard")["method"]) == {
        "gradient_shap", "deeplift_shap", "kernel_shap", "deeplift", "integrated_gradients"}
    assert len(Run.open(out / "patch").read_table("attack")) == 2  # the runner's 2 test images
    poison = Run.open(out / "backdoor-train").manifest
    assert {"clean_accuracy", "attack_success_rate"} <= set(poison["backdoor"])
    for audit in ("backdoor-audit", "clean-audit"):
        detection = Run.open(out / audit).read_table("detection")
        assert len(detection) == 10 and detection["verdict"].isin(["backdoor", "flagged", "check", "clean"]).all()
    index = (out / "report" / "index.html").read_text()
    assert "Fashion-MNIST" in index


def binary_kfold(out: Path, printed: str) -> None:
    """Two folds trained; IG under every baseline checked against Captum; LIME; histograms; the report."""
    assert f"report: {out / 'report' / 'index.html'}" in printed
    cv = Run.open(out / "cv")
    assert (out / "cv" / "folds" / "fold-2" / "checkpoints" / "best.safetensors").is_file()
    assert cv.manifest["kind"] == "kfold"
    assert list(cv.read_table("kfold")["fold"]) == [1, 2]  # the runner's --folds 2
    run = Run.open(out / "explain")  # the baselines side by side in one run
    check = run.read_table("crosscheck")
    baselines = {"black", "uniform", "gaussian", "adversarial"}  # the study's defaults
    assert len(check) == run.manifest["explain"]["n_images"] * len(baselines)  # one target (top1)
    assert set(check["baseline"].str.split(":").str[0]) == baselines
    assert check["max_abs_diff"].max() <= 1e-4 * max(1.0, check["max_abs"].max())
    pairs = run.read_table("agreement")
    assert set(pairs["method_a"]) | set(pairs["method_b"]) == {f"ig_{b}" for b in baselines} | {"lime"}
    assert (out / "explain" / "files" / "metrics" / "histograms.png").is_file()
    assert (out / "report" / "index.html").is_file()


#: study name -> its check (out folder, what the study printed)
CHECKS: dict[str, Callable[[Path, str], None]] = {"fashion_mnist": fashion_mnist, "binary_kfold": binary_kfold}

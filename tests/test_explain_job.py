from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.jobs.explain_images import explain_images
from xailab.runs import Run


def test_explain_to_run_writes_everything_and_resumes(tiny_cnn, images, labels, tmp_path: Path) -> None:
    out = tmp_path / "run"
    logs: list[str] = []
    run = explain_images(
        tiny_cnn, images[:3], out=out, methods=["saliency", "input_x_gradient"],
        targets=["true", "top1", "least"], labels=labels[:3], names=["a", "b", "c"],
        class_names=["<script>", "b", "c", "d", "e"], log=logs.append,
    )
    table = run.read_table("explanations")
    assert len(table) == 3 * 3 * 2
    assert set(table["method"]) == {"saliency", "input_x_gradient"}
    assert (table[table.target == "true"]["class"].to_numpy() == labels[:3].repeat(2).numpy()).all()
    res = Explanation.load(out / "explanations" / "saliency")
    assert res.maps.shape == (3, 3, 3, 16, 16)
    assert run.read_array("images").shape == (3, 3, 16, 16)
    pngs = sorted(p.name for p in (out / "files" / "overlays").iterdir())
    assert pngs == [f"{i:05d}_grid.png" for i in range(3)]  # the default: one grid per image

    logs.clear()
    explain_images(
        tiny_cnn, images[:3], out=out, methods=["saliency"], targets=["true", "top1", "least"],
        labels=labels[:3], log=logs.append, png=False,
    )
    assert logs == ["saliency: already in the run, skipped"]


def test_unknown_parameter_lists_the_known_ones(tiny_cnn, images, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"has no parameter n_stepz.*absolute"):
        explain_images(tiny_cnn, images[:1], out=tmp_path / "r", methods=["saliency"], targets="top1",
                       method_params={"saliency": {"n_stepz": 3}})
    assert not (tmp_path / "r").exists()


def test_run_store_reads_and_refuses(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", kind="t")
    run.write_array("a", torch.arange(6).reshape(2, 3), chunk=1)
    run.write_array("a", torch.arange(6, 12).reshape(2, 3), chunk=0)
    assert run.read_array("a")[0, 0] == 6  # chunks in order
    (run.array_dir("a") / ".00000002.npy.123.tmp").write_bytes(b"half")  # an interrupted write
    assert run.read_array("a").shape == (4, 3)
    from xailab.runs import RunError

    with pytest.raises(RunError, match="no table 'x'"):
        run.read_table("x")
    with pytest.raises(RunError, match="not an xailab run"):
        Run.open(tmp_path)


def test_normalisation_reaches_pixel_space_methods(tiny_cnn, images, tmp_path: Path) -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x = (images[:2] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    explain_images(tiny_cnn, x, out=tmp_path / "r", methods=["integrated_gradients", "saliency"],
                   targets="top1", mean=mean, std=std, quick=True, png=False)
    ig = Explanation.load(tmp_path / "r" / "explanations" / "integrated_gradients")
    assert tuple(ig.params["mean"]) == mean and tuple(ig.params["std"]) == std
    # IG's attributions sum to f(x) - f(black) where black is pixel 0, i.e. -mean/std here
    black = (torch.zeros_like(x) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        t = ig.targets[:, 0]
        gap = tiny_cnn(x).gather(1, t[:, None])[:, 0] - tiny_cnn(black).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(ig.maps.sum(dim=(1, 2, 3, 4)), gap, rtol=0.05, atol=1e-3)


def test_cli_background_images_reach_gradient_shap(tmp_path: Path) -> None:
    """``--set gradient_shap.background=FOLDER`` explains against those images (SHAP's
    GradientExplainer setting), not the default noise; a different background is a new spec."""
    import numpy as np
    from PIL import Image

    import xailab
    from xailab.cli import main
    from xailab.data import load_images
    from xailab.models import create_model, get_preprocessing, load_model, save_weights

    torch.manual_seed(0)
    model = create_model("small_cnn")
    weights = save_weights(model, tmp_path / "w.safetensors")
    rng = np.random.default_rng(0)
    for folder, n in (("x", 2), ("bg", 3)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    base = ["explain", "--model", "small_cnn", "--weights", str(weights), "--images", str(tmp_path / "x"),
            "--methods", "gradient_shap", "--set", "gradient_shap.n_samples=4", "--no-png"]
    assert main([*base, "--set", f"gradient_shap.background={tmp_path / 'bg'}", "--out", str(tmp_path / "r")]) == 0
    got = Explanation.load(tmp_path / "r" / "explanations" / "gradient_shap")

    model = load_model("small_cnn", weights)
    prep = get_preprocessing(model)
    x = load_images(str(tmp_path / "x"), prep)[0]
    bg = load_images(str(tmp_path / "bg"), prep)[0]
    space = {"mean": prep.mean, "std": prep.std} if prep is not None else {}
    want = xailab.create("gradient_shap", model, background=bg, n_samples=4, batch_size=64, seed=0, **space).explain(x)
    torch.testing.assert_close(got.maps, want.maps)
    noise = xailab.create("gradient_shap", model, n_samples=4, batch_size=64, seed=0, **space).explain(x)
    assert not torch.allclose(got.maps, noise.maps)


def test_named_settings_of_one_method_sit_side_by_side(tiny_cnn, images, labels, tmp_path: Path) -> None:
    """``NAME=METHOD``: two IG baselines in one run, each equal to its own explainer; parameters
    under the method's name apply to both; compare, the sanity check and the report follow."""
    import xailab
    from xailab.jobs.compare import compare_run
    from xailab.metrics.scoreboard import CompareSettings
    from xailab.report.site import build_site

    x = images[:3]
    run = explain_images(
        tiny_cnn, x, out=tmp_path / "r", methods=["ig_black=integrated_gradients", "ig_noise=integrated_gradients",
                                                  "saliency"],
        method_params={"integrated_gradients": {"n_steps": 8}, "ig_black": {"baseline": "black"},
                       "ig_noise": {"baseline": "uniform"}},
        targets="top1", labels=labels[:3], png=False, log=lambda _: None)
    for name, baseline in (("ig_black", "black"), ("ig_noise", "uniform")):
        got = Explanation.load(run.path / "explanations" / name)
        assert got.method == "integrated_gradients" and got.params["n_steps"] == 8
        want = xailab.create("integrated_gradients", tiny_cnn, n_steps=8, baseline=baseline).explain(x, target="top1")
        torch.testing.assert_close(got.maps, want.maps)
    assert run.manifest["explain"]["kinds"] == {"ig_black": "integrated_gradients",
                                                "ig_noise": "integrated_gradients", "saliency": "saliency"}
    table = run.read_table("explanations")
    assert set(table["method"]) == {"ig_black", "ig_noise", "saliency"}
    board = compare_run(run.path, tiny_cnn, settings=CompareSettings(sanity_images=2, sanity_steps=2, steps=4),
                        log=lambda _: None)
    assert {"ig_black", "ig_noise"} <= set(board["method"])
    sanity = run.read_table("sanity")
    assert {"ig_black", "ig_noise"} <= set(sanity["method"])  # run as integrated_gradients, stored by name
    site = build_site([run.path], tmp_path / "site")
    cards = (site / "methods.html").read_text()
    assert "ig_black = integrated_gradients" in cards and "No card in this run" not in cards
    assert "Sundararajan" in cards and set(run.manifest["cards"]) == {"integrated_gradients", "saliency"}
    compare = (site / "compare.html").read_text()  # which way is better: the metrics' own data, via the run
    assert "Lower is better: seconds (cost), avg_time (cost)" in compare and "insertion_auc (faithfulness)" in compare

    with pytest.raises(InputError, match="given twice"):
        explain_images(tiny_cnn, x, out=tmp_path / "bad", methods=["a=saliency", "a=gradcam"], targets="top1",
                       png=False, log=lambda _: None)
    with pytest.raises(InputError, match="registered method"):
        explain_images(tiny_cnn, x, out=tmp_path / "bad", methods=["gradcam=saliency"], targets="top1",
                       png=False, log=lambda _: None)

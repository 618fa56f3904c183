"""Metric checks (MetaQuantus-style): resilience to noise in the maps, reactivity to shuffling."""

from __future__ import annotations

import torch

import xailab
from xailab.metrics import deletion
from xailab.metrics.meta import metric_checks, noisy_maps, shuffled_maps

from .test_metrics_support import PatchNet, patch_images


def test_deletion_is_resilient_and_reactive_on_the_patch_model_and_a_blind_metric_is_not() -> None:
    model, x = PatchNet().eval(), patch_images(16)
    sal = xailab.create("saliency", model).explain(x, target=0).pixel_maps()[:, 0]
    sal = sal + 1e-3 * torch.rand(sal.shape, generator=torch.Generator().manual_seed(0))  # break ties

    def dele(a: torch.Tensor) -> torch.Tensor:
        return deletion(model, x, a, 0, steps=16).auc

    def blind(a: torch.Tensor) -> torch.Tensor:  # ignores the map's layout: only its total
        return a.flatten(1).double().sum(1).round(decimals=6)

    table = metric_checks({"deletion": dele, "total": blind}, sal,
                          directions={"deletion": "lower", "total": "higher"}).set_index("metric")
    assert table.loc["deletion", "shuffle_p"] < 0.05 < table.loc["deletion", "shuffle_effect"] + 0.05
    assert table.loc["deletion", "verdict"] == "resilient, reactive"
    assert table.loc["total", "shuffle_effect"] == 0.0 and table.loc["total", "verdict"].endswith("not reactive")


def test_perturbations_keep_what_they_should() -> None:
    a = torch.rand(3, 5, 5)
    s = shuffled_maps(a, seed=1)
    assert torch.equal(s.flatten(1).sort(1).values, a.flatten(1).sort(1).values) and not torch.equal(s, a)
    assert torch.equal(noisy_maps(a, 0.0), a)


def test_plotting_forces_no_backend_and_show_draws_every_target(tmp_path) -> None:
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import xailab.plotting; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"  # importing xailab.plotting leaves the user's backend alone
    from xailab.plotting import save_png, show

    model, x = PatchNet().eval(), patch_images(2)
    res = xailab.create("saliency", model).explain(x, target=[0, 1])
    fig = show(res, x, index=1)
    assert len(fig.axes) == 4 * len(res.target_names)  # per target: image, heatmap, overlay, colour bar
    assert save_png(fig, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_figure_modules_leave_the_backend_alone_and_draw_without_pyplot() -> None:
    import subprocess
    import sys

    modules = ["xailab.metrics.metric_figures", "xailab.report.report_figures", "xailab.audit.audit_figures",
               "xailab.concepts.dissection_report", "xailab.concepts.concept_figures"]
    code = ("import sys, matplotlib; matplotlib.use('svg'); " + "; ".join(f"import {m}" for m in modules)
            + "; from xailab.metrics import metric_figures as f; import numpy as np; "
            "png = f.curves_png({'a': (np.linspace(0, 1, 5), np.linspace(1, 0, 5))}, title='t', ylabel='s'); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules, png[:4] == b'\\x89PNG')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "False", "True"]  # the user's backend kept, pyplot never imported
